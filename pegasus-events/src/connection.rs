//! Reaching the brokers: the check a client makes before it is used, what a failure means
//! in words, outages while a client runs, and librdkafka's own log lines.
//!
//! # Guarantees
//!
//! - Creating an [`EventProducer`](crate::EventProducer) or a
//!   [`TopicAdmin`](crate::TopicAdmin), and starting an
//!   [`EventConsumer`](crate::EventConsumer) or an outbox relay, first waits for a broker at
//!   the bootstrap address to answer, for at most
//!   [`KafkaConfig::connect_timeout`](crate::KafkaConfig::connect_timeout) (5 s by default).
//!   When none answers, it fails with [`Error::BrokersUnreachable`], which names the
//!   address and the cause in words ([`UnreachableCause`]: connection refused, host name
//!   not resolved, TLS handshake failed, authentication failed, not a Kafka broker, ...).
//!   A cause that waiting cannot cure (failed authentication or TLS handshake, a server
//!   that does not speak Kafka) fails at once, without waiting out the bound.
//! - A publish that times out while no broker is reachable fails with
//!   [`Error::BrokersUnreachable`] as well, with the address and the last cause, rather
//!   than with librdkafka's bare "message timed out".
//! - While a client runs, an outage of all its brokers is logged once when it starts
//!   (`warn`), summarised every [`OUTAGE_SUMMARY_INTERVAL`] while it lasts (`warn`), and
//!   logged once when it ends (`info`); each failed connection attempt is only `debug`.
//!   A consumer shows the outage in its [`ConsumerHealth`](crate::consumer::ConsumerHealth)
//!   and notices its end within a second (one metadata request a second while it lasts);
//!   a producer notices it with its next acknowledged publish. Each client logs its own
//!   outage, named by its `client` field.
//! - librdkafka's own log lines reach `tracing` under the target `librdkafka`, at their
//!   level. The same line repeated within [`LOG_REPEAT_WINDOW`] is logged once; when it is
//!   logged again after the window, its `repeats` field counts the lines left out. Secret
//!   configuration values are scrubbed from every line first.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, FutureProducer, Producer, ProducerContext};

use crate::acl::{AclOperation, AclResource};
use crate::config::{client_error, KafkaConfig, DEFAULT_BOOTSTRAP_SERVERS};
use crate::error::{Error, Result};

/// How often a broker outage that goes on is summarised in the log.
pub const OUTAGE_SUMMARY_INTERVAL: Duration = Duration::from_secs(30);
/// A librdkafka log line repeated within this window is logged once.
pub const LOG_REPEAT_WINDOW: Duration = Duration::from_secs(30);
/// Distinct log lines remembered for deduplication; beyond it, the oldest are forgotten.
const LOG_LINES_REMEMBERED: usize = 1024;
/// How long the start of an outage waits for librdkafka to say why before it is logged
/// without a cause.
const ANNOUNCE_WITHOUT_CAUSE_AFTER: Duration = Duration::from_secs(5);
/// How long the diagnosis after a failed check may try a plain TCP connection.
const TCP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why no broker answered, in words; each variant names the broker address it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnreachableCause {
    /// Nothing listens at the address (the connection was refused).
    ConnectionRefused {
        /// The broker's `host:port`.
        broker: String,
    },
    /// The host name does not resolve.
    NameNotResolved {
        /// The broker's `host:port`.
        broker: String,
    },
    /// Connecting took too long (a firewall that drops packets, a wrong network).
    ConnectTimedOut {
        /// The broker's `host:port`.
        broker: String,
    },
    /// The TLS handshake failed (certificates, or TLS spoken to a plaintext listener).
    TlsHandshakeFailed {
        /// The broker's `host:port`.
        broker: String,
        /// librdkafka's description.
        detail: String,
    },
    /// The broker refused the SASL credentials or mechanism.
    AuthenticationFailed {
        /// The broker's `host:port`.
        broker: String,
        /// How the client authenticated: ``SASL SCRAM-SHA-256 as `shipping-api` `` (the
        /// mechanism and user name; never the password). Boxed to keep
        /// [`Error`] small.
        identity: Box<str>,
        /// librdkafka's description (it never contains the password).
        detail: String,
    },
    /// Something answered, but not in the Kafka protocol (an HTTP server, say).
    NotKafka {
        /// The broker's `host:port`.
        broker: String,
    },
    /// The server accepted the connection but gave no Kafka answer in time.
    NoAnswer {
        /// The broker's `host:port`.
        broker: String,
    },
    /// The server closed the connection at the first Kafka request.
    ClosedAtFirstRequest {
        /// The broker's `host:port`.
        broker: String,
    },
    /// Any other failure, in librdkafka's words.
    Other {
        /// The broker's `host:port`, when librdkafka named one.
        broker: String,
        /// librdkafka's description.
        detail: String,
    },
}

