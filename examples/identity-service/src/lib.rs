//! The design's Identity service over HTTP, built only on pegasus-events' public API.
//!
//! What it guarantees:
//!
//! - **A user and its event are saved together.** `POST /api/users`, `PUT
//!   /api/users/{id}` and `POST /api/users/{id}/deactivate` write the user and enqueue its
//!   `UserCreatedEvent`, `UserUpdatedEvent` or `UserDeactivatedEvent` in the outbox in one
//!   transaction; the outbox relay publishes them to `identity.user.*` (and, when
//!   configured, to `identity-events`), in order per user.
//! - **No secret leaves the service.** Passwords are kept only as Argon2id hashes; no
//!   answer, log line or event carries a password, a hash or the JWT secret, and the
//!   events' email is `#[event(sensitive)]`.
//! - **Signing in reveals nothing.** `POST /api/auth/token` answers one 401, with one
//!   message, for an unknown email, a wrong password and a deactivated user.
//! - **A user acts only on themself.** Every `/api/users/{id}` route needs a valid JWT
//!   (401 otherwise) whose subject is `{id}` (403 otherwise).
//! - **Each shipment is logged once.** `shipping.shipment.created` is consumed as group
//!   `identity-api-shipmentcreated-consumer` (`{client id}-shipmentcreated-consumer`, the
//!   client id being `Kafka:ClientId` or `KAFKA_CLIENT_ID`, `identity-api` by default)
//!   through the inbox: the activity entry and the event's mark commit together, so a
//!   redelivered event adds nothing; the user gets a confirmation through a
//!   [`notify::Notifier`].
//!
//! [`service::run`] starts everything (HTTP, relay, consumer) and stops it on a
//! cancellation token; [`api::router`] is the HTTP API alone, for tests and for a process
//! that hosts several services. SQLite by default, PostgreSQL when `DATABASE_URL` is
//! `postgres://...`.

pub mod api;
pub mod domain;
pub mod general_topic;
pub mod notify;
pub mod password;
pub mod service;
pub mod store;

pub use api::{router, AppState};
pub use service::{
    run, run_on, run_process, run_with, run_with_created_topics, IdentitySettings, StartError,
    DEFAULTS,
};
pub use store::IdentityDb;
