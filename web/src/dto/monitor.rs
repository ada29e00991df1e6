//! The JSON shapes of `/api/v1/monitor/*`.

use std::collections::BTreeMap;

use serde::Serialize;
use streamgate_actors::monitor::{
    alerts::{AlertEvent, RuleStatus},
    logs::LogRecord,
    traces::{ServiceCounts, TraceReport, TraceSummary},
    ActorStatus, AlertsReport, MonitorSummary,
};
use time::OffsetDateTime;

#[derive(Debug, Serialize)]
pub struct ActorStatusDto {
    pub name: &'static str,
    pub alive: bool,
    pub restarts: u64,
    pub ping_ms: Option<f64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_heartbeat: Option<OffsetDateTime>,
}

impl From<&ActorStatus> for ActorStatusDto {
    fn from(status: &ActorStatus) -> Self {
        Self {
            name: status.name,
            alive: status.alive,
            restarts: status.restarts,
            ping_ms: status.ping_ms,
            last_heartbeat: status.last_heartbeat,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MonitorSummaryDto {
    pub uptime_s: f64,
    pub requests_total: u64,
    pub requests_5xx: u64,
    pub requests_4xx: u64,
    pub requests_in_flight: i64,
    pub connections_active: i64,
    pub window_s: f64,
    pub window_error_rate: f64,
    pub window_client_error_rate: f64,
    pub latency_avg_ms: f64,
    pub latency_max_ms: f64,
    pub window_latency_max_s: f64,
    pub cpu_usage_ratio: Option<f64>,
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub memory_usage_ratio: Option<f64>,
    pub open_fds: Option<u64>,
    pub uploads_finished: u64,
    pub uploads_rejected: u64,
    pub upload_bytes: u64,
    pub transcodes_succeeded: u64,
    pub transcodes_failed: u64,
    pub jobs_queued: i64,
    pub jobs_running: i64,
    pub rate_limited_total: u64,
    pub alerts_firing: usize,
    pub actors: Vec<ActorStatusDto>,
    /// Keyed by rate-limit service.
    pub services: BTreeMap<&'static str, ServiceRatesDto>,
}

/// A service's answers since start and their shares (0 before its first request).
#[derive(Debug, Serialize)]
pub struct ServiceRatesDto {
    pub requests: u64,
    pub successes: u64,
    pub client_errors: u64,
    pub errors: u64,
    pub success_rate: f64,
    pub client_error_rate: f64,
    pub error_rate: f64,
}

impl From<&ServiceCounts> for ServiceRatesDto {
    fn from(c: &ServiceCounts) -> Self {
        Self {
            requests: c.requests,
            successes: c.successes,
            client_errors: c.client_errors,
            errors: c.errors,
            success_rate: c.success_rate(),
            client_error_rate: c.client_error_rate(),
            error_rate: c.error_rate(),
        }
    }
}

impl From<&MonitorSummary> for MonitorSummaryDto {
    fn from(s: &MonitorSummary) -> Self {
        Self {
            uptime_s: s.uptime_s,
            requests_total: s.requests_total,
            requests_5xx: s.requests_5xx,
            requests_4xx: s.requests_4xx,
            requests_in_flight: s.requests_in_flight,
            connections_active: s.connections_active,
            window_s: s.window_s,
            window_error_rate: s.window_error_rate,
            window_client_error_rate: s.window_client_error_rate,
            latency_avg_ms: s.latency_avg_ms,
            latency_max_ms: s.latency_max_ms,
            window_latency_max_s: s.window_latency_max_s,
            cpu_usage_ratio: s.cpu_usage_ratio,
            cpu_seconds: s.cpu_seconds,
            resident_memory_bytes: s.resident_memory_bytes,
            memory_usage_ratio: s.memory_usage_ratio,
            open_fds: s.open_fds,
            uploads_finished: s.uploads_finished,
            uploads_rejected: s.uploads_rejected,
            upload_bytes: s.upload_bytes,
            transcodes_succeeded: s.transcodes_succeeded,
            transcodes_failed: s.transcodes_failed,
            jobs_queued: s.jobs_queued,
            jobs_running: s.jobs_running,
            rate_limited_total: s.rate_limited_total,
            alerts_firing: s.alerts_firing,
            actors: s.actors.iter().map(ActorStatusDto::from).collect(),
            services: s
                .services
                .iter()
                .map(|(service, counts)| (*service, counts.into()))
                .collect(),
        }
    }
}

/// A rule with its current state.
#[derive(Debug, Serialize)]
pub struct RuleStatusDto {
    pub name: String,
    pub signal: &'static str,
    pub condition: &'static str,
    pub threshold: f64,
    pub for_s: f64,
    pub level: &'static str,
    pub summary: String,
    pub state: &'static str,
    pub value: Option<f64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub active_since: Option<OffsetDateTime>,
}

impl From<&RuleStatus> for RuleStatusDto {
    fn from(status: &RuleStatus) -> Self {
        let rule = &status.rule;
        Self {
            name: rule.name.clone(),
            signal: rule.signal.as_str(),
            condition: rule.condition.as_str(),
            threshold: rule.threshold,
            for_s: rule.for_s,
            level: rule.level.as_str(),
            summary: rule.summary.clone(),
            state: status.state.as_str(),
            value: status.value,
            active_since: status.active_since,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AlertEventDto {
    pub rule: String,
    pub level: &'static str,
    pub state: &'static str,
    pub value: f64,
    pub threshold: f64,
    pub summary: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub active_since: Option<OffsetDateTime>,
}

impl From<&AlertEvent> for AlertEventDto {
    fn from(event: &AlertEvent) -> Self {
        Self {
            rule: event.rule.clone(),
            level: event.level.as_str(),
            state: event.state.as_str(),
            value: event.value,
            threshold: event.threshold,
            summary: event.summary.clone(),
            at: event.at,
            active_since: event.active_since,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AlertsDto {
    pub firing: Vec<RuleStatusDto>,
    pub rules: Vec<RuleStatusDto>,
    pub recent: Vec<AlertEventDto>,
}

impl From<&AlertsReport> for AlertsDto {
    fn from(report: &AlertsReport) -> Self {
        Self {
            firing: report.firing.iter().map(RuleStatusDto::from).collect(),
            rules: report.rules.iter().map(RuleStatusDto::from).collect(),
            recent: report.recent.iter().map(AlertEventDto::from).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LogRecordDto {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub level: &'static str,
    pub target: String,
    pub message: String,
    pub fields: String,
    pub trace_id: Option<String>,
    pub request_id: Option<String>,
}

impl From<LogRecord> for LogRecordDto {
    fn from(record: LogRecord) -> Self {
        Self {
            at: record.at,
            level: record.level,
            target: record.target,
            message: record.message,
            fields: record.fields,
            trace_id: record.trace_id,
            request_id: record.request_id,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LogsDto {
    pub items: Vec<LogRecordDto>,
}

#[derive(Debug, Serialize)]
pub struct DurationStatsDto {
    pub total: f64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Serialize)]
pub struct TraceSummaryDto {
    pub trace_id: Option<String>,
    pub service: &'static str,
    pub route: String,
    pub method: String,
    pub status: u16,
    pub duration_ms: f64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl From<TraceSummary> for TraceSummaryDto {
    fn from(summary: TraceSummary) -> Self {
        Self {
            trace_id: summary.trace_id,
            service: summary.service,
            route: summary.route,
            method: summary.method,
            status: summary.status,
            duration_ms: summary.duration_ms,
            at: summary.at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TraceReportDto {
    pub count: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub duration_ms: DurationStatsDto,
    pub recent: Vec<TraceSummaryDto>,
}

impl From<TraceReport> for TraceReportDto {
    fn from(report: TraceReport) -> Self {
        let d = report.duration_ms;
        Self {
            count: report.count,
            errors: report.errors,
            error_rate: report.error_rate,
            duration_ms: DurationStatsDto {
                total: d.total,
                avg: d.avg,
                min: d.min,
                max: d.max,
                p50: d.p50,
                p95: d.p95,
                p99: d.p99,
            },
            recent: report.recent.into_iter().map(Into::into).collect(),
        }
    }
}