impl UnreachableCause {
    /// Whether waiting longer cannot help: the broker answered, and said no.
    pub fn is_incurable(&self) -> bool {
        matches!(
            self,
            UnreachableCause::TlsHandshakeFailed { .. }
                | UnreachableCause::AuthenticationFailed { .. }
                | UnreachableCause::NotKafka { .. }
        )
    }
}

impl fmt::Display for UnreachableCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnreachableCause::ConnectionRefused { broker } => write!(
                f,
                "connection refused by {broker}: no broker is listening there"
            ),
            UnreachableCause::NameNotResolved { broker } => {
                write!(f, "the host name of {broker} cannot be resolved")
            }
            UnreachableCause::ConnectTimedOut { broker } => {
                write!(f, "connecting to {broker} timed out")
            }
            UnreachableCause::TlsHandshakeFailed { broker, detail } => {
                write!(f, "the TLS handshake with {broker} failed: {detail}")
            }
            UnreachableCause::AuthenticationFailed {
                broker,
                identity,
                detail,
            } => write!(
                f,
                "authentication with {broker} failed for {identity} (check the SASL \
                 mechanism, user name and password): {detail}"
            ),
            UnreachableCause::NotKafka { broker } => write!(
                f,
                "{broker} answered, but not in the Kafka protocol: it is not a Kafka broker \
                 (an HTTP server?)"
            ),
            UnreachableCause::NoAnswer { broker } => write!(
                f,
                "{broker} accepted the connection but gave no Kafka answer: it is not a Kafka \
                 broker, or it expects TLS (set the security protocol)"
            ),
            UnreachableCause::ClosedAtFirstRequest { broker } => write!(
                f,
                "{broker} closed the connection at the first Kafka request: it expects TLS or \
                 SASL (set the security protocol), or it is not a Kafka broker"
            ),
            UnreachableCause::Other { broker, detail } if broker.is_empty() => f.write_str(detail),
            UnreachableCause::Other { broker, detail } => write!(f, "{broker}: {detail}"),
        }
    }
}

/// The message of [`Error::BrokersUnreachable`].
pub(crate) fn describe_unreachable(
    client: &str,
    bootstrap: &str,
    waited: Duration,
    cause: &UnreachableCause,
) -> String {
    let default_note = if bootstrap == DEFAULT_BOOTSTRAP_SERVERS {
        " (the default address: set KAFKA_BOOTSTRAP_SERVERS or Kafka.BootstrapServers)"
    } else {
        ""
    };
    format!(
        "the {client} could not connect to a Kafka broker at `{bootstrap}`{default_note} after {}: {cause}",
        human(waited)
    )
}

/// A duration as people write it: `5 s`, `250 ms`, `2 min 5 s`.
pub(crate) fn human(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1_000 {
        format!("{millis} ms")
    } else if millis < 60_000 {
        let tenths = millis / 100;
        if tenths.is_multiple_of(10) {
            format!("{} s", tenths / 10)
        } else {
            format!("{}.{} s", tenths / 10, tenths % 10)
        }
    } else {
        let seconds = duration.as_secs();
        format!("{} min {} s", seconds / 60, seconds % 60)
    }
}

/// Whether `error` is about reaching brokers, which the client's [`ClientWatch`] reports
/// (so a poll loop need not log it again).
pub(crate) fn is_connection_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::BadMessage
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::Authentication
        )
    )
}

