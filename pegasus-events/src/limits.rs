//! Durations at their limits: every setting may be as large as its type allows.
//!
//! `Instant + Duration` and `DateTime - TimeDelta` panic on overflow; the runtime never
//! uses them on a value a user set. A deadline past what `Instant` can hold means "wait
//! forever", and a retention longer than the time since 1970 means "nothing is that old".

use std::time::{Duration, Instant};

/// The instant `after` from now, or `None` when it lies past what `Instant` can hold:
/// no deadline, wait for as long as it takes.
pub(crate) fn deadline(after: Duration) -> Option<Instant> {
    Instant::now().checked_add(after)
}

/// The time `age` before now, or `None` when that is before 1970-01-01: no row this
/// library wrote, and no event it read, is that old.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn utc_ago(age: Duration) -> Option<chrono::DateTime<chrono::Utc>> {
    let now = chrono::Utc::now();
    let since_epoch = now
        .signed_duration_since(chrono::DateTime::UNIX_EPOCH)
        .to_std()
        .ok()?;
    if age > since_epoch {
        return None;
    }
    now.checked_sub_signed(chrono::TimeDelta::from_std(age).ok()?)
}

/// Whole milliseconds, saturating, for log fields.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_past_what_instant_holds_is_no_deadline() {
        assert_eq!(deadline(Duration::MAX), None);
        let soon = deadline(Duration::from_millis(50)).unwrap();
        assert!(soon.saturating_duration_since(Instant::now()) <= Duration::from_millis(50));
    }

    #[test]
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    fn an_age_before_1970_is_older_than_anything() {
        assert_eq!(utc_ago(Duration::MAX), None);
        assert_eq!(
            utc_ago(Duration::from_secs(u64::from(u32::MAX) * 100)),
            None
        );
        let day = utc_ago(Duration::from_secs(86_400)).unwrap();
        let expected = chrono::Utc::now() - chrono::TimeDelta::days(1);
        assert!((expected - day).num_seconds().abs() < 5);
        assert!(utc_ago(Duration::ZERO).is_some());
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }
}
