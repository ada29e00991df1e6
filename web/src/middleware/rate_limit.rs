//! Per-client-IP token buckets, one keyed `governor` limiter per service, checked by the
//! [`super::observe`] middleware. Over the limit: 429 `{"code":"rate_limited"}` with `Retry-After`, a
//! `streamgate_rate_limited_total{service}` increment and an audit entry (at most one per
//! client and service per `rate_limit.audit_interval_s`, so a flood cannot become a flood of
//! store writes). [`RateLimits::sweep`] on a timer drops quiet clients, bounding memory.

use std::{hash::Hash, net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use actix_web::{
    dev::ServiceRequest,
    http::header::{self, HeaderValue},
    HttpResponse,
};
use foldhash::fast::RandomState;
use governor::{
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    DefaultKeyedRateLimiter, Quota, RateLimiter,
};
use streamgate_actors::{
    audit::{action, outcome, AuditEvent, AuditLog},
    config::{BucketConfig, RateLimitConfig},
    monitor::{names, Metrics},
};

use crate::error::ApiError;

/// The route → service table: the first path segment after `/api/v1/`. Media sub-resources
/// that deliver video (`hls`, `dash`, `thumbnail.jpg`) are `streaming`, the rest `metadata`;
/// `/metrics` is `monitor`; everything else (`/health`, `/ready`, unknown paths) `gateway`.
const API_SERVICES: [(&str, &str); 9] = [
    ("upload", "upload"),
    ("uploads", "upload"),
    ("media", "metadata"),
    ("cache", "cache"),
    ("auth", "auth"),
    ("jobs", "worker"),
    ("transcode", "transcoder"),
    ("monitor", "monitor"),
    ("audit", "monitor"),
];

/// The service a request path belongs to (the `service` label and the bucket it draws from).
pub fn service_for(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return if path == "/metrics" {
            "monitor"
        } else {
            "gateway"
        };
    };
    let (first, rest) = first_segment(rest);
    let Some((_, service)) = API_SERVICES.iter().find(|(segment, _)| *segment == first) else {
        return "gateway";
    };
    if *service == "metadata" {
        let (_media_id, rest) = first_segment(rest);
        if matches!(first_segment(rest).0, "hls" | "dash" | "thumbnail.jpg") {
            return "streaming";
        }
    }
    service
}

/// `("a", "b/c")` for `"a/b/c"`: a byte scan, cheaper than `split` on every request.
fn first_segment(path: &str) -> (&str, &str) {
    match path.bytes().position(|byte| byte == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (path, ""),
    }
}

/// The client as rate limits (and audit entries of refusals) see it: the socket's peer, unless
/// that peer is a trusted proxy; then the rightmost `X-Forwarded-For` hop that is not one.
pub fn client_ip(req: &ServiceRequest, trusted_proxies: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // A hop we cannot parse was written by someone we do not trust: stop at the last good one.
        let Ok(address) = hop.parse::<IpAddr>() else {
            break;
        };
        client = address;
        if !trusted_proxies.contains(&address) {
            break;
        }
    }
    Some(client)
}

/// A keyed limiter hashing with foldhash: clients pick their addresses, so the hash stays
/// seeded per process, but it costs a fraction of the default SipHash per request.
type KeyedLimiter<K> =
    DefaultKeyedRateLimiter<K, NoOpMiddleware<<DefaultClock as Clock>::Instant>, RandomState>;

fn keyed<K: Hash + Eq + Clone>(quota: Quota) -> KeyedLimiter<K> {
    RateLimiter::dashmap_with_hasher(quota, RandomState::default())
}

struct ServiceLimiter {
    service: &'static str,
    limiter: KeyedLimiter<IpAddr>,
}

/// Every service's limiter plus what a refusal needs. Shared by all HTTP workers.
#[derive(Clone)]
pub struct RateLimits {
    inner: Arc<Inner>,
}

