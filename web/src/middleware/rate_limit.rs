//! Per-client-IP rate limits, one governor limiter per service ([`super::buckets`]), checked by the
//! [`super::observe`] middleware. Over the limit: 429 `{"code":"rate_limited"}` with `Retry-After`, a
//! `streamgate_rate_limited_total{service}` increment and an audit entry (at most one per
//! client and service per `rate_limit.audit_interval_s`, so a flood cannot become a flood of
//! store writes). [`RateLimits::sweep`] on a timer drops quiet clients, and each table's cap
//! (`rate_limit.max_tracked_clients`) bounds memory in between.
//!
//! A client is its IPv4 address, or its IPv6 address cut to `rate_limit.ipv6_prefix_len` bits
//! (one host usually holds a whole /64, so whole addresses would be free new buckets); an
//! IPv4-mapped IPv6 address is its IPv4 address.

use std::{
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

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
    monitor::{metric_names as names, Metrics},
};

use super::buckets::ServiceLimiter;
use crate::error::ApiError;

/// A service of [`names::SERVICES`] by its position there: the `service` label and the bucket
/// table without comparing strings per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceId(u8);

impl ServiceId {
    pub const GATEWAY: Self = Self::named("gateway");
    pub const UPLOAD: Self = Self::named("upload");
    pub const STREAMING: Self = Self::named("streaming");
    pub const METADATA: Self = Self::named("metadata");
    pub const CACHE: Self = Self::named("cache");
    pub const AUTH: Self = Self::named("auth");
    pub const WORKER: Self = Self::named("worker");
    pub const TRANSCODER: Self = Self::named("transcoder");
    pub const MONITOR: Self = Self::named("monitor");

    /// Resolved at compile time: a name missing from [`names::SERVICES`] fails the build.
    const fn named(name: &str) -> Self {
        let mut index = 0;
        while index < names::SERVICES.len() {
            if const_str_eq(names::SERVICES[index], name) {
                return Self(index as u8);
            }
            index += 1;
        }
        panic!("not in names::SERVICES")
    }

    pub fn label(self) -> &'static str {
        names::SERVICES
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("gateway")
    }

    fn index(self) -> usize {
        usize::from(self.0)
    }
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut index = 0;
    while index < a.len() {
        if a[index] != b[index] {
            return false;
        }
        index += 1;
    }
    true
}

/// The service of a request: the `service` label and the bucket it draws from. Rate limits run
/// before the router, so the route is looked up in the route table by the path the router will
/// match (actix's percent-decoded `match_info`, not the raw `req.path()`):
/// `/api/v1/%61uth/login`, which the router hands to the login handler, is `auth` like
/// `/api/v1/auth/login`.
pub fn service_of(req: &ServiceRequest) -> ServiceId {
    service_for(req.match_info().as_str())
}

pub use crate::routes::table::service_for;

/// The client as rate limits (and audit entries of refusals) see it: the socket's peer, unless
/// that peer is a trusted proxy; then the rightmost `X-Forwarded-For` hop that is not one.
/// IPv4-mapped addresses (a dual-stack socket's IPv4 peers) are taken as IPv4, so
/// `trusted_proxies` (canonical too, see [`RateLimits::new`]) match either form.
pub fn client_ip(req: &ServiceRequest, trusted_proxies: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip().to_canonical();
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
        let address = address.to_canonical();
        client = address;
        if !trusted_proxies.contains(&address) {
            break;
        }
    }
    Some(client)
}

/// The key of `client`'s buckets: an IPv4 address as is (mapped ones too), an IPv6 address
/// cut to its first `ipv6_prefix_len` bits.
pub fn bucket_key(client: IpAddr, ipv6_prefix_len: u8) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            // 0 bits: a shift by 128 overflows, and every IPv6 client shares one key.
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// Bodies up to this size are read and dropped before a 429 goes out.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// Answers a refused request with `response`. A small declared body is read first: a response
/// to a request whose body is left unread closes the connection, so every 429 would cost a
/// client (and a flood, for free) a new connection. Larger or chunked bodies still close it.
pub async fn answer_refused(
    mut req: ServiceRequest,
    response: HttpResponse,
) -> actix_web::dev::ServiceResponse {
    use actix_web::HttpMessage;
    use futures_util::StreamExt;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > 0 && length <= DRAIN_LIMIT) {
        let mut payload = req.take_payload();
        let mut read = 0u64;
        while let Some(Ok(chunk)) = payload.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_LIMIT {
                break;
            }
        }
    }
    req.into_response(response)
}

/// The audit gate's limiter (consulted on refusals only), hashing with foldhash: clients pick
/// their addresses, so the hash stays seeded per process.
type KeyedLimiter<K> =
    DefaultKeyedRateLimiter<K, NoOpMiddleware<<DefaultClock as Clock>::Instant>, RandomState>;

fn keyed<K: Hash + Eq + Clone>(quota: Quota) -> KeyedLimiter<K> {
    RateLimiter::dashmap_with_hasher(quota, RandomState::default())
}

/// Every service's limiter plus what a refusal needs. Shared by all HTTP workers.
#[derive(Clone)]
pub struct RateLimits {
    inner: Arc<Inner>,
}

