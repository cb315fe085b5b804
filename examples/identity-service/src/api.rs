//! The HTTP API: `/api/users` and `/api/auth/token`. Registering and signing in are open;
//! every other route needs a valid bearer token (401 otherwise) naming the user it acts
//! on (403 otherwise: a user reads and changes only themself); every error is a JSON body
//! ([`ApiError`]).
//!
//! Signing in answers the same 401, with the same message, for an unknown email, a wrong
//! password and a deactivated user, and verifies a password hash in each case (a decoy
//! one for an unknown email), so neither the answer nor its timing tells which emails are
//! registered. A change answers once its row and its event are committed together; the
//! event's publication by the outbox relay follows (`eventPublished` names its topic).
//! Each event carries the request's trace (`traceparent`), its trace id as correlation id
//! and the user id as subject. Passwords and hashes never appear in an answer or a log.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use event_contracts::topics;
use pegasus_events::PublishMetadata;
use serde::{Deserialize, Serialize};

use service_kit::json::body_limit;
use service_kit::logging::{trace_requests, RequestTrace};
use service_kit::{method_not_allowed, no_route, ApiError, ApiJson, AuthenticatedUser, JwtKeys};
use uuid::Uuid;

use crate::domain::{self, Activity, User};
use crate::password;
use crate::store::{IdentityDb, NewUser, StoreError, UserChanges};

/// The one answer to a refused sign-in, whatever the reason.
pub const SIGN_IN_REFUSED: &str = "the email or password is wrong";

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The identity database.
    pub db: IdentityDb,
    /// The keys tokens are issued and checked with.
    pub jwt: JwtKeys,
}

impl FromRef<AppState> for JwtKeys {
    fn from_ref(state: &AppState) -> Self {
        state.jwt.clone()
    }
}

/// The API routes with their request tracing and body limit, a JSON 404 for any other
/// path and a JSON 405 for a method a path does not take (health and metrics are added by
/// [`crate::service`]).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/users", post(register))
        .route("/api/auth/token", post(issue_token))
        .route("/api/users/{id}", get(get_user).put(update_user))
        .route("/api/users/{id}/deactivate", post(deactivate_user))
        .route("/api/users/{id}/activity", get(activity))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(body_limit())
        .layer(axum::middleware::from_fn(trace_requests))
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::NotFound("no user has this id".to_owned()),
            error @ (StoreError::DuplicateEmail | StoreError::Deactivated) => {
                ApiError::Conflict(error.to_string())
            }
            StoreError::Database(error) => ApiError::database(error),
            error => ApiError::internal(error),
        }
    }
}

/// The body of `POST /api/users`.
#[derive(Deserialize)]
struct RegisterRequest {
    email: String,
    name: String,
    password: String,
}

/// The body of `POST /api/auth/token`.
#[derive(Deserialize)]
struct TokenRequest {
    email: String,
    password: String,
}

/// The body of `PUT /api/users/{id}`.
#[derive(Deserialize)]
struct UpdateUserRequest {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// The answer to a change: the user as it is now and the topic of its event.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Changed {
    user: User,
    event_published: &'static str,
}

/// The answer to a sign-in.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Token {
    access_token: String,
    token_type: &'static str,
    user_id: String,
}

/// A user's activity log.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ActivityLog {
    user_id: String,
    items: Vec<Activity>,
}

/// The event's metadata: this request's trace continued, the trace id as correlation id,
/// the user as subject.
fn metadata(trace: &RequestTrace, user_id: &str) -> PublishMetadata {
    let mut metadata = PublishMetadata::new()
        .subject(user_id)
        .correlation_id(trace.trace_id.clone());
    metadata.traceparent = Some(trace.traceparent());
    metadata
}

/// The path's user id, if it names the caller; a user acts only on themself.
fn own_user_id(
    path: Result<Path<String>, PathRejection>,
    caller: &AuthenticatedUser,
) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::validation("id", "must be a user id"))?;
    if id != caller.user_id {
        return Err(ApiError::Forbidden(
            "a user may read and change only their own user".to_owned(),
        ));
    }
    Ok(id)
}