/// librdkafka's description of a failure, as `(broker, detail)`: it writes
/// `[scheme://]host:port/name: what happened (after 0ms in state CONNECT)`.
fn split_reason(reason: &str) -> (String, String) {
    let reason = reason.trim();
    // The coordinator's thread writes its name first: `GroupCoordinator: host:port: ...`.
    let mut rest = reason;
    let (mut broker, mut detail) = ("", reason);
    for _ in 0..2 {
        match rest.split_once(": ") {
            Some((head, tail)) if !head.contains(' ') => {
                if head.contains(':') {
                    (broker, detail) = (head, tail);
                    break;
                }
                rest = tail;
            }
            _ => break,
        }
    }
    let broker = broker.split_once("://").map_or(broker, |(_, rest)| rest);
    let broker = broker
        .split_once('/')
        .map_or(broker, |(address, _)| address);
    (broker.to_owned(), without_timing(detail).to_owned())
}

/// A line without librdkafka's trailing `(after 3ms in state CONNECT, ...)`, which varies
/// from one attempt to the next.
fn without_timing(line: &str) -> &str {
    line.find(" (after ").map_or(line, |at| &line[..at]).trim()
}

/// What a librdkafka error event says about reaching a broker, if anything.
fn classify(code: RDKafkaErrorCode, reason: &str) -> Option<UnreachableCause> {
    let (broker, detail) = split_reason(reason);
    let cause = match code {
        RDKafkaErrorCode::Authentication => UnreachableCause::AuthenticationFailed {
            broker,
            // Filled in by the client's watch, which knows the configuration.
            identity: Box::default(),
            detail,
        },
        RDKafkaErrorCode::SSL => UnreachableCause::TlsHandshakeFailed { broker, detail },
        RDKafkaErrorCode::Resolve => UnreachableCause::NameNotResolved { broker },
        // An answer that is not Kafka's (`Invalid response size`) comes as `BadMessage`.
        RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::BadMessage => {
            if detail.contains("Connection refused") {
                UnreachableCause::ConnectionRefused { broker }
            } else if detail.contains("Failed to resolve") {
                UnreachableCause::NameNotResolved { broker }
            } else if detail.contains("Invalid response size")
                || detail.contains("Protocol parse failure")
            {
                UnreachableCause::NotKafka { broker }
            } else if detail.contains("Disconnected while requesting ApiVersion") {
                UnreachableCause::ClosedAtFirstRequest { broker }
            } else if detail.contains("SSL") {
                UnreachableCause::TlsHandshakeFailed { broker, detail }
            } else if detail.contains("Connect to") && detail.contains("timed out") {
                UnreachableCause::ConnectTimedOut { broker }
            } else {
                UnreachableCause::Other { broker, detail }
            }
        }
        _ => return None,
    };
    Some(cause)
}

/// Which messages a [`ClientWatch`] logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watching {
    /// A client of the application: outages and librdkafka's lines are logged.
    Client,
    /// A client beside another that reports outages (a consumer's dead-letter producer):
    /// librdkafka's lines are logged, outages are not logged twice.
    Companion,
    /// The short-lived client of the connection check: its result is the error, so every
    /// line it sees is only `debug`.
    Check,
}

/// librdkafka's callbacks for one client: it records why brokers cannot be reached, logs
/// outages, and forwards librdkafka's log lines. Cheap to clone (shared state).
#[derive(Clone)]
pub(crate) struct ClientWatch {
    state: Arc<WatchState>,
}

struct WatchState {
    client: &'static str,
    bootstrap: String,
    watching: Watching,
    /// How the client authenticates, for [`UnreachableCause::AuthenticationFailed`].
    identity: String,
    /// The principal the broker knows the client by, for [`Error::NotAuthorized`].
    principal: String,
    secrets: Vec<String>,
    /// Set while all brokers are down, for a lock-free check on every record.
    down: AtomicBool,
    /// Signalled when all brokers are down and the last failure is one waiting cannot
    /// cure (authentication, TLS), for a producer to fail what it holds at once.
    incurable_outage: tokio::sync::Notify,
    failures: Mutex<Failures>,
    lines: Mutex<LogLines>,
}

