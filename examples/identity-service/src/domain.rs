//! The user's rules, independent of HTTP and of the database: which emails, names and
//! passwords are acceptable, and what a user and an activity log entry look like.
//!
//! Emails are compared without regard to case: they are stored lower-cased, so
//! `Ada@Example.com` and `ada@example.com` are one user. A password is never stored,
//! shown or logged; only its Argon2id hash is kept ([`crate::password`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use service_kit::ApiError;
use uuid::Uuid;

/// The longest email accepted, in bytes (RFC 5321's limit on a forward path).
pub const MAX_EMAIL_LEN: usize = 254;
/// The longest name accepted, in characters.
pub const MAX_NAME_LEN: usize = 100;
/// The shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest password accepted, in bytes: hashing cost grows with the length, so an
/// unbounded password would let one request occupy a hashing thread for long.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A user as the service shows it: never the password hash.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Its id, the `sub` of its tokens and the key of its events.
    pub id: String,
    /// The email it signs in with, lower-cased.
    pub email: String,
    /// The display name.
    pub name: String,
    /// False once deactivated, for good.
    pub active: bool,
    /// 1 at registration, raised by one with each change; the events carry it.
    pub version: i64,
    /// When the user registered.
    pub created_at: DateTime<Utc>,
    /// When the user last changed.
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The email is personal data (sensitive in the events too): never in a log line.
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &"<redacted>")
            .field("name", &self.name)
            .field("active", &self.active)
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// One entry of a user's activity log: something another service reported the user did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// The id (`ce_id`) of the event it was recorded from: one entry per event.
    pub event_id: Uuid,
    /// What happened, the event's type (`ShipmentCreatedEvent`).
    pub kind: String,
    /// The shipment concerned.
    pub shipment_id: Uuid,
    /// Its tracking number.
    pub tracking_number: String,
    /// When it happened, by the reporting service's clock.
    pub occurred_at: DateTime<Utc>,
    /// When Identity recorded it.
    pub recorded_at: DateTime<Utc>,
}

/// The current time at the precision the database keeps (microseconds), so a user
/// answered right after a write equals the one read back later.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// An email as given, checked and lower-cased: one `@` with a non-empty local part before
/// it and a domain of dot-separated labels after it, no spaces or control characters, at
/// most [`MAX_EMAIL_LEN`] bytes; surrounding spaces ignored.
///
/// A shape check only: whether the address receives mail is not known here.
///
/// # Errors
///
/// A validation error naming `field`.
pub fn email(field: &str, given: &str) -> Result<String, ApiError> {
    let value = given.trim();
    if value.is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if value.len() > MAX_EMAIL_LEN {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_EMAIL_LEN} bytes"),
        ));
    }
    let shaped = value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
            && !local
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'))
    });
    if !shaped {
        return Err(ApiError::validation(
            field,
            "must be an email address such as ada@example.com",
        ));
    }
    Ok(value.to_lowercase())
}

/// A name as given, checked: not blank, at most [`MAX_NAME_LEN`] characters, no control
/// characters; surrounding spaces ignored.
///
/// # Errors
///
/// A validation error naming `field`.
pub fn name(field: &str, given: &str) -> Result<String, ApiError> {
    let value = given.trim();
    if value.is_empty() {
        return Err(ApiError::validation(field, "must not be blank"));
    }
    if value.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
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

/// Checks a new password: at least [`MIN_PASSWORD_CHARS`] characters and at most
/// [`MAX_PASSWORD_BYTES`] bytes, taken exactly as given (spaces count). The message never
/// quotes it.
///
/// # Errors
///
/// A validation error naming `field`.
pub fn new_password(field: &str, given: &str) -> Result<(), ApiError> {
    if given.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    if given.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::validation(
            field,
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        match result {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(
            email("email", "  Ada.Lovelace+x@Example.COM ").ok(),
            Some("ada.lovelace+x@example.com".to_owned())
        );
        assert!(email("email", "jose@correo.españa.es").is_ok());
        let long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "",
            " ",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a@b@example.com",
            "ada lovelace@example.com",
            "ada@exa mple.com",
            "ada@example..com",
            "ada@-example.com",
            "<ada>@example.com",
            long.as_str(),
        ] {
            assert_eq!(field_of(email("email", bad)), "email", "{bad:?}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(name("name", " Ada ").ok(), Some("Ada".to_owned()));
        assert!(name("name", &"é".repeat(MAX_NAME_LEN)).is_ok());
        for bad in ["", "  ", "A\nB", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert_eq!(field_of(name("name", bad)), "name", "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_bounded_both_ways() {
        assert!(new_password("password", "correct horse").is_ok());
        assert!(new_password("password", &"p".repeat(MAX_PASSWORD_BYTES)).is_ok());
        // Twelve characters, whatever their byte length.
        assert!(new_password("password", &"ü".repeat(12)).is_ok());
        for bad in [
            String::new(),
            "short".to_owned(),
            "p".repeat(11),
            "p".repeat(MAX_PASSWORD_BYTES + 1),
            // 600 characters but 1,200 bytes: the byte bound counts.
            "ü".repeat(600),
        ] {
            let error = new_password("password", &bad).expect_err("refused");
            assert!(!error.to_string().contains(&bad) || bad.is_empty());
            assert_eq!(field_of(Err::<(), _>(error)), "password");
        }
    }
}
