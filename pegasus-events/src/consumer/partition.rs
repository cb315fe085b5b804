//! One worker per assigned partition: records of a partition are handled one after the
//! other, in offset order, while different partitions run concurrently.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{mpsc, Notify};

use super::dispatch::{Outcome, TopicRoute};
use super::ConsumerSettings;

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
    /// Stopped: no further record of this partition is handled here.
    Closed,
}

/// What the poll thread and a partition's worker share.
pub(crate) struct PartitionState {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    phase: Mutex<PhaseData>,
    changed: Condvar,
    /// Wakes a worker sleeping between attempts when it is asked to stop.
    wake: Notify,
    /// Records sent to the worker and not finished yet (queued or being handled).
    queued: std::sync::atomic::AtomicUsize,
}

struct PhaseData {
    phase: Phase,
    /// The offset after the last record that finished, in order; `None` before the first.
    done: Option<i64>,
}

impl PartitionState {
    pub(crate) fn new(topic: Arc<str>, partition: i32) -> Self {
        PartitionState {
            topic,
            partition,
            phase: Mutex::new(PhaseData {
                phase: Phase::Idle,
                done: None,
            }),
            changed: Condvar::new(),
            wake: Notify::new(),
            queued: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PhaseData> {
        // A worker never panics while holding the lock (handlers run outside it), so a
        // poisoned lock still holds consistent data.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The offset to commit for this partition: one past the last finished record.
    pub(crate) fn done_offset(&self) -> Option<i64> {
        self.lock().done
    }

    /// Records handed to this worker and not finished.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn record_queued(&self) {
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub(crate) fn record_finished(&self) {
        self.queued
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Stops the worker: no new record is started, and a record being handled may finish
    /// within `deadline`. Returns whether it finished (or nothing was running).
    pub(crate) fn close(&self, deadline: Instant) -> bool {
        let mut data = self.lock();
        match data.phase {
            Phase::Idle | Phase::Closed => {
                data.phase = Phase::Closed;
                return true;
            }
            Phase::Busy => data.phase = Phase::Closing,
            Phase::Closing => {}
        }
        drop(data);
        self.wake.notify_one();
        let mut data = self.lock();
        while data.phase == Phase::Closing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            data = self
                .changed
                .wait_timeout(data, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    fn is_closing(&self) -> bool {
        matches!(self.lock().phase, Phase::Closing | Phase::Closed)
    }

    /// Marks the start of a record; `false` if the worker was stopped.
    fn start(&self) -> bool {
        let mut data = self.lock();
        if data.phase == Phase::Idle {
            data.phase = Phase::Busy;
            true
        } else {
            false
        }
    }

    /// Marks the end of a record; `finished_offset` is set when it was handled (or
    /// skipped) and so may be committed.
    fn finish(&self, finished_offset: Option<i64>) {
        let mut data = self.lock();
        if let Some(offset) = finished_offset {
            data.done = Some(offset + 1);
        }
        data.phase = match data.phase {
            Phase::Busy => Phase::Idle,
            _ => Phase::Closed,
        };
        drop(data);
        self.changed.notify_all();
    }
}

/// The worker of one partition: handles its records in order until the channel closes.
pub(crate) async fn run(
    mut records: mpsc::UnboundedReceiver<OwnedMessage>,
    state: Arc<PartitionState>,
    route: Arc<TopicRoute>,
    group_id: Arc<str>,
    settings: ConsumerSettings,
) {
    while let Some(message) = records.recv().await {
        if !state.start() {
            // Stopped: the record stays uncommitted and goes to the partition's next owner.
            state.record_finished();
            continue;
        }
        let handled = handle_until_done(&message, &state, &route, &group_id, &settings).await;
        state.finish(handled.then_some(message.offset()));
        state.record_finished();
    }
}

/// Handles one record, retrying failures in place so the partition never moves past a
/// record that was not handled. Returns `false` when the worker was stopped first.
async fn handle_until_done(
    message: &OwnedMessage,
    state: &PartitionState,
    route: &TopicRoute,
    group_id: &Arc<str>,
    settings: &ConsumerSettings,
) -> bool {
    let mut attempt = 1u32;
    loop {
        let outcome = AssertUnwindSafe(route.dispatch(message, attempt, group_id, &state.topic))
            .catch_unwind()
            .await;
        let failure = match outcome {
            Ok(Outcome::Handled) => return true,
            Ok(Outcome::Undecodable(error)) => {
                // Until the dead-letter topic exists, an undecodable record is logged with
                // its coordinates and skipped, so it cannot stop the partition.
                tracing::error!(
                    topic = %state.topic,
                    partition = state.partition,
                    offset = message.offset(),
                    group = %group_id,
                    error = %error,
                    "record cannot be decoded; skipped"
                );
                return true;
            }
            Ok(Outcome::Failed(error)) => error.message().into_owned(),
            Err(panic) => panic_message(&*panic),
        };
        let backoff = settings.retry_backoff(attempt);
        tracing::error!(
            topic = %state.topic,
            partition = state.partition,
            offset = message.offset(),
            group = %group_id,
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