#[derive(Default)]
struct Failures {
    last: Option<UnreachableCause>,
    incurable: Option<UnreachableCause>,
    outage: Option<Outage>,
}

struct Outage {
    since: Instant,
    failed_attempts: u64,
    last_summary: Instant,
    /// Whether its start was logged: librdkafka may report "all brokers down" before the
    /// failure that says why, and the start is logged with the why.
    announced: bool,
}

impl ClientWatch {
    pub(crate) fn new(config: &KafkaConfig, client: &'static str, watching: Watching) -> Self {
        let secrets = config.secret_values(std::iter::empty());
        if watching == Watching::Client && config.security_protocol.is_tls() {
            warn_if_unverified(config, client);
        }
        ClientWatch {
            state: Arc::new(WatchState {
                client,
                bootstrap: config.bootstrap_servers.clone(),
                watching,
                identity: config.authentication(),
                principal: config.principal(),
                secrets,
                down: AtomicBool::new(false),
                incurable_outage: tokio::sync::Notify::new(),
                failures: Mutex::new(Failures::default()),
                lines: Mutex::new(LogLines::default()),
            }),
        }
    }

    fn failures(&self) -> MutexGuard<'_, Failures> {
        self.state
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn scrub(&self, text: &str) -> String {
        crate::dead_letter::redact(text, self.state.secrets.iter().map(String::as_str))
    }

    /// Whether all brokers are down as far as this client knows.
    pub(crate) fn is_down(&self) -> bool {
        self.state.down.load(Ordering::Acquire)
    }

    /// How long the current outage has lasted and its last cause, if there is one.
    pub(crate) fn outage(&self) -> Option<(Duration, Option<UnreachableCause>)> {
        if !self.is_down() {
            return None;
        }
        let failures = self.failures();
        failures
            .outage
            .as_ref()
            .map(|outage| (outage.since.elapsed(), failures.last.clone()))
    }

    /// A broker answered: ends the outage, if one was going on, and logs how long it lasted.
    pub(crate) fn reachable(&self) {
        if !self.is_down() {
            return;
        }
        let mut failures = self.failures();
        self.state.down.store(false, Ordering::Release);
        failures.last = None;
        if let Some(outage) = failures.outage.take() {
            // An outage too short to be announced ends without a word too.
            if self.state.watching == Watching::Client && outage.announced {
                tracing::info!(
                    client = self.state.client,
                    bootstrap = %self.state.bootstrap,
                    down_for_ms = crate::limits::millis(outage.since.elapsed()),
                    failed_attempts = outage.failed_attempts,
                    "Kafka brokers at `{}` reachable again after {} ({} failed connection attempts)",
                    self.state.bootstrap,
                    human(outage.since.elapsed()),
                    outage.failed_attempts,
                );
            }
        }
    }

    /// Logs the summary of an outage that goes on, when one is due.
    pub(crate) fn summarise_if_due(&self) {
        if !self.is_down() {
            return;
        }
        let mut failures = self.failures();
        let last = failures.last.clone();
        if let Some(outage) = failures.outage.as_mut() {
            self.summarise(outage, last.as_ref());
        }
    }

    fn summarise(&self, outage: &mut Outage, last: Option<&UnreachableCause>) {
        if !outage.announced {
            // No cause came with the start; announce it without one rather than not at all.
            if outage.since.elapsed() >= ANNOUNCE_WITHOUT_CAUSE_AFTER {
                self.announce(outage, last);
            }
            return;
        }
        if outage.last_summary.elapsed() < OUTAGE_SUMMARY_INTERVAL
            || self.state.watching != Watching::Client
        {
            return;
        }
        outage.last_summary = Instant::now();
        let cause = last.map_or_else(|| "no cause reported yet".to_owned(), ToString::to_string);
        tracing::warn!(
            client = self.state.client,
            bootstrap = %self.state.bootstrap,
            down_for_ms = crate::limits::millis(outage.since.elapsed()),
            failed_attempts = outage.failed_attempts,
            "still no Kafka broker reachable at `{}` after {} ({} failed connection attempts); last: {}",
            self.state.bootstrap,
            human(outage.since.elapsed()),
            outage.failed_attempts,
            self.scrub(&cause),
        );
    }

