//! A consumer's health, for a service's readiness check.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::connection::{ClientWatch, UnreachableCause};

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

/// What a consumer is doing, as [`ConsumerHealth::status`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerStatus {
    /// `run` has not been called yet, or is still checking that a broker answers.
    Starting,
    /// Subscribed, and its brokers are reachable.
    Running,
    /// Subscribed, but no broker has been reachable for `down_for`; the consumer waits the
    /// outage out and goes on where it stopped.
    BrokersUnreachable {
        /// How long the outage has lasted.
        down_for: Duration,
        /// The last reason a connection failed, when librdkafka gave one.
        cause: Option<UnreachableCause>,
    },
    /// `run` returned.
    Stopped,
}

/// A consumer's health: cheap to clone, readable from any thread while the consumer runs
/// (see [`EventConsumer::health`](super::EventConsumer::health)).
#[derive(Clone)]
pub struct ConsumerHealth {
    watch: ClientWatch,
    phase: Arc<AtomicU8>,
    assignment: Arc<Assignment>,
}

/// What the consumer's group gave it, updated after each rebalance.
#[derive(Default)]
pub(super) struct Assignment {
    /// Whether any assignment arrived since `run` was called.
    joined: AtomicBool,
    /// The partitions this consumer handles now.
    partitions: AtomicUsize,
}

impl std::fmt::Debug for ConsumerHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerHealth")
            .field("status", &self.status())
            .field("joined_group", &self.has_joined_group())
            .field("assigned_partitions", &self.assigned_partitions())
            .finish()
    }
}

impl ConsumerHealth {
    pub(super) fn new(watch: ClientWatch) -> Self {
        ConsumerHealth {
            watch,
            phase: Arc::new(AtomicU8::new(STARTING)),
            assignment: Arc::default(),
        }
    }

    /// Records the partitions this consumer handles after a rebalance (an empty assignment
    /// too: it has joined its group).
    pub(super) fn assigned(&self, partitions: usize) {
        self.assignment
            .partitions
            .store(partitions, Ordering::Release);
        self.assignment.joined.store(true, Ordering::Release);
    }

    /// The consumer's watch, which its librdkafka callbacks report to.
    pub(super) fn watch(&self) -> &ClientWatch {
        &self.watch
    }

    pub(super) fn running(&self) {
        self.phase.store(RUNNING, Ordering::Release);
    }

    pub(super) fn stopped(&self) {
        self.phase.store(STOPPED, Ordering::Release);
        self.assignment.partitions.store(0, Ordering::Release);
        self.assignment.joined.store(false, Ordering::Release);
    }

    /// What the consumer is doing now.
    pub fn status(&self) -> ConsumerStatus {
        match self.phase.load(Ordering::Acquire) {
            STARTING => ConsumerStatus::Starting,
            STOPPED => ConsumerStatus::Stopped,
            _ => match self.watch.outage() {
                Some((down_for, cause)) => ConsumerStatus::BrokersUnreachable { down_for, cause },
                None => ConsumerStatus::Running,
            },
        }
    }

    /// Whether the consumer is running with its brokers reachable: the answer for a
    /// liveness or readiness check that does not wait for the group.
    pub fn is_ready(&self) -> bool {
        self.status() == ConsumerStatus::Running
    }

    /// Whether the consumer has joined its group since `run` was called: its group
    /// coordinator gave it an assignment. An empty assignment counts: a member beyond the
    /// topics' partition count gets none and stands by, healthy, until a rebalance needs
    /// it. `false` again once `run` returned. A readiness check that should wait for the
    /// group asks this beside [`ConsumerHealth::is_ready`].
    pub fn has_joined_group(&self) -> bool {
        self.assignment.joined.load(Ordering::Acquire)
    }

    /// How many partitions this consumer handles now (after the last rebalance; 0 before
    /// the first and after `run` returned).
    pub fn assigned_partitions(&self) -> usize {
        self.assignment.partitions.load(Ordering::Acquire)
    }
}
