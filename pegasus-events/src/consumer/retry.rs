//! How often, and how far apart, a failing record is tried before it is dead-lettered.

use std::time::Duration;

/// How a handler's failures are retried.
///
/// A record is tried at most [`max_attempts`](RetryPolicy::max_attempts) times; between
/// attempts the worker waits `initial_backoff * multiplier^(attempt - 1)`, capped at
/// `max_backoff`, with up to `jitter` of it taken off at random so that consumers that
/// failed together do not retry together. While a record waits, the later records of its
/// partition wait too: per-key order is kept. A
/// [permanent](super::HandlerError::permanent) failure or a panic is not retried.
///
/// The defaults follow the design's `MaxRetries = 3`: three attempts, 100 ms then 200 ms
/// apart (less up to 20 % jitter), at most 10 s between attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included: 3. At least 1.
    pub max_attempts: u32,
    /// Wait before the second attempt: 100 ms.
    pub initial_backoff: Duration,
    /// Factor between consecutive waits: 2.0. At least 1.0.
    pub multiplier: f64,
    /// Longest wait between attempts: 10 s.
    pub max_backoff: Duration,
    /// Fraction of each wait that may be taken off at random, from 0.0 (none) to 1.0
    /// ("full jitter"): 0.2.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(10),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// One attempt: every failure goes to the dead-letter topic at once.
    pub fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Retries until the handler succeeds (or fails permanently): the partition waits
    /// for as long as it takes. For handlers whose failures are always transient.
    pub fn forever() -> Self {
        RetryPolicy {
            max_attempts: u32::MAX,
            ..RetryPolicy::default()
        }
    }

    /// This policy with `max_attempts` attempts in all.
    pub fn with_max_attempts(self, max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..self
        }
    }

    /// This policy with waits from `initial` growing by `multiplier` up to `max`.
    pub fn with_backoff(self, initial: Duration, multiplier: f64, max: Duration) -> Self {
        RetryPolicy {
            initial_backoff: initial,
            multiplier,
            max_backoff: max,
            ..self
        }
    }

    /// This policy with `jitter` (0.0 to 1.0) of each wait taken off at random.
    pub fn with_jitter(self, jitter: f64) -> Self {
        RetryPolicy { jitter, ..self }
    }

    /// Whether a record that failed its `attempt`-th attempt may be tried again.
    pub(crate) fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The wait after the `attempt`-th failed attempt (from 1), without jitter.
    pub(crate) fn nominal_backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let seconds = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = seconds.min(self.max_backoff.as_secs_f64());
        // `capped` is finite and non-negative once `validate` passed.
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_backoff)
    }

    /// The wait after the `attempt`-th failed attempt, with jitter applied.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let nominal = self.nominal_backoff(attempt);
        let cut = self.jitter.clamp(0.0, 1.0) * fastrand::f64();
        // Not `mul_f64`: near `Duration::MAX` the float rounds past what a Duration holds
        // and it panics; the nominal wait is the right answer there.
        Duration::try_from_secs_f64(nominal.as_secs_f64() * (1.0 - cut)).unwrap_or(nominal)
    }

    /// Checks the policy; `field` names it in the error (e.g. `consumer.retry`).
    pub(crate) fn validate(&self, field: &str) -> crate::Result<()> {
        let fail = |what: &str, reason: &str| {
            Err(crate::Error::Config {
                field: format!("{field}.{what}"),
                reason: reason.to_owned(),
            })
        };
        if self.max_attempts == 0 {
            return fail("max_attempts", "must be at least 1");
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return fail("multiplier", "must be a finite number of at least 1.0");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return fail("jitter", "must be between 0.0 and 1.0");
        }
        if self.initial_backoff > self.max_backoff {
            return fail("initial_backoff", "must not exceed max_backoff");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_the_multiplier_and_stops_at_the_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.nominal_backoff(1), Duration::from_millis(100));
        assert_eq!(policy.nominal_backoff(2), Duration::from_millis(200));
        assert_eq!(policy.nominal_backoff(8), Duration::from_millis(10_000));
        assert_eq!(policy.nominal_backoff(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_only_ever_shortens_the_wait_and_by_at_most_its_fraction() {
        let policy = RetryPolicy::default().with_jitter(0.5);
        for attempt in 1..10 {
            let nominal = policy.nominal_backoff(attempt);
            for _ in 0..100 {
                let wait = policy.backoff(attempt);
                assert!(wait <= nominal && wait >= nominal.mul_f64(0.5), "{wait:?}");
            }
        }
    }

    #[test]
    fn default_policy_gives_three_attempts_like_the_design() {
        let policy = RetryPolicy::default();
        assert!(policy.allows_another(2));
        assert!(!policy.allows_another(3));
        assert!(!RetryPolicy::no_retry().allows_another(1));
        assert!(RetryPolicy::forever().allows_another(1_000_000));
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let error = RetryPolicy::default()
            .with_max_attempts(0)
            .validate("consumer.retry")
            .unwrap_err();
        assert!(
            error.to_string().contains("consumer.retry.max_attempts"),
            "{error}"
        );
        let error = RetryPolicy::default()
            .with_jitter(1.5)
            .validate("retry")
            .unwrap_err();
        assert!(error.to_string().contains("retry.jitter"), "{error}");
        let error = RetryPolicy::default()
            .with_backoff(Duration::from_secs(1), f64::NAN, Duration::from_secs(2))
            .validate("retry")
            .unwrap_err();
        assert!(error.to_string().contains("retry.multiplier"), "{error}");
    }
}
