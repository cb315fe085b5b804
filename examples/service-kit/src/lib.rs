//! What the example HTTP services (Shipping, Identity) share, so each service's own code is
//! its domain and nothing else. Everything here is built on public crates and on
//! pegasus-events' public API.
//!
//! Guarantees a service gets by using these pieces:
//!
//! - **A bad setting stops the start** with an [`Error`] naming the setting as the user
//!   wrote it (`Jwt:Secret`, `HTTP_PORT`); a secret's value is never part of a message.
//! - **Every error answer is JSON** (`{"error": "...", "message": "..."}`, plus `field` for
//!   validation): a missing, malformed, expired or forged token is a 401, a malformed body
//!   a 400 naming what was wrong, an oversized body a 413, and nothing a client sends can
//!   cause a 500 or a panic ([`ApiError`], [`ApiJson`], [`AuthenticatedUser`]).
//! - **Readiness means ready**: `/health/ready` answers 200 only while every registered
//!   check passes, and 503 with each check's result otherwise ([`Readiness`]).
//! - **Shutdown is bounded**: on SIGTERM or Ctrl-C the server stops accepting, finishes the
//!   requests in flight, and the caller drains its relay and consumers within a bound
//!   ([`shutdown`]).
//! - **Workers wired once**: the topics created before the outbox relay and the consumer
//!   start, both restarted after a failure, reported to readiness and drained within a
//!   bound; a service names its topics, its relay and its consumer ([`workers`]).

pub mod acls;
mod api_error;
pub mod auth;
pub mod config;
mod error;
pub mod health;
pub mod json;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod workers;

pub use api_error::{method_not_allowed, no_route, ApiError};
pub use auth::{AuthenticatedUser, JwtKeys};
pub use config::{JwtSettings, ServiceDefaults, ServiceSettings, TopicSwitch};
pub use error::Error;
pub use health::Readiness;
pub use json::ApiJson;
