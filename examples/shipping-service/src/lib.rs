//! The design's Shipping service over HTTP, built only on pegasus-events' public API.
//!
//! What it guarantees:
//!
//! - **A shipment and its event are saved together.** `POST /api/shipments`, `PUT
//!   /api/shipments/{id}` and `PUT /api/shipments/{id}/status` write the shipment and
//!   enqueue its `ShipmentCreatedEvent`, `ShipmentUpdatedEvent` or
//!   `ShipmentStatusChangedEvent` in the outbox in one transaction; the outbox relay
//!   publishes them to `shipping.shipment.*`, in order per shipment.
//! - **Only known, active users act.** Every route needs a valid JWT (401 otherwise); a
//!   change needs its user in the local copy of Identity's users and active (403
//!   otherwise). That copy is fed by `identity.user.created|updated|deactivated` through
//!   the inbox: each event is applied once, an older one never overwrites a newer one,
//!   and a deactivated user stays deactivated. With
//!   `SHIPPING_USER_EVENTS_TOPIC=identity-events` the copy is fed by Identity's general
//!   topic instead, one handler per event type on it.
//! - **Optionally, every shipment event is on `shipping-events` too**
//!   (`SHIPPING_GENERAL_TOPIC=shipping-events`): the copy is enqueued in the same
//!   transaction, with the same key and payload (see [`service`]).
//! - **Only the domain's status changes happen**: `Created → InTransit → Delivered`,
//!   `Created | InTransit → Cancelled`; anything else is a 409.
//!
//! [`service::run`] starts everything (HTTP, relay, consumer) and stops it on a
//! cancellation token; [`api::router`] is the HTTP API alone, for tests and for a process
//! that hosts several services. SQLite by default, PostgreSQL when `DATABASE_URL` is
//! `postgres://...`.

pub mod api;
pub mod domain;
pub mod service;
pub mod store;

pub use api::{router, AppState};
pub use service::{
    run, run_on, run_on_created_topics, run_process, ShippingSettings, StartError, DEFAULTS,
};
pub use store::ShippingDb;
