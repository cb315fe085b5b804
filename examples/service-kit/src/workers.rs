//! A service's workers beside its HTTP server, wired the same way for every service: the
//! topics it creates before anything publishes or subscribes, its outbox relay and its
//! consumer, each started again [`WORKER_RESTART_DELAY`] after a failure, and the
//! readiness checks that report them. A service says only which topics, which relay and
//! which consumer ([`WorkerSpec`]).
//!
//! - **Topics first.** With [`TopicCreation::Ensure`] the relay and the consumer start
//!   only once the topics were created: a consumer subscribed to a topic that does not
//!   exist yet sees it only at its next metadata refresh (librdkafka's every 5 minutes),
//!   and a topic the broker creates on a first publish gets the broker's default partition
//!   count instead of the design's. While no broker answers the creation is tried again
//!   every [`WORKER_RESTART_DELAY`]; a broker that answers but refuses (no right to create
//!   topics, say) is logged, and the workers start on whatever topics exist.
//! - **Restarted after a failure**, logged at ERROR with the cause, until the service
//!   stops.
//! - **Readiness**: `broker` (the consumer reaches a broker), the consumer's own check
//!   (it runs and its group gave it an assignment) and `outbox relay` (its task runs; pegasus-events exposes no relay health,
//!   and a relay that cannot reach a broker at its start fails within the connect timeout
//!   and lowers the flag, while the `broker` check covers the broker meanwhile).
//! - **Drained within a bound**: [`Workers::drain`] stops them and waits for each at most
//!   [`DEFAULT_DRAIN_BOUND`] (the relay for its batch in flight to be acknowledged and
//!   marked, the consumer to commit what it handled).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pegasus_events::consumer::{ConsumerHealth, ConsumerStatus};
use pegasus_events::error::Report;
use pegasus_events::outbox::OutboxRelay;
use pegasus_events::{EventConsumer, KafkaConfig, TopicAdmin, TopicSpec};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::health::ReadyFlag;
use crate::shutdown::{drain_task, CancellationToken, DEFAULT_DRAIN_BOUND};
use crate::Readiness;

/// How long a relay or consumer that failed, or a topic creation that reached no broker,
/// waits before it is tried again.
pub const WORKER_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Whether a service creates its topics before its relay and consumer start.
#[derive(Clone, Debug)]
pub enum TopicCreation {
    /// Creates those of these topics that are missing, leaving existing ones alone.
    Ensure(Vec<TopicSpec>),
    /// The host created every topic the service uses before starting it (the demo, on its
    /// embedded broker, which answers no CreateTopics request: asking would hold the relay
    /// and the consumer back until the admin request timed out).
    Skip,
}

/// What a service runs beside its HTTP server.
pub struct WorkerSpec<R, C, S> {
    /// Its Kafka settings: the topic creation's, and what the relay and the consumer are
    /// made from.
    pub kafka: KafkaConfig,
    /// Which topics it creates first, if any.
    pub topics: TopicCreation,
    /// Makes its outbox relay from `kafka`, at the start and again after a failure.
    pub relay: R,
    /// Makes its consumer from `kafka`, at the start and again after a failure.
    pub consumer: C,
    /// The consumer's name in its readiness check and its log lines
    /// (`user cache consumer`).
    pub consumer_name: &'static str,
    /// Called with each consumer made, before it runs: the service's own log line.
    pub on_consumer_start: S,
}

/// A service's running workers: topic creation, outbox relay and consumer.
#[derive(Debug)]
pub struct Workers {
    stop: CancellationToken,
    topics: JoinHandle<()>,
    relay: JoinHandle<()>,
    consumer: JoinHandle<()>,
    consumer_name: &'static str,
}

impl Workers {
    /// Registers the readiness checks `broker`, the consumer's and `outbox relay` on
    /// `readiness` (in that order), and starts the workers: the topic creation at once,
    /// the relay and the consumer once the topics exist. They stop on `shutdown`, or on
    /// [`Workers::drain`] without cancelling `shutdown` (other services of the process may
    /// share it).
    pub fn start<E, R, C, S>(
        spec: WorkerSpec<R, C, S>,
        readiness: &Readiness,
        shutdown: &CancellationToken,
    ) -> Workers
    where
        E: std::error::Error + From<pegasus_events::Error> + Send + 'static,
        R: Fn(&KafkaConfig) -> Result<OutboxRelay, E> + Send + 'static,
        C: Fn(&KafkaConfig) -> Result<EventConsumer, E> + Send + 'static,
        S: Fn(&EventConsumer) + Send + 'static,
    {
        let WorkerSpec {
            kafka,
            topics,
            relay,
            consumer,
            consumer_name,
            on_consumer_start,
        } = spec;
        let health = consumer_checks(readiness, consumer_name);
        let relay_running = readiness.flag("outbox relay");
        let stop = shutdown.child_token();
        let (topics_ready, topics_created) = watch::channel(false);
        let topics = match topics {
            TopicCreation::Ensure(specs) => tokio::spawn(ensure_topics(
                kafka.clone(),
                specs,
                stop.clone(),
                topics_ready,
            )),
            TopicCreation::Skip => {
                let _ = topics_ready.send(true);
                tokio::spawn(async {})
            }
        };
        let relay = tokio::spawn(run_relay(
            relay,
            kafka.clone(),
            relay_running,
            stop.clone(),
            topics_created.clone(),
        ));
        let consumer = tokio::spawn(run_consumer(
            consumer,
            kafka,
            consumer_name,
            on_consumer_start,
            health,
            stop.clone(),
            topics_created,
        ));
        Workers {
            stop,
            topics,
            relay,
            consumer,
            consumer_name,
        }
    }