    /// Waits until all brokers are down for a reason waiting cannot cure (failed
    /// authentication, a failed TLS handshake): returns only while that is still so.
    pub(crate) async fn incurable_outage(&self) {
        loop {
            self.state.incurable_outage.notified().await;
            // A signal may be older than a recovery since.
            let still = self.is_down()
                && self
                    .failures()
                    .last
                    .as_ref()
                    .is_some_and(UnreachableCause::is_incurable);
            if still {
                return;
            }
        }
    }

    /// The error for an operation the broker refused for want of an ACL.
    pub(crate) fn not_authorized(&self, operation: AclOperation, resource: AclResource) -> Error {
        Error::NotAuthorized {
            client: self.state.client,
            principal: self.state.principal.clone(),
            operation,
            resource,
        }
    }

    /// The error for a request that timed out while no broker was reachable, if that is
    /// what happened.
    pub(crate) fn unreachable_error(&self, waited: Duration) -> Option<Error> {
        if !self.is_down() {
            return None;
        }
        let cause = self.failures().last.clone()?;
        Some(self.error(waited, cause))
    }

    fn error(&self, waited: Duration, cause: UnreachableCause) -> Error {
        Error::BrokersUnreachable {
            client: self.state.client,
            bootstrap: self.state.bootstrap.clone(),
            waited,
            cause: self.scrub_cause(cause),
        }
    }

    fn scrub_cause(&self, cause: UnreachableCause) -> UnreachableCause {
        match cause {
            UnreachableCause::TlsHandshakeFailed { broker, detail } => {
                UnreachableCause::TlsHandshakeFailed {
                    broker,
                    detail: self.scrub(&detail),
                }
            }
            UnreachableCause::AuthenticationFailed {
                broker,
                identity,
                detail,
            } => UnreachableCause::AuthenticationFailed {
                broker,
                identity,
                detail: self.scrub(&detail),
            },
            UnreachableCause::Other { broker, detail } => UnreachableCause::Other {
                broker,
                detail: self.scrub(&detail),
            },
            other => other,
        }
    }

    fn connection_failed(&self, mut cause: UnreachableCause) {
        if let UnreachableCause::AuthenticationFailed { identity, .. } = &mut cause {
            *identity = self.state.identity.as_str().into();
        }
        let mut failures = self.failures();
        if cause.is_incurable() && failures.incurable.is_none() {
            failures.incurable = Some(cause.clone());
        }
        tracing::debug!(
            client = self.state.client,
            cause = %self.scrub(&cause.to_string()),
            "connecting to a Kafka broker failed"
        );
        let incurable = cause.is_incurable();
        failures.last = Some(cause);
        if incurable && self.is_down() {
            self.state.incurable_outage.notify_one();
        }
        let last = failures.last.clone();
        if let Some(outage) = failures.outage.as_mut() {
            outage.failed_attempts += 1;
            if outage.announced {
                self.summarise(outage, last.as_ref());
            } else {
                self.announce(outage, last.as_ref());
            }
        }
    }

    fn all_brokers_down(&self) {
        let mut failures = self.failures();
        if failures.outage.is_some() {
            return;
        }
        let now = Instant::now();
        let mut outage = Outage {
            since: now,
            failed_attempts: 0,
            last_summary: now,
            announced: false,
        };
        self.state.down.store(true, Ordering::Release);
        if failures
            .last
            .as_ref()
            .is_some_and(UnreachableCause::is_incurable)
        {
            self.state.incurable_outage.notify_one();
        }
        if failures.last.is_some() {
            self.announce(&mut outage, failures.last.as_ref());
        }
        failures.outage = Some(outage);
    }

    /// Logs the start of an outage, once.
    fn announce(&self, outage: &mut Outage, last: Option<&UnreachableCause>) {
        outage.announced = true;
        outage.last_summary = Instant::now();
        if self.state.watching != Watching::Client {
            return;
        }
        let cause = last.map_or_else(|| "no cause reported".to_owned(), ToString::to_string);
        tracing::warn!(
            client = self.state.client,
            bootstrap = %self.state.bootstrap,
            "no Kafka broker reachable at `{}`: {}; retrying, with a summary every {} while it lasts",
            self.state.bootstrap,
            self.scrub(&cause),
            human(OUTAGE_SUMMARY_INTERVAL),
        );
    }

