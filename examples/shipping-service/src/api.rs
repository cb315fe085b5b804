//! The HTTP API under `/api/shipments`. Every route needs a valid bearer token (401
//! otherwise); a change needs its user in the local user cache and active (403
//! otherwise); every error is a JSON body ([`ApiError`]).
//!
//! A change answers once its row and its event are committed together; the event's
//! publication by the outbox relay follows (`eventPublished` names the topic it goes to).
//! Each event carries the request's trace (`traceparent`), its trace id as correlation id
//! and the shipment id as subject.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use event_contracts::{topics, ShipmentCreatedEvent, ShipmentStatus};
use pegasus_events::PublishMetadata;
use serde::{Deserialize, Serialize};

use service_kit::json::body_limit;
use service_kit::logging::{trace_requests, RequestTrace};
use service_kit::{method_not_allowed, no_route, ApiError, ApiJson, AuthenticatedUser, JwtKeys};
use uuid::Uuid;

use crate::domain::{self, Shipment};
use crate::store::{ShipmentChanges, ShippingDb, StoreError};

/// The largest `pageSize` of the list.
pub const MAX_PAGE_SIZE: i64 = 100;
/// The `pageSize` when none is given.
pub const DEFAULT_PAGE_SIZE: i64 = 20;
/// The largest `page`, so that an offset can never overflow.
const MAX_PAGE: i64 = 1_000_000;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The shipping database.
    pub db: ShippingDb,
    /// The keys tokens are checked with.
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
        .route("/api/shipments", get(list_shipments).post(create_shipment))
        .route(
            "/api/shipments/{id}",
            get(get_shipment).put(update_shipment),
        )
        .route("/api/shipments/{id}/status", put(change_status))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(body_limit())
        .layer(axum::middleware::from_fn(trace_requests))
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::UnknownUser => ApiError::Forbidden(
                "your user is not known to the shipping service (Identity's user events \
                 have not reached it)"
                    .to_owned(),
            ),
            StoreError::UserDeactivated => {
                ApiError::Forbidden("your user is deactivated".to_owned())
            }
            StoreError::NotFound => ApiError::NotFound("no shipment has this id".to_owned()),
            error @ (StoreError::DuplicateTrackingNumber
            | StoreError::IllegalTransition { .. }
            | StoreError::Final(_)) => ApiError::Conflict(error.to_string()),
            StoreError::Database(error) => ApiError::database(error),
            error => ApiError::internal(error),
        }
    }
}

/// The body of `POST /api/shipments`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateShipmentRequest {
    tracking_number: String,
    #[serde(default)]
    destination: Option<String>,
}

/// The body of `PUT /api/shipments/{id}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateShipmentRequest {
    #[serde(default)]
    tracking_number: Option<String>,
    #[serde(default)]
    destination: Option<String>,
}

/// The body of `PUT /api/shipments/{id}/status`.
#[derive(Debug, Deserialize)]
struct ChangeStatusRequest {
    status: String,
}

/// The user a shipment was created by, as the design's answer shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatedBy {
    user_id: String,
    email: String,
}

/// The answer to a change: the shipment as it is now and the topic of its event.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Changed {
    shipment: Shipment,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_by: Option<CreatedBy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_status: Option<ShipmentStatus>,
    event_published: &'static str,
}

/// A page of the list.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    items: Vec<Shipment>,
    page: i64,
    page_size: i64,
    total: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageQuery {
    page: Option<String>,
    page_size: Option<String>,
}

/// The event's metadata: this request's trace continued, the trace id as correlation id,
/// the shipment as subject.
fn metadata(trace: &RequestTrace, shipment_id: Uuid) -> PublishMetadata {
    let mut metadata = PublishMetadata::new()
        .subject(shipment_id.to_string())
        .correlation_id(trace.trace_id.clone());
    metadata.traceparent = Some(trace.traceparent());
    metadata
}

fn shipment_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::validation("id", "must be a shipment id"))?;
    Uuid::parse_str(&id).map_err(|_| ApiError::validation("id", "must be a UUID"))
}

