//! Every error answer of a service, as a status and a JSON body: what went wrong in words
//! the client can act on, and nothing of the server's internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An error answer: a status and `{"error": "<code>", "message": "...", "field": "..."}`
/// (`field` only for validation errors).
///
/// [`ApiError::Internal`] logs its cause at ERROR and answers only "internal error": a
/// database message or a stack of causes stays in the server's log.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: a field of the request is missing or not acceptable.
    Validation {
        /// The field as the client wrote it (`trackingNumber`, `page`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// 400: the body or query could not be read at all (not JSON, wrong shape).
    BadRequest(String),
    /// 401: no valid bearer token.
    Unauthorized(String),
    /// 403: authenticated, but not allowed to do this.
    Forbidden(String),
    /// 404: no such resource.
    NotFound(String),
    /// 405: the path is served, but not with this method.
    MethodNotAllowed,
    /// 409: the request conflicts with the resource's state.
    Conflict(String),
    /// 413: the body is larger than the service accepts.
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 503: a dependency is down; try again later.
    Unavailable(String),
    /// 500: a failure of the server; the cause goes to the log, not to the client.
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A 500 whose cause is logged, never shown.
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(cause.into())
    }

    /// A failed database call: [`ApiError::Unavailable`] (503, `Retry-After: 1`) when the
    /// database is out of reach for now (connection refused or lost, the pool closed or
    /// exhausted, PostgreSQL shutting down or out of connections, SQLite busy or locked),
    /// [`ApiError::Internal`] otherwise. The client is told which, never the cause.
    pub fn database(error: sqlx::Error) -> Self {
        if database_unavailable(&error) {
            tracing::warn!(error = %pegasus_events::error::Report::new(&error), "database unavailable");
            ApiError::Unavailable("the database is not reachable; try again shortly".to_owned())
        } else {
            ApiError::internal(error)
        }
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code in the body's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation_failed",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

/// The answer for a path no route serves (`Router::fallback`): a 404 with a JSON body like
/// every other error (axum's own has an empty body).
pub async fn no_route() -> ApiError {
    ApiError::NotFound("no route serves this path".to_owned())
}

/// The answer for a served path with a method it does not take
/// (`Router::method_not_allowed_fallback`): a 405 with a JSON body; axum adds the `Allow`
/// header.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Validation { field, message } => write!(f, "{field}: {message}"),
            ApiError::BadRequest(message)
            | ApiError::Unauthorized(message)
            | ApiError::Forbidden(message)
            | ApiError::NotFound(message)
            | ApiError::Conflict(message)
            | ApiError::Unavailable(message) => f.write_str(message),
            ApiError::PayloadTooLarge { limit } => {
                write!(f, "the request body is larger than {limit} bytes")
            }
            ApiError::UnsupportedMediaType => {
                f.write_str("the request body must be JSON (Content-Type: application/json)")
            }
            ApiError::MethodNotAllowed => f.write_str(
                "this path does not accept this method (the Allow header lists those it does)",
            ),
            ApiError::Internal(_) => f.write_str("internal error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            // The request's span (trace id, method, path) is on this line.
            tracing::error!(error = %pegasus_events::error::Report::new(&**cause), "request failed");
        }
        let message = self.to_string();
        let field = match &self {
            ApiError::Validation { field, .. } => Some(field.as_str()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.code(),
            message: &message,
            field,
        };
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, ApiError::Unavailable(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Whether `error` says the database cannot be reached now, rather than that a statement
/// failed: worth a retry by the client.
fn database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            // PostgreSQL: class 08 (connection exception), 57P01-57P03 (shutting down,
            // cannot connect now), 53300 (too many connections). SQLite: result codes 5
            // (SQLITE_BUSY) and 6 (SQLITE_LOCKED), extended codes keep them in the low
            // byte.
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
                || code
                    .parse::<i32>()
                    .is_ok_and(|sqlite| matches!(sqlite & 0xff, 5 | 6))
        }),
        _ => false,
    }
}