    /// Logs a line once per [`LOG_REPEAT_WINDOW`]; `key` identifies repeats.
    pub(crate) fn log_deduplicated(&self, level: tracing::Level, facility: &str, line: &str) {
        let line = self.scrub(line);
        let key = format!("{facility} {}", without_timing(&line));
        let repeats = {
            let mut lines = self.state.lines.lock().unwrap_or_else(|e| e.into_inner());
            match lines.admit(key, Instant::now()) {
                Some(repeats) => repeats,
                None => return,
            }
        };
        let level = if self.state.watching == Watching::Check {
            tracing::Level::DEBUG
        } else {
            level
        };
        let client = self.state.client;
        macro_rules! emit {
            ($macro:ident) => {
                tracing::$macro!(target: "librdkafka", client, facility, repeats, "{line}")
            };
        }
        match level {
            tracing::Level::ERROR => emit!(error),
            tracing::Level::WARN => emit!(warn),
            tracing::Level::INFO => emit!(info),
            tracing::Level::DEBUG => emit!(debug),
            _ => emit!(trace),
        }
    }
}

impl ClientContext for ClientWatch {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        let level = match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::Level::ERROR,
            RDKafkaLogLevel::Warning => tracing::Level::WARN,
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::Level::INFO,
            RDKafkaLogLevel::Debug => tracing::Level::DEBUG,
        };
        self.log_deduplicated(level, facility, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let Some(code) = error.rdkafka_error_code() else {
            self.log_deduplicated(tracing::Level::WARN, "ERROR", &format!("{error}: {reason}"));
            return;
        };
        if code == RDKafkaErrorCode::AllBrokersDown {
            self.all_brokers_down();
        } else if let Some(cause) = classify(code, reason) {
            self.connection_failed(cause);
        } else {
            self.log_deduplicated(tracing::Level::WARN, "ERROR", &format!("{error}: {reason}"));
        }
    }
}

