//! Lifecycle webhooks: `WebhookActor` POSTs signed events (`upload.finished`, `media.ready`,
//! `media.failed`, `media.updated`, `media.deleted`) to the `[[webhooks]]` that subscribe.
//!
//! Invariant: an event is in the store (one delivery per subscribed webhook) before `Publish`
//! is answered, and the MetadataActor awaits that answer before it acknowledges the change, so
//! an acknowledged change is delivered at least once, across restarts. A delivery is retried
//! with doubling delays (`RETRY_BASE` up to `RETRY_MAX`) until a 2xx, or until it is
//! `GIVE_UP_AFTER` old; every attempt of one event carries the same event id.
//! The pending deliveries live in memory too (loaded at start), so the tick reads no store.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseActFuture,
    ResponseFuture, Supervised, WrapFuture,
};
use hmac::{digest::KeyInit, Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::{
    clock::SharedClock,
    config::WebhookConfig,
    error::{DomainError, ErrorKind},
    model::{Media, Rendition},
    store::{blocking, SharedRepo, StoreError},
    supervise::supervised_basics,
};

/// The event types a webhook may subscribe to.
pub const EVENTS: [&str; 6] = [
    "upload.finished",
    "media.playable",
    "media.ready",
    "media.failed",
    "media.updated",
    "media.deleted",
];
/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.
pub const SIGNATURE_HEADER: &str = "X-StreamGate-Signature";

const TICK: Duration = Duration::from_millis(500);
const RETRY_BASE: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(3600);
const GIVE_UP_AFTER: time::Duration = time::Duration::days(1);
/// Finished deliveries older than this are dropped from the log at start-up.
const LOG_RETENTION: time::Duration = time::Duration::days(7);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest error text kept per delivery.
const MAX_ERROR_CHARS: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DomainError for WebhookError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Store(_) => ErrorKind::Unavailable,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::Store(_) => "store_unavailable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Given up: no 2xx within a day, or its webhook is no longer configured.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// One event on its way to one webhook, as stored (and as the delivery log shows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// UUIDv7: store keys sort by creation.
    pub id: uuid::Uuid,
    /// The event's id, the same in every attempt and for every webhook: receivers de-duplicate
    /// by it.
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub url: String,
    /// The exact JSON body every attempt sends.
    pub body: String,
    pub state: DeliveryState,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_attempt_at: Option<OffsetDateTime>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// The media record as webhook receivers see it (no blob keys).
#[derive(Debug, Serialize)]
struct MediaView<'a> {
    id: String,
    title: &'a str,
    description: &'a str,
    tags: &'a [String],
    owner: Option<&'a str>,
    visibility: &'static str,
    state: &'static str,
    failure: Option<&'a str>,
    failure_code: Option<&'a str>,
    filename: Option<&'a str>,
    duration_s: Option<f64>,
    width: Option<u32>,
    height: Option<u32>,
    video_codec: Option<&'a str>,
    size: u64,
    sha256: &'a str,
    renditions: &'a [Rendition],
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl<'a> From<&'a Media> for MediaView<'a> {
    fn from(media: &'a Media) -> Self {
        Self {
            id: media.id.to_string(),
            title: &media.title,
            description: &media.description,
            tags: &media.tags,
            owner: media.owner.as_deref(),
            visibility: media.visibility.as_str(),
            state: media.state.as_str(),
            failure: media.failure.as_deref(),
            failure_code: media.failure_code.as_deref(),
            filename: media.filename.as_deref(),
            duration_s: media.duration_s,
            width: media.width,
            height: media.height,
            video_codec: media.video_codec.as_deref(),
            size: media.size,
            sha256: &media.sha256,
            renditions: &media.renditions,
            created_at: media.created_at,
            updated_at: media.updated_at,
        }
    }
}

#[derive(Serialize)]
struct EventBody<'a> {
    id: uuid::Uuid,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    media: MediaView<'a>,
}