struct Inner {
    /// One limiter per service, in [`names::SERVICES`] order (indexed by [`ServiceId`]).
    services: Vec<ServiceLimiter>,
    /// One audit entry per (client, service) per interval.
    audit_gate: KeyedLimiter<(IpAddr, &'static str)>,
    trusted_proxies: Vec<IpAddr>,
    ipv6_prefix_len: u8,
    metrics: Metrics,
    audit: AuditLog,
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
                ServiceLimiter::new(
                    bucket.capacity,
                    bucket.refill_per_second,
                    config.max_tracked_clients,
                    metrics.rate_limit_evictions.with_label_values(&[service]),
                )
            })
            .collect();
        let audit_interval = Duration::from_secs(config.audit_interval_s.max(1));
        let audit_quota = Quota::with_period(audit_interval)
            .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN));
        Self {
            inner: Arc::new(Inner {
                services,
                audit_gate: keyed(audit_quota),
                trusted_proxies: config
                    .trusted_proxies
                    .iter()
                    .map(IpAddr::to_canonical)
                    .collect(),
                ipv6_prefix_len: config.ipv6_prefix_len,
                metrics,
                audit,
            }),
        }
    }

    /// The key `client` is limited by (see [`bucket_key`]).
    pub fn key(&self, client: IpAddr) -> IpAddr {
        bucket_key(client, self.inner.ipv6_prefix_len)
    }

    /// Takes one token from `client`'s bucket of `service`; `Err` holds how long until the
    /// next token.
    pub fn check(&self, service: ServiceId, client: IpAddr) -> Result<(), Duration> {
        match self.inner.services.get(service.index()) {
            Some(limiter) => limiter.check(self.key(client)),
            None => Ok(()),
        }
    }

    pub fn trusted_proxies(&self) -> &[IpAddr] {
        &self.inner.trusted_proxies
    }

    /// The 429 for `client`, who must wait `wait` for `service`: counted, and audited and
    /// logged at most once per client and service per `rate_limit.audit_interval_s`.
    pub fn refuse(
        &self,
        req: &ServiceRequest,
        service: ServiceId,
        client: IpAddr,
        wait: Duration,
    ) -> HttpResponse {
        let service = service.label();
        let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
        self.inner
            .metrics
            .rate_limited
            .with_label_values(&[service])
            .inc();
        // Gated by bucket key: addresses from one IPv6 prefix share one entry per interval.
        if self
            .inner
            .audit_gate
            .check_key(&(self.key(client), service))
            .is_ok()
        {
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
        let tracked = self
            .inner
            .services
            .iter()
            .map(ServiceLimiter::sweep)
            .sum::<usize>();
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
        self.inner.services.iter().map(ServiceLimiter::len).sum()
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

    /// Paths are classified as the router sees them: percent-escapes the router decodes
    /// cannot move a request to another service's bucket, and what it does not route stays out
    /// of the service's routes.
    #[test]
    fn encoded_and_odd_paths_classify_as_the_router_sees_them() {
        use actix_web::test::TestRequest;
        for (path, service) in [
            ("/api/v1/auth/login", "auth"),
            ("/api/v1/%61uth/login", "auth"),
            ("/api/v1/au%74h/login", "auth"),
            ("/api/v1/%61%75%74%68/%6C%6F%67%69%6E", "auth"),
            ("/api/v1/%61%75%74%68/%6c%6f%67%69%6e", "auth"),
            ("/%61pi/v1/auth/login", "auth"),
            ("/api/%76%31/auth/login", "auth"),
            ("/api%2Fv1/auth/login", "gateway"),
            ("/api/v1/auth%2Flogin", "gateway"),
            ("/api/v1/auth%2flogin", "gateway"),
            ("/api/v1/%2561uth/login", "gateway"),
            ("//api/v1/auth/login", "gateway"),
            ("/api//v1/auth/login", "gateway"),
            // Not routed (actix neither strips dots nor trailing slashes): a 404 from the
            // gateway bucket, never the login handler.
            ("/api/v1/auth/./login", "gateway"),
            ("/api/v1/auth/login/", "gateway"),
            ("/api/v1/auth/login?x=/api/v1/media", "auth"),
            ("/api/v1/media/abc/%68ls/master.m3u8", "streaming"),
            ("/api/v1/media/abc/thumbnail%2Ejpg", "streaming"),
            ("/api/v1/media/abc%2Fhls/master.m3u8", "gateway"),
            ("/api/v1/media/abc/gate", "metadata"),
            ("/api/v1/jobs/stats", "worker"),
            ("/api/v1/transcode/profiles", "transcoder"),
            ("/api/v1/nothing", "gateway"),
            ("/api/v1/%6D%65%64%69%61", "metadata"),
            ("/%6Detrics", "monitor"),
            ("/api/v1/%75ploads/abc", "upload"),
            ("/api/v1/%FF/login", "gateway"),
        ] {
            let req = TestRequest::with_uri(path).to_srv_request();
            assert_eq!(service_of(&req).label(), service, "{path}");
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_prefix_and_mapped_ones_as_ipv4() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let key = |text: &str, bits: u8| bucket_key(ip(text), bits);
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 64), ip("2001:db8:1:2::"));
        assert_eq!(key("2001:db8:1:2:ffff::1", 64), key("2001:db8:1:2::9", 64));
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        assert_eq!(key("2001:db8:1:2::1", 48), ip("2001:db8:1::"));
        assert_eq!(key("2001:db8:1:2::1", 128), ip("2001:db8:1:2::1"));
        assert_eq!(key("2001:db8:1:2::1", 0), ip("::"));
        assert_eq!(key("2001:db8:1:2::1", 57), ip("2001:db8:1::"));
        assert_eq!(key("2001:db8:1:1ff::1", 57), ip("2001:db8:1:180::"));
        for bits in [0, 64, 128] {
            assert_eq!(key("::ffff:198.51.100.7", bits), ip("198.51.100.7"));
            assert_eq!(key("198.51.100.7", bits), ip("198.51.100.7"));
        }
    }
}