async fn create_shipment(
    State(state): State<AppState>,
    trace: RequestTrace,
    user: AuthenticatedUser,
    ApiJson(request): ApiJson<CreateShipmentRequest>,
) -> Result<(StatusCode, Json<Changed>), ApiError> {
    let tracking_number = domain::tracking_number("trackingNumber", &request.tracking_number)?;
    let destination = request
        .destination
        .as_deref()
        .map(|given| domain::destination("destination", given))
        .transpose()?;
    let event = ShipmentCreatedEvent {
        shipment_id: Uuid::now_v7(),
        tracking_number,
        status: ShipmentStatus::Created,
        created_at: domain::now(),
        created_by_user_id: user.user_id.clone(),
        created_by_email: user.email.clone(),
        destination,
    };
    let shipment = state
        .db
        .create_shipment(&event, &metadata(&trace, event.shipment_id))
        .await?;
    tracing::info!(shipment_id = %shipment.id, tracking = %shipment.tracking_number, "shipment created");
    Ok((
        StatusCode::CREATED,
        Json(Changed {
            shipment,
            created_by: Some(CreatedBy {
                user_id: user.user_id,
                email: user.email,
            }),
            previous_status: None,
            event_published: topics::SHIPMENT_CREATED,
        }),
    ))
}

async fn update_shipment(
    State(state): State<AppState>,
    trace: RequestTrace,
    user: AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    ApiJson(request): ApiJson<UpdateShipmentRequest>,
) -> Result<Json<Changed>, ApiError> {
    let id = shipment_id(id)?;
    let changes = ShipmentChanges {
        tracking_number: request
            .tracking_number
            .as_deref()
            .map(|given| domain::tracking_number("trackingNumber", given))
            .transpose()?,
        destination: request
            .destination
            .as_deref()
            .map(|given| domain::destination("destination", given))
            .transpose()?,
    };
    if changes.tracking_number.is_none() && changes.destination.is_none() {
        return Err(ApiError::BadRequest(
            "give trackingNumber, destination or both".to_owned(),
        ));
    }
    let shipment = state
        .db
        .update_shipment(id, &changes, &user.user_id, &metadata(&trace, id))
        .await?;
    tracing::info!(shipment_id = %id, version = shipment.version, "shipment updated");
    Ok(Json(Changed {
        shipment,
        created_by: None,
        previous_status: None,
        event_published: topics::SHIPMENT_UPDATED,
    }))
}

async fn change_status(
    State(state): State<AppState>,
    trace: RequestTrace,
    user: AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    ApiJson(request): ApiJson<ChangeStatusRequest>,
) -> Result<Json<Changed>, ApiError> {
    let id = shipment_id(id)?;
    let to = ShipmentStatus::parse(request.status.trim()).ok_or_else(|| {
        ApiError::validation(
            "status",
            "must be one of Created, InTransit, Delivered, Cancelled",
        )
    })?;
    let (shipment, from) = state
        .db
        .change_status(id, to, &user.user_id, &metadata(&trace, id))
        .await
        .inspect_err(|error| {
            if let StoreError::IllegalTransition { from, to } = error {
                tracing::info!(shipment_id = %id, %from, %to, "status change refused");
            }
        })?;
    tracing::info!(shipment_id = %id, %from, %to, "shipment status changed");
    Ok(Json(Changed {
        shipment,
        created_by: None,
        previous_status: Some(from),
        event_published: topics::SHIPMENT_STATUS_CHANGED,
    }))
}

async fn get_shipment(
    State(state): State<AppState>,
    _user: AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Shipment>, ApiError> {
    let id = shipment_id(id)?;
    state
        .db
        .shipment(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no shipment has this id".to_owned()))
}

async fn list_shipments(
    State(state): State<AppState>,
    _user: AuthenticatedUser,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::BadRequest("the query string is malformed".to_owned()))?;
    let page = paging_number("page", query.page.as_deref(), 1, MAX_PAGE)?;
    let page_size = paging_number(
        "pageSize",
        query.page_size.as_deref(),
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let (items, total) = state
        .db
        .shipments((page - 1) * page_size, page_size)
        .await?;
    Ok(Json(Page {
        items,
        page,
        page_size,
        total,
    }))
}

/// A paging parameter: `default` when absent, else a whole number from 1 to `max`.
fn paging_number(
    field: &str,
    given: Option<&str>,
    default: i64,
    max: i64,
) -> Result<i64, ApiError> {
    let Some(given) = given else {
        return Ok(default);
    };
    match given.trim().parse::<i64>() {
        Ok(number) if (1..=max).contains(&number) => Ok(number),
        _ => Err(ApiError::validation(
            field,
            format!("must be a whole number from 1 to {max}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_numbers_are_bounded() {
        assert_eq!(paging_number("page", None, 1, 10).ok(), Some(1));
        assert_eq!(paging_number("page", Some("3"), 1, 10).ok(), Some(3));
        for bad in ["0", "-1", "11", "x", "", "1.5", "99999999999999999999"] {
            match paging_number("page", Some(bad), 1, 10) {
                Err(ApiError::Validation { field, .. }) => assert_eq!(field, "page"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