/// The connection check's client is a [`BaseProducer`], which needs a producer context;
/// it never produces.
impl ProducerContext for ClientWatch {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// The dead-letter reader is a plain consumer; librdkafka's rebalance defaults serve it.
impl rdkafka::consumer::ConsumerContext for ClientWatch {}

/// The producer every part of the library publishes with.
pub(crate) type WatchedProducer = FutureProducer<ClientWatch>;

/// Remembers recent log lines to leave repeats out.
#[derive(Default)]
struct LogLines {
    /// Per line: when it was last logged, and how many repeats were left out since.
    seen: HashMap<String, (Instant, u64)>,
}

impl LogLines {
    /// `Some(repeats left out since it was last logged)` when the line is to be logged.
    fn admit(&mut self, key: String, now: Instant) -> Option<u64> {
        if let Some((logged_at, repeats)) = self.seen.get_mut(&key) {
            if now.duration_since(*logged_at) < LOG_REPEAT_WINDOW {
                *repeats += 1;
                return None;
            }
            let left_out = *repeats;
            *logged_at = now;
            *repeats = 0;
            return Some(left_out);
        }
        if self.seen.len() >= LOG_LINES_REMEMBERED {
            self.seen
                .retain(|_, (logged_at, _)| now.duration_since(*logged_at) < LOG_REPEAT_WINDOW);
            if self.seen.len() >= LOG_LINES_REMEMBERED {
                self.seen.clear();
            }
        }
        self.seen.insert(key, (now, 0));
        Some(0)
    }
}

/// Logs a warning when the configuration turns off a check of the broker's certificate:
/// host name verification, or (through a librdkafka property) certificate verification.
fn warn_if_unverified(config: &KafkaConfig, client: &'static str) {
    if !config.tls.verify_hostname {
        tracing::warn!(
            client,
            "TLS host name verification is off (SslEndpointIdentificationAlgorithm = None): \
             any certificate a trusted authority signed is accepted for any broker"
        );
    }
    let verification = config
        .properties
        .get("enable.ssl.certificate.verification")
        .map(|value| value.trim().to_ascii_lowercase());
    if matches!(verification.as_deref(), Some("false" | "0")) {
        tracing::warn!(
            client,
            "TLS certificate verification is off (enable.ssl.certificate.verification = \
             false): the client accepts any certificate, so anyone on the network path can \
             stand in for the broker"
        );
    }
}

/// Waits until a broker at the bootstrap address answers, at most the configured connect
/// timeout; `client` names the client being created in the error.
pub(crate) async fn check_brokers(config: &KafkaConfig, client: &'static str) -> Result<()> {
    let Some(bound) = config.connect_timeout else {
        return Ok(());
    };
    let watch = ClientWatch::new(config, client, Watching::Check);
    let probe: BaseProducer<ClientWatch> = config
        .client_config()?
        .create_with_context(watch.clone())
        .map_err(|e| client_error(client, e))?;
    let bootstrap = config.bootstrap_servers.clone();
    let started = Instant::now();
    // Validation keeps the bound within an hour; the clamp keeps the addition safe anyway.
    let deadline = started + bound.min(Duration::from_secs(3600));
    let outcome = tokio::task::spawn_blocking(move || {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // librdkafka connects to a bootstrap broker on its own as the client starts;
            // the cluster id arrives with the first metadata answer.
            if probe
                .client()
                .fetch_cluster_id(remaining.min(Duration::from_millis(100)))
                .is_some()
            {
                return Ok(());
            }
            // Serves the error events, which fill in the watch's causes.
            probe.poll(Duration::ZERO);
            if let Some(cause) = watch.failures().incurable.clone() {
                return Err(watch.error(started.elapsed(), cause));
            }
            if Instant::now() >= deadline {
                let cause = watch
                    .failures()
                    .last
                    .clone()
                    .unwrap_or_else(|| diagnose(&bootstrap));
                return Err(watch.error(started.elapsed(), cause));
            }
        }
    })
    .await;
    match outcome {
        Ok(result) => result,
        Err(join) => Err(Error::TaskFailed {
            task: format!("the connection check of the {client}"),
            reason: if join.is_cancelled() {
                "cancelled".to_owned()
            } else {
                "panicked".to_owned()
            },
        }),
    }
}

