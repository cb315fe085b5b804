//! Confirmations to users: when Shipping reports that a user created a shipment, Identity
//! tells the user through a [`Notifier`]. The default, [`LogNotifier`], writes the
//! confirmation to the service's log and reaches no outside network; a real service would
//! implement the trait with its mail or push provider.
//!
//! A confirmation is sent at least once per recorded activity: the notifier is called in
//! the transaction that records the activity, before it commits, so a failed notifier
//! rolls the entry back and the event is retried; a commit that fails after a successful
//! notifier (rare: the database went away in between) sends it again on the retry.

use std::future::Future;

use uuid::Uuid;

/// A confirmation that a shipment was created, addressed to its user.
#[derive(Clone, PartialEq, Eq)]
pub struct ShipmentConfirmation {
    /// The user's id.
    pub user_id: String,
    /// Where to send it: the user's email as Identity holds it (not the event's copy).
    pub email: String,
    /// The user's name, for the greeting.
    pub name: String,
    /// The shipment's id.
    pub shipment_id: Uuid,
    /// Its tracking number.
    pub tracking_number: String,
}

impl std::fmt::Debug for ShipmentConfirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipmentConfirmation")
            .field("user_id", &self.user_id)
            .field("email", &"<redacted>")
            .field("name", &self.name)
            .field("shipment_id", &self.shipment_id)
            .field("tracking_number", &self.tracking_number)
            .finish()
    }
}

/// Why a confirmation could not be sent; the event is retried.
#[derive(Debug, thiserror::Error)]
#[error("the confirmation could not be sent: {0}")]
pub struct NotifyError(pub String);

/// Sends confirmations to users.
pub trait Notifier: Send + Sync + 'static {
    /// Sends `confirmation`; an error rolls back the activity entry and the event is
    /// retried (see the module documentation).
    fn shipment_created(
        &self,
        confirmation: &ShipmentConfirmation,
    ) -> impl Future<Output = Result<(), NotifyError>> + Send;
}

/// The default notifier: writes each confirmation to the log, at INFO, without the email
/// (an address is personal data and stays out of logs).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogNotifier;

impl Notifier for LogNotifier {
    async fn shipment_created(
        &self,
        confirmation: &ShipmentConfirmation,
    ) -> Result<(), NotifyError> {
        tracing::info!(
            user_id = %confirmation.user_id,
            shipment_id = %confirmation.shipment_id,
            "Sent shipment confirmation to user {}: {}",
            confirmation.user_id,
            confirmation.tracking_number
        );
        Ok(())
    }
}
