//! One worker per assigned partition: records of a partition are handled one after the
//! other, in offset order, while different partitions run concurrently.
//!
//! A record's offset is stored (for the background commit) only once the record is done:
//! handled, recognised as a duplicate, or acknowledged by the dead-letter topic. Until
//! then the worker retries, so the partition never moves past an unfinished record.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tracing::{Instrument, Span};

use super::dispatch::{panic_message, Env, Held, Outcome, Record, RecordHandler};
use super::handler::FailureKind;
use super::native_queue::BatchQueue;
use super::retry::RetryPolicy;
use super::{ConsumerSettings, RuntimeContext};
use crate::dead_letter::{self, DeadLetterReason, DeadLetterWriter, Failure};
use crate::idempotency::DynIdempotencyStore;
use crate::metrics::PartitionMetrics;
use crate::telemetry::{self, spans};

/// Where a partition's worker stands. The worker moves it between `Idle`, `Busy` and
/// `Storing` with one atomic operation each, since that happens for every record; the
/// poll thread's `close` and the end of a record it waits for go through
/// [`PartitionState::waiting`]'s lock, so the poll thread and the worker always agree on
/// whether a record is being handled, and whether its offset may still be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for the next record.
    Idle,
    /// Handling a record.
    Busy,
    /// Storing the offset of a record just handled; `close` waits the few microseconds
    /// this takes, so the commit that follows it includes the offset.
    Storing,
    /// Asked to stop while handling a record; becomes `Closed` when that record is done.
    Closing,
    /// The record being handled outlived the stop deadline: when it finishes, its offset
    /// must not be stored, because its partition was already committed and given up.
    Abandoned,
    /// Stopped: no further record of this partition is handled here.
    Closed,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::Idle,
        Phase::Busy,
        Phase::Storing,
        Phase::Closing,
        Phase::Abandoned,
        Phase::Closed,
    ];

    fn from_u8(value: u8) -> Phase {
        // Only `Phase as u8` values are ever stored.
        Phase::ALL
            .get(usize::from(value))
            .copied()
            .unwrap_or(Phase::Closed)
    }
}

/// What the poll thread and a partition's worker share.
pub(crate) struct PartitionState {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    /// This partition's metric handles, registered when it was assigned.
    pub(crate) metrics: PartitionMetrics,
    phase: AtomicU8,
    /// Taken for the transitions `close` waits on (out of `Closing`) and makes (into
    /// `Abandoned`), so neither is missed; never on a record's ordinary path.
    waiting: Mutex<()>,
    changed: Condvar,
    /// Wakes a worker waiting for records or between attempts when it is asked to stop.
    wake: Notify,
}