/// Why the first bootstrap server did not answer when librdkafka reported nothing: a plain
/// TCP connection tells a silent server from an absent one.
fn diagnose(bootstrap: &str) -> UnreachableCause {
    use std::net::{TcpStream, ToSocketAddrs};

    let first = bootstrap.split(',').next().unwrap_or(bootstrap).trim();
    let broker = first
        .split_once("://")
        .map_or(first, |(_, rest)| rest)
        .to_owned();
    let addresses = match broker.to_socket_addrs() {
        Ok(addresses) => addresses.collect::<Vec<_>>(),
        Err(_) => return UnreachableCause::NameNotResolved { broker },
    };
    let Some(address) = addresses.first() else {
        return UnreachableCause::NameNotResolved { broker };
    };
    match TcpStream::connect_timeout(address, TCP_PROBE_TIMEOUT) {
        Ok(_) => UnreachableCause::NoAnswer { broker },
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            UnreachableCause::ConnectionRefused { broker }
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            UnreachableCause::ConnectTimedOut { broker }
        }
        Err(e) => UnreachableCause::Other {
            broker,
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_reasons_are_classified_with_the_broker_address() {
        let cases = [
            (
                RDKafkaErrorCode::BrokerTransportFailure,
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)",
                UnreachableCause::ConnectionRefused { broker: "127.0.0.1:1".into() },
            ),
            (
                RDKafkaErrorCode::Resolve,
                "nosuchhost.invalid:9092/bootstrap: Failed to resolve 'nosuchhost.invalid:9092': Name or service not known (after 1ms in state CONNECT)",
                UnreachableCause::NameNotResolved { broker: "nosuchhost.invalid:9092".into() },
            ),
            (
                RDKafkaErrorCode::Authentication,
                "sasl_plaintext://127.0.0.1:60941/bootstrap: SASL PLAIN mechanism handshake failed: Broker: Request not valid in current SASL state (after 2ms in state AUTH_HANDSHAKE)",
                UnreachableCause::AuthenticationFailed {
                    broker: "127.0.0.1:60941".into(),
                    identity: Box::default(),
                    detail: "SASL PLAIN mechanism handshake failed: Broker: Request not valid in current SASL state".into(),
                },
            ),
            (
                RDKafkaErrorCode::BadMessage,
                "127.0.0.1:8080/bootstrap: Receive failed: Invalid response size 1213486160 (0..1000000000): increase receive.message.max.bytes",
                UnreachableCause::NotKafka { broker: "127.0.0.1:8080".into() },
            ),
            (
                RDKafkaErrorCode::BrokerTransportFailure,
                "ssl://k1:9093/1: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request) (after 1ms in state APIVERSION_QUERY)",
                UnreachableCause::ClosedAtFirstRequest { broker: "k1:9093".into() },
            ),
        ];
        let coordinator = classify(
            RDKafkaErrorCode::BrokerTransportFailure,
            "GroupCoordinator: 127.0.0.1:49043: Connect to ipv4#127.0.0.1:49043 failed: Connection refused (after 0ms in state CONNECT)",
        );
        assert_eq!(
            coordinator,
            Some(UnreachableCause::ConnectionRefused {
                broker: "127.0.0.1:49043".into()
            })
        );
        for (code, reason, expected) in cases {
            assert_eq!(classify(code, reason), Some(expected), "{reason}");
        }
        assert_eq!(
            classify(RDKafkaErrorCode::AllBrokersDown, "1/1 brokers are down"),
            None
        );
    }

    #[test]
    fn the_message_names_the_address_the_cause_and_what_to_set_for_the_default() {
        let cause = UnreachableCause::ConnectionRefused {
            broker: "localhost:9092".into(),
        };
        let shown =
            describe_unreachable("producer", "localhost:9092", Duration::from_secs(5), &cause);
        assert_eq!(
            shown,
            "the producer could not connect to a Kafka broker at `localhost:9092` (the default address: set \
             KAFKA_BOOTSTRAP_SERVERS or Kafka.BootstrapServers) after 5 s: connection refused \
             by localhost:9092: no broker is listening there"
        );
        assert!(!shown.contains('\n'));
        let elsewhere = describe_unreachable(
            "consumer",
            "kafka:9092",
            Duration::from_millis(1_500),
            &cause,
        );
        assert!(elsewhere.starts_with(
            "the consumer could not connect to a Kafka broker at `kafka:9092` after 1.5 s: "
        ));
    }

    #[test]
    fn a_repeated_log_line_is_admitted_once_per_window_and_counts_what_it_left_out() {
        let mut lines = LogLines::default();
        let start = Instant::now();
        assert_eq!(lines.admit("a".into(), start), Some(0));
        for i in 1..=5 {
            assert_eq!(
                lines.admit("a".into(), start + Duration::from_secs(i)),
                None
            );
        }
        assert_eq!(
            lines.admit("b".into(), start),
            Some(0),
            "another line is its own"
        );
        assert_eq!(
            lines.admit(
                "a".into(),
                start + LOG_REPEAT_WINDOW + Duration::from_secs(1)
            ),
            Some(5)
        );
    }

    #[test]
    fn remembered_log_lines_stay_bounded() {
        let mut lines = LogLines::default();
        let start = Instant::now();
        for i in 0..(LOG_LINES_REMEMBERED * 3) {
            assert_eq!(lines.admit(i.to_string(), start), Some(0));
            assert!(lines.seen.len() <= LOG_LINES_REMEMBERED);
        }
    }

    #[test]
    fn timings_in_librdkafka_lines_do_not_make_repeats_distinct() {
        assert_eq!(
            without_timing("Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT, 1 identical error(s) suppressed)"),
            "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human(Duration::from_millis(250)), "250 ms");
        assert_eq!(human(Duration::from_secs(5)), "5 s");
        assert_eq!(human(Duration::from_millis(1_500)), "1.5 s");
        assert_eq!(human(Duration::from_secs(125)), "2 min 5 s");
        assert_eq!(human(Duration::MAX), format!("{} min 15 s", u64::MAX / 60));
    }
}
