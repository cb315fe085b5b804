//! JWT bearer tokens (HS256): issuing them, and the [`AuthenticatedUser`] extractor that
//! lets a handler run only for a request carrying a valid one.
//!
//! A token is accepted only when its signature verifies with the configured secret, its
//! algorithm is HS256, it has not expired (5 s of clock skew allowed), and its `iss`
//! and `aud` are the configured ones; anything else, a missing header included, is a 401
//! with a JSON body, decided before the handler runs. Tokens are never logged.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::JwtSettings;
use crate::{ApiError, Error};

/// Clock skew tolerated on `exp`, between the issuing and the checking service.
const LEEWAY: Duration = Duration::from_secs(5);

/// The claims of the tokens issued and accepted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The user's email.
    pub email: String,
    /// The issuer.
    pub iss: String,
    /// The audience.
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

/// The keys and rules to issue and check tokens; cheap to clone.
#[derive(Clone)]
pub struct JwtKeys(Arc<Keys>);

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    expiry: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("JwtKeys")
            .field("issuer", &self.0.issuer)
            .field("audience", &self.0.audience)
            .field("expiry", &self.0.expiry)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Keys for `settings` (checked already by [`crate::ServiceSettings`]).
    pub fn new(settings: &JwtSettings) -> Self {
        let secret = settings.secret.expose().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY.as_secs();
        JwtKeys(Arc::new(Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            expiry: settings.expiry,
        }))
    }

    /// A token for `user_id` and `email`, valid for the configured expiry from now.
    ///
    /// # Errors
    ///
    /// [`Error::Token`] if the JWT library cannot sign it (not expected with HS256).
    pub fn issue(&self, user_id: &str, email: &str) -> Result<String, Error> {
        let now = seconds_since_epoch(SystemTime::now());
        self.issue_claims(&Claims {
            sub: user_id.to_owned(),
            email: email.to_owned(),
            iss: self.0.issuer.clone(),
            aud: self.0.audience.clone(),
            iat: now,
            exp: now + self.0.expiry.as_secs(),
        })
    }

    /// Signs `claims` as they are; for tests and tools that need a token with chosen
    /// claims (an expired one, another audience).
    ///
    /// # Errors
    ///
    /// [`Error::Token`] if the JWT library cannot sign it.
    pub fn issue_claims(&self, claims: &Claims) -> Result<String, Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.0.encoding)
            .map_err(|e| Error::Token(e.to_string()))
    }

    /// The claims of `token` if it is valid (see the module documentation).
    ///
    /// # Errors
    ///
    /// [`ApiError::Unauthorized`] saying why, in words safe to show the client.
    pub fn validate(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.0.decoding, &self.0.validation)
            .map(|data| data.claims)
            .map_err(|error| {
                let reason = match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                        "the token was not issued for this service"
                    }
                    ErrorKind::InvalidAlgorithm => "the token is not signed with HS256",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    ErrorKind::ImmatureSignature => "the token is not valid yet",
                    _ => "the token is malformed",
                };
                ApiError::Unauthorized(reason.to_owned())
            })
    }
}

fn seconds_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

/// The user a request's bearer token names. Taking it as a handler argument makes the
/// route require a valid token: without one the handler is not called and the answer is
/// a 401 JSON error.
///
/// Its `Debug` leaves the email out.
#[derive(Clone)]
pub struct AuthenticatedUser {
    /// The token's `sub`.
    pub user_id: String,
    /// The token's `email`.
    pub email: String,
}

impl std::fmt::Debug for AuthenticatedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticatedUser")
            .field("user_id", &self.user_id)
            .field("email", &"<redacted>")
            .finish()
    }
}