async fn register(
    State(state): State<AppState>,
    trace: RequestTrace,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<Changed>), ApiError> {
    let email = domain::email("email", &request.email)?;
    let name = domain::name("name", &request.name)?;
    domain::new_password("password", &request.password)?;
    let password_hash = password::hash(request.password)
        .await
        .map_err(ApiError::internal)?;
    let new_user = NewUser {
        id: Uuid::now_v7().to_string(),
        email,
        name,
        password_hash,
        created_at: domain::now(),
    };
    let user = state
        .db
        .register(&new_user, &metadata(&trace, &new_user.id))
        .await?;
    tracing::info!(user_id = %user.id, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(Changed {
            user,
            event_published: topics::USER_CREATED,
        }),
    ))
}

async fn issue_token(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<Json<Token>, ApiError> {
    let email = request.email.trim().to_lowercase();
    if email.is_empty() {
        return Err(ApiError::validation("email", "must not be empty"));
    }
    if request.password.is_empty() {
        return Err(ApiError::validation("password", "must not be empty"));
    }
    // No registered password is longer; refusing here keeps hashing time bounded.
    if request.password.len() > domain::MAX_PASSWORD_BYTES {
        return Err(ApiError::Unauthorized(SIGN_IN_REFUSED.to_owned()));
    }
    let credentials = state.db.credentials(&email).await?;
    // A hash is verified whatever was found, so the three refusals take alike long.
    let stored = match &credentials {
        Some(found) => found.password_hash.clone(),
        None => password::decoy_hash().await.map_err(ApiError::internal)?,
    };
    let matches = password::verify(request.password, stored)
        .await
        .map_err(ApiError::internal)?;
    match credentials {
        Some(found) if matches && found.active => {
            let access_token = state
                .jwt
                .issue(&found.user_id, &found.email)
                .map_err(ApiError::internal)?;
            tracing::info!(user_id = %found.user_id, "token issued");
            Ok(Json(Token {
                access_token,
                token_type: "Bearer",
                user_id: found.user_id,
            }))
        }
        refused => {
            // Which of the three it was stays in the log, not in the answer.
            let reason = match &refused {
                None => "unknown email",
                Some(found) if !found.active => "deactivated user",
                Some(_) => "wrong password",
            };
            let user_id = refused.as_ref().map(|found| found.user_id.as_str());
            tracing::info!(user_id, reason, "sign-in refused");
            Err(ApiError::Unauthorized(SIGN_IN_REFUSED.to_owned()))
        }
    }
}

async fn get_user(
    State(state): State<AppState>,
    caller: AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<User>, ApiError> {
    let id = own_user_id(id, &caller)?;
    state
        .db
        .user(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no user has this id".to_owned()))
}

async fn update_user(
    State(state): State<AppState>,
    trace: RequestTrace,
    caller: AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    ApiJson(request): ApiJson<UpdateUserRequest>,
) -> Result<Json<Changed>, ApiError> {
    let id = own_user_id(id, &caller)?;
    let changes = UserChanges {
        email: request
            .email
            .as_deref()
            .map(|given| domain::email("email", given))
            .transpose()?,
        name: request
            .name
            .as_deref()
            .map(|given| domain::name("name", given))
            .transpose()?,
    };
    if changes.email.is_none() && changes.name.is_none() {
        return Err(ApiError::BadRequest("give email, name or both".to_owned()));
    }
    let user = state
        .db
        .update_user(&id, &changes, &metadata(&trace, &id))
        .await?;
    tracing::info!(user_id = %id, version = user.version, "user updated");
    Ok(Json(Changed {
        user,
        event_published: topics::USER_UPDATED,
    }))
}

async fn deactivate_user(
    State(state): State<AppState>,
    trace: RequestTrace,
    caller: AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Changed>, ApiError> {
    let id = own_user_id(id, &caller)?;
    let user = state
        .db
        .deactivate_user(&id, &metadata(&trace, &id))
        .await?;
    tracing::info!(user_id = %id, version = user.version, "user deactivated");
    Ok(Json(Changed {
        user,
        event_published: topics::USER_DEACTIVATED,
    }))
}

async fn activity(
    State(state): State<AppState>,
    caller: AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ActivityLog>, ApiError> {
    let id = own_user_id(id, &caller)?;
    let items = state.db.activity(&id).await?;
    Ok(Json(ActivityLog { user_id: id, items }))
}
