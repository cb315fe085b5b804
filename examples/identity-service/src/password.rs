//! Password hashing: Argon2id (RFC 9106) with a random 16-byte salt per password and the
//! `argon2` crate's default cost (19 MiB, 2 passes, 1 lane, OWASP's recommended minimum),
//! stored as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) so the
//! parameters travel with the hash and can be raised later without breaking old ones.
//!
//! Hashing costs tens of milliseconds of CPU on purpose; both functions run it on tokio's
//! blocking pool (`spawn_blocking`), so a burst of sign-ins never stalls the threads that
//! serve other requests. Neither a password nor a hash ever reaches an error message.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Why hashing or checking could not be done (not: the password was wrong).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// The Argon2 implementation refused (not expected with the default parameters).
    #[error("password hashing failed: {0}")]
    Hashing(argon2::password_hash::Error),
    /// A stored hash is not a PHC string this service can read (edited by hand?).
    #[error("a stored password hash is unreadable")]
    CorruptHash,
    /// The blocking task did not complete (it panicked, or the runtime is shutting down).
    #[error("the password hashing task did not complete")]
    Task(#[from] tokio::task::JoinError),
}

/// Hashes `password` with a new random salt, on the blocking pool; returns the PHC string.
///
/// # Errors
///
/// [`PasswordError`] when Argon2 refuses or the task does not complete.
pub async fn hash(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(PasswordError::Hashing)
    })
    .await?
}

/// Whether `password` matches the PHC string `stored`, on the blocking pool. The
/// comparison is constant-time (the `argon2` crate's).
///
/// # Errors
///
/// [`PasswordError::CorruptHash`] when `stored` cannot be read, or the task failed; a
/// wrong password is `Ok(false)`.
pub async fn verify(password: String, stored: String) -> Result<bool, PasswordError> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&stored).map_err(|_| PasswordError::CorruptHash)?;
        match Argon2::default().verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(other) => Err(PasswordError::Hashing(other)),
        }
    })
    .await?
}

/// A PHC string of a password nobody has, to verify against when a sign-in names an
/// unknown email, so that answer takes as long as a wrong password's (no user
/// enumeration by timing). Computed once.
pub(crate) async fn decoy_hash() -> Result<String, PasswordError> {
    static DECOY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DECOY
        .get_or_try_init(|| hash(uuid::Uuid::new_v4().to_string()))
        .await
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_is_argon2id_salted_and_verifies_only_its_password() {
        let first = hash("correct horse battery".to_owned())
            .await
            .expect("hashed");
        let second = hash("correct horse battery".to_owned())
            .await
            .expect("hashed");
        assert!(first.starts_with("$argon2id$v=19$"), "{first}");
        assert!(!first.contains("correct horse"));
        assert_ne!(first, second, "each hash has its own salt");
        assert!(verify("correct horse battery".to_owned(), first.clone())
            .await
            .expect("verified"));
        assert!(!verify("correct horse battery!".to_owned(), first)
            .await
            .expect("verified"));
        assert!(matches!(
            verify("x".to_owned(), "not a hash".to_owned()).await,
            Err(PasswordError::CorruptHash)
        ));
    }
}