impl PartitionState {
    pub(crate) fn new(topic: Arc<str>, partition: i32, metrics: PartitionMetrics) -> Self {
        PartitionState {
            topic,
            partition,
            metrics,
            phase: AtomicU8::new(Phase::Idle as u8),
            waiting: Mutex::new(()),
            changed: Condvar::new(),
            wake: Notify::new(),
        }
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves from `from` to `to` if the phase is still `from`.
    fn advance(&self, from: Phase, to: Phase) -> bool {
        self.phase
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn set(&self, to: Phase) {
        self.phase.store(to as u8, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // Nothing runs under this lock that could panic and leave it inconsistent.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the worker: no new record is started, and a record being handled may finish
    /// (and store its offset) until `deadline`, or for as long as it takes without one
    /// (a timeout of `Duration::MAX`). Returns whether it finished in time.
    pub(crate) fn close(&self, deadline: Option<Instant>) -> bool {
        loop {
            match self.phase() {
                Phase::Idle if self.advance(Phase::Idle, Phase::Closed) => {
                    self.wake.notify_one();
                    return true;
                }
                Phase::Busy if self.advance(Phase::Busy, Phase::Closing) => break,
                // An offset is being stored: a matter of microseconds, and the commit
                // after this close must include it.
                Phase::Storing => std::thread::yield_now(),
                Phase::Closed => {
                    self.wake.notify_one();
                    return true;
                }
                Phase::Closing | Phase::Abandoned => break,
                // The worker moved on between the load and the exchange: look again.
                Phase::Idle | Phase::Busy => {}
            }
        }
        self.wake.notify_one();
        let mut guard = self.lock();
        while self.phase() == Phase::Closing {
            let Some(deadline) = deadline else {
                guard = self.changed.wait(guard).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.set(Phase::Abandoned);
                return false;
            }
            guard = self
                .changed
                .wait_timeout(guard, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        self.phase() != Phase::Abandoned
    }

    /// Records that the worker died: nothing more is handled here, and a `close` waiting
    /// for its record returns at once.
    fn mark_dead(&self) {
        let _guard = self.lock();
        self.set(Phase::Closed);
        self.changed.notify_all();
    }

    fn is_closing(&self) -> bool {
        !matches!(self.phase(), Phase::Idle | Phase::Busy | Phase::Storing)
    }

    /// Marks the start of a record; `false` if the worker was stopped.
    fn start(&self) -> bool {
        self.advance(Phase::Idle, Phase::Busy)
    }

    /// Marks the end of a record. `store` stores its offset: before the phase leaves
    /// `Busy`/`Storing`, so a `close` that returns afterwards is followed by a commit
    /// that includes it; and never once the record was abandoned.
    fn finish(&self, store: impl FnOnce()) {
        if self.advance(Phase::Busy, Phase::Storing) {
            store();
            // `close` waits while an offset is stored and changes nothing meanwhile.
            self.set(Phase::Idle);
            return;
        }
        // `close` came first: it moved `Busy` to `Closing` (and maybe on to `Abandoned`
        // past its deadline) and waits, under the lock, for the record to end.
        let _guard = self.lock();
        if self.phase() == Phase::Closing {
            store();
        }
        self.set(Phase::Closed);
        self.changed.notify_all();
    }
}

/// What every worker of one consumer shares.
pub(crate) struct WorkerEnv {
    pub(crate) group_id: Arc<str>,
    /// `messaging.client.id` of the process spans.
    pub(crate) client_id: Arc<str>,
    pub(crate) settings: ConsumerSettings,
    pub(crate) dead_letters: DeadLetterWriter,
    pub(crate) idempotency: Option<Arc<dyn DynIdempotencyStore>>,
    /// The keys of encrypted fields, when the consumer was given them.
    pub(crate) encryption: Option<crate::encryption::Encryption>,
    /// Secret configuration values, scrubbed from error text.
    pub(crate) secrets: Vec<String>,
    /// Where a worker that died reports it; the consumer then stops and returns the error.
    pub(crate) failures: mpsc::UnboundedSender<crate::Error>,
}

/// What a partition worker needs besides its handler.
pub(crate) struct WorkerArgs {
    /// The partition's own queue, split from the consumer's; `None` if librdkafka could not
    /// split it, and then its records arrive as `strays` only.
    pub(crate) queue: Option<BatchQueue<RuntimeContext>>,
    /// Records of this partition that came through the consumer's main queue.
    pub(crate) strays: mpsc::Receiver<OwnedMessage>,
    pub(crate) consumer: Arc<BaseConsumer<RuntimeContext>>,
    pub(crate) state: Arc<PartitionState>,
    pub(crate) env: Arc<WorkerEnv>,
}

/// Starts a worker for a handler whose type was erased at registration.
pub(crate) trait SpawnWorker: Send + Sync + 'static {
    /// Spawns the worker into `tasks`, so the consumer can wait for it (and, past its
    /// deadline, abort it) before it returns.
    fn spawn_worker(
        self: Arc<Self>,
        tasks: &mut JoinSet<()>,
        runtime: &tokio::runtime::Handle,
        args: WorkerArgs,
    );
}

impl<R: RecordHandler> SpawnWorker for R {
    fn spawn_worker(
        self: Arc<Self>,
        tasks: &mut JoinSet<()>,
        runtime: &tokio::runtime::Handle,
        args: WorkerArgs,
    ) {
        let state = Arc::clone(&args.state);
        let env = Arc::clone(&args.env);
        let supervised = async move {
            // Handlers' panics are caught around each call; one that escapes the worker
            // came from the runtime's own path (an idempotency store's `mark_processed`,
            // say). The partition must not stall in silence: the consumer stops and says
            // why, and the record in hand stays uncommitted.
            let Err(panic) = AssertUnwindSafe(run(self, args)).catch_unwind().await else {
                return;
            };
            state.mark_dead();
            let reason = panic_message("the partition worker", &*panic);
            let reason = dead_letter::redact(&reason, env.secrets.iter().map(String::as_str));
            tracing::error!(
                topic = %state.topic,
                partition = state.partition,
                group = %env.group_id,
                %reason,
                "partition worker died; the consumer stops"
            );
            let _ = env.failures.send(crate::Error::TaskFailed {
                task: format!(
                    "the worker of partition {} of topic `{}`",
                    state.partition, state.topic
                ),
                reason,
            });
        };
        tasks.spawn_on(supervised, runtime);
    }
}

/// The worker of one partition: handles its records in order until it is closed.
///
/// Generic over the handler, so the handler's future is part of this one: a record costs
/// no allocation here.
async fn run<R: RecordHandler>(handler: Arc<R>, args: WorkerArgs) {
    let WorkerArgs {
        mut queue,
        mut strays,
        consumer,
        state,
        env,
    } = args;
    let ready = Arc::new(Notify::new());
    if let Some(queue) = queue.as_mut() {
        let wake = Arc::clone(&ready);
        // librdkafka calls this from its own thread when the queue becomes non-empty.
        queue.set_nonempty_callback(move || wake.notify_one());
    }
    let worker = Worker {
        handler: &*handler,
        consumer: &consumer,
        state: &state,
        env: &env,
        handler_env: Env {
            group_id: &env.group_id,
            idempotency: env.idempotency.as_deref(),
            encryption: env.encryption.as_ref(),
            handler_timeout: env.settings.handler_timeout,
            metrics: &state.metrics,
        },
    };
    // Whether the partition has its own queue; without one, its records come as strays
    // only, and the worker ends when their channel closes.
    let split = queue.is_some();
    loop {
        if state.is_closing() {
            break;
        }
        // Strays are older than anything in the split queue: handle them first.
        if let Ok(message) = strays.try_recv() {
            worker.process(Held::Owned(&message)).await;
            continue;
        }
        // Records are taken from the queue several at a time (`native_queue::BATCH`) and
        // handled one by one; each stores its own offset when done.
        let polled = queue.as_mut().and_then(BatchQueue::next);
        match polled {
            Some(Ok(message)) => {
                worker.process(Held::Native(&message)).await;
                // A full queue never makes this loop wait; spend tokio's cooperative
                // budget so other tasks on the runtime still get their turn.
                tokio::task::coop::consume_budget().await;
            }
            Some(Err(error)) => {
                tracing::warn!(
                    topic = %state.topic,
                    partition = state.partition,
                    %error,
                    "fetch error"
                );
                // librdkafka recovers by itself (reconnects, offset resets); pause briefly
                // so a repeating error cannot spin this loop.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = state.wake.notified() => {}
                }
            }
            None => {
                tokio::select! {
                    () = ready.notified() => {}
                    () = state.wake.notified() => {}
                    stray = strays.recv() => match stray {
                        Some(message) => worker.process(Held::Owned(&message)).await,
                        None if !split => break,
                        None => {}
                    },
                }
            }
        }
    }
    // Dropping the queue here, before the consumer handle, lets the poll thread close the
    // consumer once every worker is gone.
    drop(queue);
}

/// Waits between attempts at infrastructure calls (the dead-letter write, the idempotency
/// store): they are retried for as long as it takes, at most this far apart.
const INFRASTRUCTURE_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    initial_backoff: Duration::from_millis(100),
    multiplier: 2.0,
    max_backoff: Duration::from_secs(5),
    jitter: 0.2,
};

struct Worker<'w, R> {
    handler: &'w R,
    consumer: &'w BaseConsumer<RuntimeContext>,
    state: &'w PartitionState,
    env: &'w WorkerEnv,
    handler_env: Env<'w>,
}

impl<R: RecordHandler> Worker<'_, R> {
    /// Handles one record and, once it is done, stores its offset for the commit.
    async fn process(&self, message: Held<'_>) {
        if !self.state.start() {
            return;
        }
        let _in_flight = self.state.metrics.taken();
        let headers = message.contract_headers();
        let record = Record {
            message,
            headers: &headers,
        };
        let span = self.process_span(record);
        let handling = self.handle_until_done(record);
        // Without a subscriber the span is disabled; entering and leaving it on every poll
        // would be work for nothing.
        let done = if span.is_disabled() {
            handling.await
        } else {
            handling.instrument(span).await
        };
        self.state.finish(|| {
            if done {
                self.store_offset(record);
            }
        });
    }

    /// The record's `process` span, a child of its trace context; `Span::none()` when no
    /// subscriber listens. The trace headers are checked for every record, listened to or
    /// not, so a malformed one is always counted (`kafka_trace_context_invalid_total`):
    /// they come from the record's one pass over its headers ([`Held::contract_headers`]),
    /// and a `traceparent` costs parsing its 55 bytes, with no allocation.
    fn process_span(&self, record: Record<'_>) -> Span {
        let topic = record.topic();
        let headers = record.headers;
        let wire = telemetry::WireTrace::read(headers.traceparent, headers.tracestate, topic);
        if !spans::process_enabled() {
            return Span::none();
        }
        let message_id = headers.id.and_then(|id| std::str::from_utf8(id).ok());
        telemetry::process_span(&wire, || {
            spans::process(&spans::Received {
                topic,
                partition: record.partition(),
                offset: record.offset(),
                key: record.key(),
                message_id,
                group: &self.env.group_id,
                client_id: &self.env.client_id,
            })
        })
    }

    /// Stores the offset after `record` for the background commit.
    fn store_offset(&self, record: Record<'_>) {
        let stored = match record.message {
            Held::Native(message) => message.store_offset(),
            // rd_kafka_offset_store stores offset + 1, the next record to read.
            Held::Owned(message) => {
                self.consumer
                    .store_offset(message.topic(), message.partition(), message.offset())
            }
        };
        if let Err(error) = stored {
            // ERR__STATE: the partition was taken away meanwhile; its next owner handles
            // the record again.
            tracing::debug!(
                topic = %self.state.topic,
                partition = self.state.partition,
                %error,
                "storing the offset failed"
            );
        }
    }

    /// Waits `wait`, or less if the worker is asked to stop; `false` if it was.
    async fn pause(&self, wait: Duration) -> bool {
        if self.state.is_closing() {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.state.wake.notified() => {}
        }
        !self.state.is_closing()
    }

    /// `text` without the configuration's secrets.
    fn scrub(&self, text: String) -> String {
        if self.env.secrets.iter().any(|s| text.contains(s.as_str())) {
            dead_letter::redact(&text, self.env.secrets.iter().map(String::as_str))
        } else {
            text
        }
    }

    /// Takes one record until it is done: handled, a duplicate, or dead-lettered. Returns
    /// `false` when the worker was stopped first; the record then stays uncommitted.
    async fn handle_until_done(&self, record: Record<'_>) -> bool {
        let state = self.state;
        let mut attempt = 1u32;
        let mut outages = 0u32;
        loop {
            let outcome = AssertUnwindSafe(self.handler.handle(record, attempt, &self.handler_env))
                .catch_unwind()
                .await
                // Handlers' panics are caught closer to them; this one came from the code
                // around the handler (an idempotency store's `is_processed`, say), and the
                // record still must not be lost.
                .unwrap_or_else(|panic| Outcome::Panicked {
                    message: panic_message("handling the record", &*panic),
                });
            let (reason, error) = match outcome {
                Outcome::Handled { mark: None } => {
                    spans::processed(&Span::current(), attempt, None);
                    state.metrics.handled();
                    return true;
                }
                Outcome::Duplicate => {
                    spans::processed(&Span::current(), attempt, None);
                    state.metrics.duplicate();
                    return true;
                }
                Outcome::Handled {
                    mark: Some(event_id),
                } => {
                    spans::processed(&Span::current(), attempt, None);
                    let marked = self.mark_processed(record, event_id).await;
                    if marked {
                        state.metrics.handled();
                    }
                    return marked;
                }
                Outcome::StoreUnavailable(error) => {
                    let message = match error {
                        crate::Error::SubjectKeyStore { .. }
                        | crate::Error::SubjectKeyUnusable { .. } => {
                            "subject key store unavailable or its key unusable; the record waits"
                        }
                        _ => "idempotency store unavailable; the record waits",
                    };
                    let error = self.scrub(error.to_string());
                    if !self
                        .wait_out_outage(record, &error, &mut outages, message)
                        .await
                    {
                        return false;
                    }
                    continue;
                }
                Outcome::Failed {
                    error,
                    kind: FailureKind::Unavailable,
                    ..
                } => {
                    let error = self.scrub(error);
                    if !self.wait_out_outage(record, &error, &mut outages, "a resource the handler needs is unavailable; the record waits without spending an attempt").await {
                        return false;
                    }
                    continue;
                }
                Outcome::Undecodable(error) => (DeadLetterReason::Decode, error.to_string()),
                Outcome::Panicked { message } => (DeadLetterReason::Panic, self.scrub(message)),
                Outcome::Failed { error, kind, retry } => {
                    let error = self.scrub(error);
                    let policy = retry.unwrap_or(self.env.settings.retry);
                    if kind == FailureKind::Transient && policy.allows_another(attempt) {
                        let wait = policy.backoff(attempt);
                        tracing::warn!(
                            topic = %state.topic,
                            partition = state.partition,
                            offset = record.offset(),
                            group = %self.env.group_id,
                            attempt,
                            max_attempts = policy.max_attempts,
                            error = %error,
                            retry_in_ms = crate::limits::millis(wait),
                            "handler failed; the record will be retried"
                        );
                        state.metrics.retried();
                        if !self.pause(wait).await {
                            return false;
                        }
                        attempt = attempt.saturating_add(1);
                        continue;
                    }
                    (DeadLetterReason::Handler, error)
                }
            };
            spans::processed(&Span::current(), attempt, Some(reason.as_str()));
            let dead_letter_span = spans::dead_letter(
                self.env.dead_letters.topic(),
                reason.as_str(),
                &self.env.client_id,
            );
            return self
                .dead_letter(record, reason, &error, attempt)
                .instrument(dead_letter_span)
                .await;
        }
    }

    /// Waits out an outage of something the record needs (the idempotency store, the
    /// handler's database): no attempt is spent. `false` if the worker was stopped first.
    async fn wait_out_outage(
        &self,
        record: Record<'_>,
        error: &str,
        outages: &mut u32,
        message: &'static str,
    ) -> bool {
        *outages = outages.saturating_add(1);
        let wait = INFRASTRUCTURE_RETRY.backoff(*outages);
        tracing::error!(
            topic = %self.state.topic,
            partition = self.state.partition,
            offset = record.offset(),
            group = %self.env.group_id,
            error,
            retry_in_ms = crate::limits::millis(wait),
            "{message}"
        );
        self.pause(wait).await
    }

    /// Marks the event processed in the idempotency store, retrying until it is written;
    /// `false` if the worker was stopped first (the record is then handled again later).
    async fn mark_processed(&self, record: Record<'_>, event_id: uuid::Uuid) -> bool {
        let Some(store) = self.env.idempotency.as_deref() else {
            return true;
        };
        let mut failures = 0u32;
        loop {
            match crate::idempotency::mark_processed(store, &self.env.group_id, event_id).await {
                Ok(()) => return true,
                Err(error) => {
                    self.state.metrics.idempotency.store_error();
                    failures = failures.saturating_add(1);
                    let wait = INFRASTRUCTURE_RETRY.backoff(failures);
                    tracing::error!(
                        topic = %self.state.topic,
                        partition = self.state.partition,
                        offset = record.offset(),
                        %event_id,
                        %error,
                        retry_in_ms = crate::limits::millis(wait),
                        "cannot mark the event processed; the record waits"
                    );
                    if !self.pause(wait).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Writes `record` to the dead-letter topic, retrying until the write is acknowledged;
    /// `false` if the worker was stopped first.
    async fn dead_letter(
        &self,
        record: Record<'_>,
        reason: DeadLetterReason,
        error: &str,
        attempts: u32,
    ) -> bool {
        let state = self.state;
        let failure = Failure {
            group: &self.env.group_id,
            reason,
            error,
            attempts,
        };
        let mut failures = 0u32;
        loop {
            let written = match record.message {
                Held::Native(message) => {
                    self.env
                        .dead_letters
                        .write(&message.detach(), &failure)
                        .await
                }
                Held::Owned(message) => self.env.dead_letters.write(message, &failure).await,
            };
            match written {
                Ok((partition, offset)) => {
                    spans::stored(&Span::current(), partition, offset);
                    state.metrics.dead_lettered(reason);
                    tracing::error!(
                        topic = %state.topic,
                        partition = state.partition,
                        offset = record.offset(),
                        group = %self.env.group_id,
                        reason = reason.as_str(),
                        attempts,
                        error,
                        dead_letter_topic = self.env.dead_letters.topic(),
                        dead_letter_partition = partition,
                        dead_letter_offset = offset,
                        "record dead-lettered"
                    );
                    return true;
                }
                Err(write_error) => {
                    if let Some(refused) = self.env.dead_letters.refusal(&write_error) {
                        // No retry grants an ACL: the consumer stops, saying why; the
                        // record stays uncommitted for the next run.
                        let _ = self.env.failures.send(refused);
                        return false;
                    }
                    failures = failures.saturating_add(1);
                    let wait = INFRASTRUCTURE_RETRY.backoff(failures);
                    tracing::error!(
                        topic = %state.topic,
                        partition = state.partition,
                        offset = record.offset(),
                        group = %self.env.group_id,
                        reason = reason.as_str(),
                        error = %write_error,
                        dead_letter_topic = self.env.dead_letters.topic(),
                        retry_in_ms = crate::limits::millis(wait),
                        "dead-letter write failed; the record stays uncommitted and the write is retried"
                    );
                    if !self.pause(wait).await {
                        return false;
                    }
                }
            }
        }
    }
}
