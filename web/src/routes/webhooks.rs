//! `GET /api/v1/webhooks/deliveries`: the lifecycle webhook delivery log, newest first, for
//! admins.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use streamgate_actors::{webhooks::ListDeliveries, Actors};

use crate::{dto::webhooks::WebhookDeliveryDto, error::ApiError, extract::Admin};

const DEFAULT_PAGE: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
    limit: Option<usize>,
}

pub(super) async fn deliveries(
    _admin: Admin,
    query: web::Query<DeliveriesQuery>,
    actors: web::Data<Actors>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, 500);
    let deliveries = actors.webhooks.send(ListDeliveries { limit }).await??;
    let items: Vec<WebhookDeliveryDto> = deliveries.iter().map(WebhookDeliveryDto::from).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}
