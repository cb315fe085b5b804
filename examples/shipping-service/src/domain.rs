//! The shipment's rules, independent of HTTP and of the database: which tracking numbers
//! and destinations are acceptable, and which status changes are allowed.
//!
//! A shipment moves `Created → InTransit → Delivered`, and may be `Cancelled` from
//! `Created` or `InTransit`; `Delivered` and `Cancelled` are final, and their details can
//! no longer change either.

use chrono::{DateTime, Utc};
use event_contracts::ShipmentStatus;
use serde::Serialize;
use service_kit::ApiError;
use uuid::Uuid;

/// The longest tracking number accepted.
pub const MAX_TRACKING_NUMBER_LEN: usize = 64;
/// The longest destination accepted, in characters.
pub const MAX_DESTINATION_LEN: usize = 200;

/// A shipment as the service stores and shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shipment {
    /// Its id.
    pub id: Uuid,
    /// The carrier's tracking number, unique among shipments.
    pub tracking_number: String,
    /// Where it goes, if known.
    pub destination: Option<String>,
    /// Where it is in its life.
    pub status: ShipmentStatus,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Who created it (the token's subject).
    pub created_by_user_id: String,
    /// 1 at creation, raised by one with each change; the events carry it.
    pub version: i64,
}

/// The current time at the precision the database keeps (microseconds), so a shipment
/// answered right after a write equals the one read back later.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// Whether a shipment in `from` may move to `to`.
pub fn can_change_status(from: ShipmentStatus, to: ShipmentStatus) -> bool {
    use ShipmentStatus::{Cancelled, Created, Delivered, InTransit};
    matches!(
        (from, to),
        (Created, InTransit) | (InTransit, Delivered) | (Created | InTransit, Cancelled)
    )
}

/// Whether a shipment in `status` can still change (details or status).
pub fn is_final(status: ShipmentStatus) -> bool {
    matches!(
        status,
        ShipmentStatus::Delivered | ShipmentStatus::Cancelled
    )
}

/// A tracking number as given, checked: 1 to 64 characters, ASCII letters, digits, `-`
/// and `_`, surrounding spaces ignored.
///
/// # Errors
///
/// A validation error naming `field`.
pub fn tracking_number(field: &str, given: &str) -> Result<String, ApiError> {
    let value = given.trim();
    if value.is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if value.len() > MAX_TRACKING_NUMBER_LEN {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_TRACKING_NUMBER_LEN} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::validation(
            field,
            "may contain only letters A-Z, digits, '-' and '_'",
        ));
    }
    Ok(value.to_owned())
}

/// A destination as given, checked: not blank, at most 200 characters, no control
/// characters; surrounding spaces ignored.
///
/// # Errors
///
/// A validation error naming `field`.
pub fn destination(field: &str, given: &str) -> Result<String, ApiError> {
    let value = given.trim();
    if value.is_empty() {
        return Err(ApiError::validation(field, "must not be blank"));
    }
    if value.chars().count() > MAX_DESTINATION_LEN {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_DESTINATION_LEN} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use ShipmentStatus::{Cancelled, Created, Delivered, InTransit};

    use super::*;

    #[test]
    fn only_the_domains_transitions_are_allowed() {
        let all = [Created, InTransit, Delivered, Cancelled];
        let allowed = [
            (Created, InTransit),
            (InTransit, Delivered),
            (Created, Cancelled),
            (InTransit, Cancelled),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    can_change_status(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        assert!(is_final(Delivered) && is_final(Cancelled));
        assert!(!is_final(Created) && !is_final(InTransit));
    }

    #[test]
    fn tracking_numbers_are_checked() {
        assert_eq!(
            tracking_number("trackingNumber", " TRACK-123_a ").ok(),
            Some("TRACK-123_a".to_owned())
        );
        for bad in [
            "".to_owned(),
            "   ".to_owned(),
            "TRACK 123".to_owned(),
            "TRÄCK".to_owned(),
            "A".repeat(65),
        ] {
            match tracking_number("trackingNumber", &bad) {
                Err(ApiError::Validation { field, .. }) => assert_eq!(field, "trackingNumber"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert!(tracking_number("trackingNumber", &"A".repeat(64)).is_ok());
    }

    #[test]
    fn destinations_are_checked() {
        assert_eq!(
            destination("destination", " Oslo ").ok(),
            Some("Oslo".to_owned())
        );
        assert!(destination("destination", "Tromsø").is_ok());
        for bad in ["", " ", "Os\nlo", &"x".repeat(201)] {
            assert!(destination("destination", bad).is_err(), "{bad:?}");
        }
    }
}
