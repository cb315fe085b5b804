//! A consumer's health, for a service's readiness check.

use std::sync::atomic::{AtomicU8, Ordering};
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
}

impl std::fmt::Debug for ConsumerHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConsumerHealth")
            .field(&self.status())
            .finish()
    }
}

impl ConsumerHealth {
    pub(super) fn new(watch: ClientWatch) -> Self {
        ConsumerHealth {
            watch,
            phase: Arc::new(AtomicU8::new(STARTING)),
        }
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
    /// readiness check.
    pub fn is_ready(&self) -> bool {
        self.status() == ConsumerStatus::Running
    }
}