    /// Stops the workers and waits for each at most [`DEFAULT_DRAIN_BOUND`], side by side;
    /// one still running then is abandoned (aborted), with a warning.
    pub async fn drain(self) {
        self.stop.cancel();
        let _ = tokio::join!(
            drain_task("outbox relay", DEFAULT_DRAIN_BOUND, self.relay),
            drain_task(self.consumer_name, DEFAULT_DRAIN_BOUND, self.consumer),
            drain_task("topic creation", DEFAULT_DRAIN_BOUND, self.topics),
        );
    }
}

/// The consumer's health as its latest start left it; `None` before the first.
type HealthSlot = Arc<Mutex<Option<ConsumerHealth>>>;

/// Registers `broker` and `consumer_name` on `readiness`, both read from the consumer's
/// health.
fn consumer_checks(readiness: &Readiness, consumer_name: &str) -> HealthSlot {
    let health = HealthSlot::default();
    let watched = Arc::clone(&health);
    readiness.add_check("broker", move || {
        let status = current_status(&watched);
        async move {
            match status {
                Some(ConsumerStatus::BrokersUnreachable { down_for, .. }) => Err(format!(
                    "no broker has answered for {} s",
                    down_for.as_secs()
                )),
                Some(ConsumerStatus::Running) => Ok(()),
                _ => Err("not reached yet".to_owned()),
            }
        }
    });
    let watched = Arc::clone(&health);
    // Ready once the consumer runs and its group gave it an assignment (an empty one
    // too: an instance beyond the topic's partitions stands by, healthy).
    readiness.add_check(consumer_name, move || {
        let state = watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|health| (health.status(), health.has_joined_group()));
        async move {
            match state {
                Some((ConsumerStatus::Running, true)) => Ok(()),
                Some((ConsumerStatus::Running, false)) => {
                    Err("has not joined its consumer group yet".to_owned())
                }
                _ => Err("not running".to_owned()),
            }
        }
    });
    health
}

fn current_status(health: &Mutex<Option<ConsumerHealth>>) -> Option<ConsumerStatus> {
    health
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(ConsumerHealth::status)
}

/// Creates the topics of `specs` that are missing (see [`TopicCreation::Ensure`]), then
/// lets the relay and the consumer start (`topics_ready`).
async fn ensure_topics(
    kafka: KafkaConfig,
    specs: Vec<TopicSpec>,
    shutdown: CancellationToken,
    topics_ready: watch::Sender<bool>,
) {
    loop {
        let admin = tokio::select! {
            admin = TopicAdmin::new(&kafka) => admin,
            () = shutdown.cancelled() => return,
        };
        match admin {
            Ok(admin) => {
                tokio::select! {
                    created = admin.ensure_topics(&specs) => if let Err(error) = created {
                        tracing::warn!(error = %Report::new(&error), "could not create the topics; starting on the topics that exist");
                    },
                    () = shutdown.cancelled() => return,
                }
                let _ = topics_ready.send(true);
                return;
            }
            Err(error) => {
                tracing::warn!(error = %Report::new(&error), "cannot create the topics yet; trying again");
                restart_delay(&shutdown).await;
                if shutdown.is_cancelled() {
                    return;
                }
            }
        }
    }
}

/// Waits until the topics were created (see [`ensure_topics`]); `false` if the service is
/// stopping first.
async fn topics_created(
    topics_ready: &mut watch::Receiver<bool>,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        created = topics_ready.wait_for(|created| *created) => created.is_ok(),
        () = shutdown.cancelled() => false,
    }
}

/// Runs the relay `make` makes from `kafka` until shutdown, making and starting it again
/// after a failure; `running` is raised while its task runs.
async fn run_relay<E, R>(
    make: R,
    kafka: KafkaConfig,
    running: ReadyFlag,
    shutdown: CancellationToken,
    mut topics_ready: watch::Receiver<bool>,
) where
    E: std::error::Error + From<pegasus_events::Error> + 'static,
    R: Fn(&KafkaConfig) -> Result<OutboxRelay, E>,
{
    if !topics_created(&mut topics_ready, &shutdown).await {
        return;
    }
    while !shutdown.is_cancelled() {
        let result = match make(&kafka) {
            Ok(relay) => {
                running.set(true);
                let result = relay.run_until(shutdown.clone().cancelled_owned()).await;
                running.set(false);
                result.map_err(E::from)
            }
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::error!(error = %Report::new(&error), "outbox relay stopped; starting it again");
            restart_delay(&shutdown).await;
        }
    }
}

/// Runs the consumer `make` makes from `kafka` until shutdown, making and starting it
/// again after a failure; `health` follows the latest.
async fn run_consumer<E, C, S>(
    make: C,
    kafka: KafkaConfig,
    name: &'static str,
    on_start: S,
    health: HealthSlot,
    shutdown: CancellationToken,
    mut topics_ready: watch::Receiver<bool>,
) where
    E: std::error::Error + From<pegasus_events::Error> + 'static,
    C: Fn(&KafkaConfig) -> Result<EventConsumer, E>,
    S: Fn(&EventConsumer),
{
    if !topics_created(&mut topics_ready, &shutdown).await {
        return;
    }
    while !shutdown.is_cancelled() {
        let result = match make(&kafka) {
            Ok(consumer) => {
                *health.lock().unwrap_or_else(|e| e.into_inner()) = Some(consumer.health());
                on_start(&consumer);
                consumer
                    .run_until(shutdown.clone().cancelled_owned())
                    .await
                    .map_err(E::from)
            }
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::error!(error = %Report::new(&error), "{name} stopped; starting it again");
            restart_delay(&shutdown).await;
        }
    }
}

async fn restart_delay(shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(WORKER_RESTART_DELAY) => {}
        () = shutdown.cancelled() => {}
    }
}