impl<S> FromRequestParts<S> for AuthenticatedUser
where
    JwtKeys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(
                "a bearer token is required (Authorization: Bearer <token>)".to_owned(),
            ));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "the Authorization header must be `Bearer <token>`".to_owned(),
                )
            })?;
        let claims = JwtKeys::from_ref(state).validate(token)?;
        Ok(AuthenticatedUser {
            user_id: claims.sub,
            email: claims.email,
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use pegasus_events::Secret;
    use tower::ServiceExt;

    use super::*;

    fn settings(secret: &str, issuer: &str, audience: &str) -> JwtSettings {
        JwtSettings {
            secret: Secret::new(secret),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            expiry: Duration::from_secs(600),
        }
    }

    fn keys() -> JwtKeys {
        JwtKeys::new(&settings(
            "0123456789abcdef0123456789abcdef",
            "identity-api",
            "pegasus-services",
        ))
    }

    async fn whoami(user: AuthenticatedUser) -> String {
        user.user_id
    }

    /// Calls a route that needs a token, with `authorization` as the header if given.
    async fn call(authorization: Option<String>) -> (StatusCode, serde_json::Value) {
        let app = Router::new().route("/me", get(whoami)).with_state(keys());
        let mut request = Request::get("/me");
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let response = app
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    fn claims(keys: &JwtKeys) -> Claims {
        let now = seconds_since_epoch(SystemTime::now());
        Claims {
            sub: "user-1".into(),
            email: "user@example.com".into(),
            iss: keys.0.issuer.clone(),
            aud: keys.0.audience.clone(),
            iat: now,
            exp: now + 600,
        }
    }

    async fn assert_refused(token: &str, expected: &str) {
        let (status, body) = call(Some(format!("Bearer {token}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"], "unauthorized");
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains(expected), "{message}");
    }

    #[tokio::test]
    async fn a_valid_token_names_the_user() {
        let token = keys().issue("user-1", "user@example.com").expect("issued");
        let app = Router::new().route("/me", get(whoami)).with_state(keys());
        let response = app
            .oneshot(
                Request::get("/me")
                    .header(AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&bytes[..], b"user-1");
    }

    #[tokio::test]
    async fn a_missing_or_malformed_header_is_401_json() {
        let (status, body) = call(None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "unauthorized");
        for header in ["Basic abc", "Bearer", "Bearer ", "token"] {
            let (status, body) = call(Some(header.to_owned())).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}");
            assert_eq!(body["error"], "unauthorized", "{header}");
        }
        assert_refused("not.a.jwt", "malformed").await;
        assert_refused("garbage", "malformed").await;
    }

    #[tokio::test]
    async fn an_expired_token_is_refused() {
        let keys = keys();
        let mut expired = claims(&keys);
        expired.iat -= 7200;
        expired.exp -= 3600;
        assert_refused(&keys.issue_claims(&expired).expect("signed"), "expired").await;
    }

    #[tokio::test]
    async fn another_issuer_or_audience_is_refused() {
        let keys = keys();
        let mut other = claims(&keys);
        other.iss = "someone-else".into();
        assert_refused(
            &keys.issue_claims(&other).expect("signed"),
            "not issued for",
        )
        .await;
        let mut other = claims(&keys);
        other.aud = "another-api".into();
        assert_refused(
            &keys.issue_claims(&other).expect("signed"),
            "not issued for",
        )
        .await;
    }

    #[tokio::test]
    async fn a_forged_signature_is_refused() {
        // Same claims, signed with another secret.
        let forger = JwtKeys::new(&settings(
            "ffffffffffffffffffffffffffffffff",
            "identity-api",
            "pegasus-services",
        ));
        let token = forger.issue("user-1", "user@example.com").expect("signed");
        assert_refused(&token, "signature").await;
        // A valid token whose payload was swapped for another user's.
        let genuine = keys().issue("user-1", "user@example.com").expect("signed");
        let other = keys().issue("admin", "admin@example.com").expect("signed");
        let parts: Vec<&str> = genuine.split('.').collect();
        let other_parts: Vec<&str> = other.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
        assert_refused(&tampered, "signature").await;
    }

    #[test]
    fn debug_output_shows_no_secret_and_no_email() {
        let shown = format!("{:?}", keys());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        let user = AuthenticatedUser {
            user_id: "user-1".into(),
            email: "user@example.com".into(),
        };
        assert!(!format!("{user:?}").contains("example.com"));
    }
}
