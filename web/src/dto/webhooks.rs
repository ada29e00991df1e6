//! The webhook delivery log as admins read it.

use serde::Serialize;
use streamgate_actors::webhooks::WebhookDelivery;

use super::rfc3339;

#[derive(Serialize)]
pub struct WebhookDeliveryDto {
    pub id: String,
    /// The same for every attempt and webhook of one event.
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub url: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub state: &'static str,
    pub attempts: u32,
    pub created_at: String,
    /// When a pending delivery is tried next.
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

impl From<&WebhookDelivery> for WebhookDeliveryDto {
    fn from(delivery: &WebhookDelivery) -> Self {
        let pending = delivery.state == streamgate_actors::webhooks::DeliveryState::Pending;
        Self {
            id: delivery.id.to_string(),
            event_id: delivery.event_id.to_string(),
            event_type: delivery.event_type.clone(),
            url: delivery.url.clone(),
            state: delivery.state.as_str(),
            attempts: delivery.attempts,
            created_at: rfc3339(delivery.created_at),
            next_attempt_at: pending.then(|| rfc3339(delivery.next_attempt_at)),
            last_attempt_at: delivery.last_attempt_at.map(rfc3339),
            last_status: delivery.last_status,
            last_error: delivery.last_error.clone(),
        }
    }
}