struct Inner {
    services: Vec<ServiceLimiter>,
    /// One audit entry per (client, service) per interval.
    audit_gate: KeyedLimiter<(IpAddr, &'static str)>,
    trusted_proxies: Vec<IpAddr>,
    metrics: Metrics,
    audit: AuditLog,
}

fn quota(bucket: BucketConfig) -> Quota {
    let refill = NonZeroU32::new(bucket.refill_per_second).unwrap_or(NonZeroU32::MIN);
    let capacity = NonZeroU32::new(bucket.capacity).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(refill).allow_burst(capacity)
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig, metrics: Metrics, audit: AuditLog) -> Self {
        let services = names::SERVICES
            .iter()
            .map(|service| {
                // `RateLimitConfig::validate` guarantees every service has a bucket.
                let bucket = config
                    .services
                    .get(*service)
                    .copied()
                    .unwrap_or(BucketConfig {
                        capacity: 1000,
                        refill_per_second: 100,
                    });
                ServiceLimiter {
                    service,
                    limiter: keyed(quota(bucket)),
                }
            })
            .collect();
        let audit_interval = Duration::from_secs(config.audit_interval_s.max(1));
        let audit_quota = Quota::with_period(audit_interval)
            .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN));
        Self {
            inner: Arc::new(Inner {
                services,
                audit_gate: keyed(audit_quota),
                trusted_proxies: config.trusted_proxies.clone(),
                metrics,
                audit,
            }),
        }
    }

    /// Takes one token from `client`'s bucket of `service`; `Err` holds how long until the
    /// next token.
    pub fn check(&self, service: &'static str, client: IpAddr) -> Result<(), Duration> {
        // Services are the `'static` names of one table: compare addresses before text.
        let Some(limiter) = self
            .inner
            .services
            .iter()
            .find(|l| std::ptr::eq(l.service, service))
            .or_else(|| self.inner.services.iter().find(|l| l.service == service))
        else {
            return Ok(());
        };
        // The limiter's own clock: a fresh `DefaultClock` probes the CPU's counters on
        // creation (~50 µs in a VM), which a flood of refusals would pay per request.
        limiter
            .limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(limiter.limiter.clock().now()))
    }

    pub fn trusted_proxies(&self) -> &[IpAddr] {
        &self.inner.trusted_proxies
    }

    /// The 429 for `client`, who must wait `wait` for `service`: counted, and audited and
    /// logged at most once per client and service per `rate_limit.audit_interval_s`.
    pub fn refuse(
        &self,
        req: &ServiceRequest,
        service: &'static str,
        client: IpAddr,
        wait: Duration,
    ) -> HttpResponse {
        let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
        self.inner
            .metrics
            .rate_limited
            .with_label_values(&[service])
            .inc();
        if self.inner.audit_gate.check_key(&(client, service)).is_ok() {
            let event = AuditEvent::ok(
                action::RATE_LIMIT_EXCEEDED,
                format!("ip:{client}"),
                Some(service.to_string()),
            )
            .with_outcome(outcome::DENIED, format!("{} {}", req.method(), req.path()));
            let audit = self.inner.audit.clone();
            actix_web::rt::spawn(async move { audit.record(event).await });
            // Logged as often as audited: once per client and service per interval.
            tracing::warn!(%client, service, retry_after, "client went over its rate limit");
        }
        tracing::debug!(%client, service, retry_after, "rate limited");
        let mut response = HttpResponse::TooManyRequests()
            .content_type("application/json")
            .body(ApiError::body(
                "rate_limited",
                &format!("too many {service} requests; retry after {retry_after} s"),
            ));
        if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }

    /// Drops the buckets of clients whose buckets have refilled (they would start full
    /// anyway), frees the memory, and publishes how many remain.
    pub fn sweep(&self) -> usize {
        let mut tracked = 0;
        for limiter in &self.inner.services {
            limiter.limiter.retain_recent();
            limiter.limiter.shrink_to_fit();
            tracked += limiter.limiter.len();
        }
        self.inner.audit_gate.retain_recent();
        self.inner.audit_gate.shrink_to_fit();
        self.inner
            .metrics
            .rate_limit_tracked_clients
            .set(i64::try_from(tracked).unwrap_or(i64::MAX));
        tracked
    }

    /// Client buckets held now, over every service.
    pub fn tracked_clients(&self) -> usize {
        self.inner.services.iter().map(|l| l.limiter.len()).sum()
    }

    /// Sweeps every `interval` until the actix system stops.
    pub async fn sweep_every(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_services() {
        for (path, service) in [
            ("/health", "gateway"),
            ("/metrics", "monitor"),
            ("/api/v1/upload", "upload"),
            ("/api/v1/uploads/abc", "upload"),
            ("/api/v1/media", "metadata"),
            ("/api/v1/media/abc", "metadata"),
            ("/api/v1/media/abc/hls/master.m3u8", "streaming"),
            ("/api/v1/media/abc/dash/manifest.mpd", "streaming"),
            ("/api/v1/media/abc/thumbnail.jpg", "streaming"),
            ("/api/v1/media/abc/gate", "metadata"),
            ("/api/v1/cache/k", "cache"),
            ("/api/v1/auth/login", "auth"),
            ("/api/v1/jobs/1/cancel", "worker"),
            ("/api/v1/transcode/profiles", "transcoder"),
            ("/api/v1/monitor/alerts", "monitor"),
            ("/api/v1/audit", "monitor"),
            ("/api/v1/nothing", "gateway"),
        ] {
            assert_eq!(service_for(path), service, "{path}");
        }
    }
}