/// `v1` of the signature: hex HMAC-SHA256, keyed by the webhook's secret, of `"{t}.{body}"`.
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length: the error case cannot happen.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    Mac::update(&mut mac, timestamp.to_string().as_bytes());
    Mac::update(&mut mac, b".");
    Mac::update(&mut mac, body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Delay before attempt `attempts + 1`: doubling from `RETRY_BASE`, at most `RETRY_MAX`.
fn backoff(attempts: u32) -> Duration {
    let doubled = RETRY_BASE.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    doubled.min(RETRY_MAX)
}

// ---------------------------------------------------------------------------------------------
// Messages

/// A lifecycle event of `media`; answered once its deliveries are stored.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), WebhookError>")]
pub struct Publish {
    pub event_type: &'static str,
    pub media: Media,
}

/// The delivery log, newest first.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<WebhookDelivery>, WebhookError>")]
pub struct ListDeliveries {
    pub limit: usize,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Attempted {
    delivery: WebhookDelivery,
}

// ---------------------------------------------------------------------------------------------
// Actor

/// What the WebhookActor works with.
#[derive(Clone)]
pub struct WebhookDeps {
    pub hooks: Vec<WebhookConfig>,
    /// `https://` targets trust the system's roots and `tls.extra_ca_file`.
    pub client: reqwest::Client,
    pub repo: SharedRepo,
    pub clock: SharedClock,
}

pub struct WebhookActor {
    deps: WebhookDeps,
    client: reqwest::Client,
    /// Pending deliveries by id (creation order).
    pending: BTreeMap<uuid::Uuid, WebhookDelivery>,
    in_flight: HashSet<uuid::Uuid>,
}

impl WebhookActor {
    pub fn new(deps: WebhookDeps) -> Self {
        let client = deps.client.clone();
        Self {
            deps,
            client,
            pending: BTreeMap::new(),
            in_flight: HashSet::new(),
        }
    }

    /// Starts every pending delivery that is due and not already on its way.
    fn send_due(&mut self, ctx: &mut Context<Self>) {
        let now = self.deps.clock.now_utc();
        let due: Vec<WebhookDelivery> = self
            .pending
            .values()
            .filter(|d| d.next_attempt_at <= now && !self.in_flight.contains(&d.id))
            .cloned()
            .collect();
        for delivery in due {
            self.in_flight.insert(delivery.id);
            let secret = self
                .deps
                .hooks
                .iter()
                .find(|hook| hook.url == delivery.url)
                .map(|hook| hook.secret.clone());
            let client = self.client.clone();
            let clock = self.deps.clock.clone();
            ctx.spawn(
                async move { attempt(client, clock, delivery, secret).await }
                    .into_actor(self)
                    .map(|delivery, _, ctx| ctx.notify(Attempted { delivery })),
            );
        }
    }
}

/// One POST; returns the delivery with the outcome recorded.
async fn attempt(
    client: reqwest::Client,
    clock: SharedClock,
    mut delivery: WebhookDelivery,
    secret: Option<String>,
) -> WebhookDelivery {
    let now = clock.now_utc();
    delivery.attempts += 1;
    delivery.last_attempt_at = Some(now);
    let Some(secret) = secret else {
        delivery.state = DeliveryState::Failed;
        delivery.last_error = Some("the webhook is no longer configured".into());
        return delivery;
    };
    let timestamp = now.unix_timestamp();
    let signature = format!(
        "t={timestamp},v1={}",
        sign(&secret, timestamp, &delivery.body)
    );
    let sent = client
        .post(&delivery.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(delivery.body.clone())
        .send()
        .await;
    let failure = match sent {
        Ok(response) if response.status().is_success() => {
            delivery.last_status = Some(response.status().as_u16());
            delivery.last_error = None;
            delivery.state = DeliveryState::Delivered;
            return delivery;
        }
        Ok(response) => {
            delivery.last_status = Some(response.status().as_u16());
            format!("answered {}", response.status())
        }
        Err(error) => {
            delivery.last_status = None;
            error.to_string()
        }
    };
    delivery.last_error = Some(failure.chars().take(MAX_ERROR_CHARS).collect());
    if now - delivery.created_at >= GIVE_UP_AFTER {
        delivery.state = DeliveryState::Failed;
    } else {
        delivery.next_attempt_at = now + backoff(delivery.attempts);
    }
    delivery
}

impl Actor for WebhookActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.deps.hooks.is_empty() {
            return;
        }
        // Blocking, once per start: the pending queue must be complete before the first tick.
        let now = self.deps.clock.now_utc();
        match load(self.deps.repo.as_ref(), now) {
            Ok(pending) => self.pending = pending,
            Err(error) => tracing::error!(%error, "webhook deliveries not loaded"),
        }
        ctx.run_interval(TICK, |actor, ctx| actor.send_due(ctx));
    }
}

/// The pending deliveries; drops finished ones past `LOG_RETENTION` on the way.
fn load(
    repo: &dyn crate::store::Repo,
    now: OffsetDateTime,
) -> Result<BTreeMap<uuid::Uuid, WebhookDelivery>, StoreError> {
    let mut pending = BTreeMap::new();
    for delivery in repo.list_deliveries(usize::MAX)? {
        match delivery.state {
            DeliveryState::Pending => {
                pending.insert(delivery.id, delivery);
            }
            _ if now - delivery.created_at > LOG_RETENTION => {
                repo.delete_delivery(&delivery.id)?;
            }
            _ => {}
        }
    }
    Ok(pending)
}

impl Supervised for WebhookActor {}

supervised_basics!(WebhookActor);

impl Handler<Publish> for WebhookActor {
    type Result = ResponseActFuture<Self, Result<(), WebhookError>>;

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> Self::Result {
        let now = self.deps.clock.now_utc();
        let event_id = uuid::Uuid::now_v7();
        let body = serde_json::to_string(&EventBody {
            id: event_id,
            kind: msg.event_type,
            created_at: now,
            media: MediaView::from(&msg.media),
        })
        .unwrap_or_default();
        let deliveries: Vec<WebhookDelivery> = self
            .deps
            .hooks
            .iter()
            .filter(|hook| hook.events.iter().any(|event| event == msg.event_type))
            .map(|hook| WebhookDelivery {
                id: uuid::Uuid::now_v7(),
                event_id,
                event_type: msg.event_type.to_string(),
                url: hook.url.clone(),
                body: body.clone(),
                state: DeliveryState::Pending,
                attempts: 0,
                created_at: now,
                next_attempt_at: now,
                last_attempt_at: None,
                last_status: None,
                last_error: None,
            })
            .collect();
        let repo = self.deps.repo.clone();
        Box::pin(
            async move {
                if !deliveries.is_empty() {
                    let stored = deliveries.clone();
                    blocking(&repo, move |repo| repo.put_deliveries(&stored)).await?;
                }
                Ok(deliveries)
            }
            .into_actor(self)
            .map(|stored: Result<_, WebhookError>, actor, ctx| {
                let stored = stored?;
                let queued = !stored.is_empty();
                for delivery in stored {
                    actor.pending.insert(delivery.id, delivery);
                }
                if queued {
                    actor.send_due(ctx);
                }
                Ok(())
            }),
        )
    }
}

impl Handler<Attempted> for WebhookActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Attempted, _: &mut Self::Context) -> Self::Result {
        let delivery = msg.delivery;
        let repo = self.deps.repo.clone();
        let stored = delivery.clone();
        Box::pin(
            async move { blocking(&repo, move |repo| repo.put_deliveries(&[stored])).await }
                .into_actor(self)
                .map(move |written, actor, _| {
                    if let Err(error) = written {
                        // Kept in memory: the next attempt retries (at least once holds).
                        tracing::error!(%error, delivery = %delivery.id, "delivery outcome not stored");
                    }
                    actor.in_flight.remove(&delivery.id);
                    if delivery.state == DeliveryState::Pending {
                        actor.pending.insert(delivery.id, delivery);
                    } else {
                        actor.pending.remove(&delivery.id);
                    }
                }),
        )
    }
}

impl Handler<ListDeliveries> for WebhookActor {
    type Result = ResponseFuture<Result<Vec<WebhookDelivery>, WebhookError>>;

    fn handle(&mut self, msg: ListDeliveries, _: &mut Self::Context) -> Self::Result {
        let repo = self.deps.repo.clone();
        let limit = msg.limit.clamp(1, 500);
        Box::pin(async move {
            let mut all = blocking(&repo, move |repo| repo.list_deliveries(usize::MAX)).await?;
            all.reverse();
            all.truncate(limit);
            Ok(all)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(40), RETRY_MAX);
    }

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: python3 hmac.new(b"secret", b"1.{}", sha256).
        assert_eq!(
            sign("secret", 1, "{}"),
            "1122767b193110cfec322b6f199b599edbf608ed087f2d27afb0b97d99523908"
        );
    }
}
