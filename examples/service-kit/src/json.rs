//! JSON request bodies whose every failure is a JSON error: a body that is not JSON, has
//! the wrong shape, or misses a field is a 400 naming what was wrong; a body over the
//! limit a 413; a body that does not say it is JSON a 415. axum's own `Json` answers those
//! in plain text.
//!
//! The limit is axum's [`DefaultBodyLimit`], which
//! [`body_limit`] sets for a router: the body is never read past it.

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// The request body limit of the example services: 64 KiB, far above any of their
/// requests, far below what could hurt them.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// The layer that limits request bodies to [`BODY_LIMIT_BYTES`]; add it to a router with
/// `.layer(body_limit())`.
pub fn body_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(BODY_LIMIT_BYTES)
}

/// A JSON request body of type `T`, read with serde; as a handler argument, it must come
/// last. Its failures are [`ApiError`]s (see the module documentation).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection: BytesRejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge {
                        limit: BODY_LIMIT_BYTES,
                    }
                } else {
                    ApiError::BadRequest("the request body could not be read".to_owned())
                }
            })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Reads `bytes` as a `T`; the error names the field (its JSON path) where one is known.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                // serde names a missing field in its message ("missing field `x`"), at the
                // path of the object that lacks it; other data errors are at the field.
                let message = inner.to_string();
                let message = strip_position(&message);
                if path == "." {
                    match missing_field(message) {
                        Some(field) => ApiError::validation(field, "is required"),
                        None => {
                            ApiError::BadRequest(format!("the body has the wrong shape: {message}"))
                        }
                    }
                } else {
                    ApiError::validation(path, message)
                }
            }
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                ApiError::BadRequest(format!(
                    "the body is not valid JSON (line {}, column {})",
                    inner.line(),
                    inner.column()
                ))
            }
            serde_json::error::Category::Eof => {
                ApiError::BadRequest("the body is empty or ends early: expected JSON".to_owned())
            }
        }
    })?;
    // Trailing characters after the value are a malformed body too.
    deserializer.end().map_err(|_| {
        ApiError::BadRequest("the body has characters after its JSON value".to_owned())
    })?;
    Ok(value)
}

/// serde_json ends its messages with " at line L column C"; the field is what matters.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    }
}

/// `x` from serde's "missing field `x`".
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::post;
    use axum::Router;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)] // read by serde only
    struct CreateShipment {
        tracking_number: String,
        weight_grams: u32,
    }

    async fn create(ApiJson(body): ApiJson<CreateShipment>) -> String {
        body.tracking_number
    }

    async fn call(content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, serde_json::Value) {
        let app = Router::new().route("/", post(create)).layer(body_limit());
        let mut request = Request::post("/");
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let response = app
            .oneshot(request.body(Body::from(body)).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, json)
    }

    async fn json(body: &str) -> (StatusCode, serde_json::Value) {
        call(Some("application/json"), body.as_bytes().to_vec()).await
    }

    #[tokio::test]
    async fn a_good_body_reaches_the_handler() {
        let (status, body) = json(r#"{"trackingNumber":"TRACK123","weightGrams":500}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "TRACK123");
    }

    #[tokio::test]
    async fn a_missing_field_is_a_400_naming_it() {
        let (status, body) = json(r#"{"weightGrams":500}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "validation_failed");
        assert_eq!(body["field"], "trackingNumber");
    }

    #[tokio::test]
    async fn a_field_of_the_wrong_type_is_a_400_naming_it() {
        let (status, body) = json(r#"{"trackingNumber":"T","weightGrams":"heavy"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["field"], "weightGrams");
        let (_, body) = json(r#"{"trackingNumber":"T","weightGrams":-1}"#).await;
        assert_eq!(body["field"], "weightGrams");
    }

    #[tokio::test]
    async fn malformed_json_is_a_400_json_error() {
        for text in [
            "{",
            "",
            "not json",
            r#"{"trackingNumber":"T","weightGrams":1} x"#,
            "[]",
        ] {
            let (status, body) = json(text).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
            assert_eq!(body["error"], "bad_request", "{text}: {body}");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_a_413_json_error() {
        let big = format!(
            r#"{{"trackingNumber":"{}","weightGrams":1}}"#,
            "A".repeat(BODY_LIMIT_BYTES)
        );
        let (status, body) = json(&big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"], "payload_too_large");
    }

    #[tokio::test]
    async fn a_body_that_is_not_declared_json_is_a_415() {
        let (status, body) = call(None, b"{}".to_vec()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["error"], "unsupported_media_type");
        let (status, _) = call(Some("text/plain"), b"{}".to_vec()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, _) = call(
            Some("application/json; charset=utf-8"),
            br#"{"trackingNumber":"T","weightGrams":1}"#.to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
}
