//! One worker per assigned partition: records of a partition are handled one after the
//! other, in offset order, while different partitions run concurrently.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{mpsc, Notify};

use super::dispatch::{Outcome, Record, RecordHandler};
use super::{ConsumerSettings, RuntimeContext};

/// Where a partition's worker stands; changed only under [`PartitionState::phase`]'s lock,
/// so the poll thread and the worker agree on whether a record is being handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the next record.
    Idle,
    /// Handling a record.
    Busy,
    /// Asked to stop while handling a record; becomes `Closed` when that record is done.
    Closing,
    /// The record being handled outlived the stop deadline: when it finishes, its offset
    /// must not be stored, because its partition was already committed and given up.
    Abandoned,
    /// Stopped: no further record of this partition is handled here.
    Closed,
}

/// What the poll thread and a partition's worker share.
pub(crate) struct PartitionState {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    phase: Mutex<Phase>,
    changed: Condvar,
    /// Wakes a worker waiting for records or between attempts when it is asked to stop.
    wake: Notify,
}

impl PartitionState {
    pub(crate) fn new(topic: Arc<str>, partition: i32) -> Self {
        PartitionState {
            topic,
            partition,
            phase: Mutex::new(Phase::Idle),
            changed: Condvar::new(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // Handlers run outside the lock, so a poisoned lock still holds a consistent phase.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the worker: no new record is started, and a record being handled may finish
    /// (and store its offset) until `deadline`. Returns whether it finished in time.
    pub(crate) fn close(&self, deadline: Instant) -> bool {
        let mut phase = self.lock();
        match *phase {
            Phase::Idle | Phase::Closed => {
                *phase = Phase::Closed;
                drop(phase);
                self.wake.notify_one();
                return true;
            }
            Phase::Busy => *phase = Phase::Closing,
            Phase::Closing | Phase::Abandoned => {}
        }
        drop(phase);
        self.wake.notify_one();
        let mut phase = self.lock();
        while *phase == Phase::Closing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                *phase = Phase::Abandoned;
                return false;
            }
            phase = self
                .changed
                .wait_timeout(phase, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    fn is_closing(&self) -> bool {
        !matches!(*self.lock(), Phase::Idle | Phase::Busy)
    }

    /// Marks the start of a record; `false` if the worker was stopped.
    fn start(&self) -> bool {
        let mut phase = self.lock();
        if *phase == Phase::Idle {
            *phase = Phase::Busy;
            true
        } else {
            false
        }
    }

    /// Marks the end of a record. `store` stores its offset; it runs under the lock, so
    /// the poll thread's commit after [`PartitionState::close`] includes it, and it is
    /// skipped once the record was abandoned.
    fn finish(&self, store: impl FnOnce()) {
        let mut phase = self.lock();
        if *phase != Phase::Abandoned {
            store();
        }
        let waited_on = *phase != Phase::Busy;
        *phase = if waited_on {
            Phase::Closed
        } else {
            Phase::Idle
        };
        drop(phase);
        // Only `close` waits on the condition variable, and only once the phase left
        // `Busy`; skipping the wake-up otherwise saves a system call per record.
        if waited_on {
            self.changed.notify_all();
        }
    }
}

/// What a partition worker needs besides its handler.
pub(crate) struct WorkerArgs {
    /// The partition's own queue, split from the consumer's; `None` if librdkafka could not
    /// split it, and then its records arrive as `strays` only.
    pub(crate) queue: Option<PartitionQueue<RuntimeContext>>,
    /// Records of this partition that came through the consumer's main queue.
    pub(crate) strays: mpsc::UnboundedReceiver<OwnedMessage>,
    pub(crate) consumer: Arc<BaseConsumer<RuntimeContext>>,
    pub(crate) state: Arc<PartitionState>,
    pub(crate) group_id: Arc<str>,
    pub(crate) settings: ConsumerSettings,
}

/// Starts a worker for a handler whose type was erased at registration.
pub(crate) trait SpawnWorker: Send + Sync + 'static {
    fn spawn_worker(self: Arc<Self>, runtime: &tokio::runtime::Handle, args: WorkerArgs);
}

impl<R: RecordHandler> SpawnWorker for R {
    fn spawn_worker(self: Arc<Self>, runtime: &tokio::runtime::Handle, args: WorkerArgs) {
        runtime.spawn(run(self, args));
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
        group_id,
        settings,
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
        group_id: &group_id,
        settings: &settings,
    };
    loop {
        if state.is_closing() {
            break;
        }
        // Strays are older than anything in the split queue: handle them first.
        if let Ok(message) = strays.try_recv() {
            worker.process(Record::Owned(&message)).await;
            continue;
        }
        let polled = queue.as_ref().and_then(|q| q.poll(Duration::ZERO));
        match polled {
            Some(Ok(message)) => {
                worker.process(Record::Borrowed(&message)).await;
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
                        Some(message) => worker.process(Record::Owned(&message)).await,
                        None if queue.is_none() => break,
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

struct Worker<'w, R> {
    handler: &'w R,
    consumer: &'w BaseConsumer<RuntimeContext>,
    state: &'w PartitionState,
    group_id: &'w str,
    settings: &'w ConsumerSettings,
}

impl<R: RecordHandler> Worker<'_, R> {
    /// Handles one record and, once it is done, stores its offset for the commit.
    async fn process(&self, record: Record<'_>) {
        if !self.state.start() {
            return;
        }
        let handled = self.handle_until_done(record).await;
        self.state.finish(|| {
            if handled {
                self.store_offset(record);
            }
        });
    }

    /// Stores the offset after `record` for the background commit.
    fn store_offset(&self, record: Record<'_>) {
        let stored = match record {
            Record::Borrowed(message) => self.consumer.store_offset_from_message(message),
            // rd_kafka_offset_store stores offset + 1, the next record to read.
            Record::Owned(message) => {
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

    /// Handles one record, retrying failures in place so the partition never moves past
    /// a record that was not handled. Returns `false` when the worker was stopped first.
    async fn handle_until_done(&self, record: Record<'_>) -> bool {
        let state = self.state;
        let mut attempt = 1u32;
        loop {
            let outcome = AssertUnwindSafe(self.handler.handle(record, attempt, self.group_id))
                .catch_unwind()
                .await;
            let failure = match outcome {
                Ok(Outcome::Handled) => return true,
                Ok(Outcome::Undecodable(error)) => {
                    // Until the dead-letter topic exists, an undecodable record is logged
                    // with its coordinates and skipped, so it cannot stop the partition.
                    tracing::error!(
                        topic = %state.topic,
                        partition = state.partition,
                        offset = record.offset(),
                        group = %self.group_id,
                        error = %error,
                        "record cannot be decoded; skipped"
                    );
                    return true;
                }
                Ok(Outcome::Failed(error)) => error.message(),
                Err(panic) => panic_message(&*panic),
            };
            let backoff = self.settings.retry_backoff(attempt);
            tracing::error!(
                topic = %state.topic,
                partition = state.partition,
                offset = record.offset(),
                group = %self.group_id,
                attempt,
                error = %failure,
                retry_in_ms = backoff.as_millis() as u64,
                "handler failed; the record will be retried and its offset is not committed"
            );
            if state.is_closing() {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = state.wake.notified() => {}
            }
            if state.is_closing() {
                return false;
            }
            attempt = attempt.saturating_add(1);
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    format!("handler panicked: {text}")
}

/// Exponential backoff between attempts: `initial * 2^(attempt-1)`, capped.
pub(crate) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}
