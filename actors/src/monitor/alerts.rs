//! The alert rules engine. The monitor evaluates every rule on its sample timer against the
//! signals it just measured; a rule whose condition holds goes `pending`, then `firing` once
//! it has held for its `for_s`, then `resolved` when it stops holding. Every transition lands
//! in a bounded history; firing and resolved ones go to the handlers (log + webhook).

use std::{collections::VecDeque, time::Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a rule looks at: figures the monitor computes at each sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Share of requests answered 5xx over `monitor.alert_window_s` (0–1).
    HttpErrorRate,
    /// Share of requests answered 4xx over the window (0–1).
    HttpClientErrorRate,
    /// Longest request (uploads excluded) in the last sample window, seconds.
    HttpLatencyMaxSeconds,
    /// Resident memory over host memory (0–1).
    MemoryUsageRatio,
    /// Process CPU over all cores, since the previous sample (0–1).
    CpuUsageRatio,
    /// Actors that did not answer their last liveness ping.
    ActorsDown,
    /// Requests refused by rate limits over the window, per second.
    RateLimitedPerSecond,
}

impl Signal {
    pub const ALL: [Signal; 7] = [
        Signal::HttpErrorRate,
        Signal::HttpClientErrorRate,
        Signal::HttpLatencyMaxSeconds,
        Signal::MemoryUsageRatio,
        Signal::CpuUsageRatio,
        Signal::ActorsDown,
        Signal::RateLimitedPerSecond,
    ];

    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpErrorRate => "http_error_rate",
            Self::HttpClientErrorRate => "http_client_error_rate",
            Self::HttpLatencyMaxSeconds => "http_latency_max_seconds",
            Self::MemoryUsageRatio => "memory_usage_ratio",
            Self::CpuUsageRatio => "cpu_usage_ratio",
            Self::ActorsDown => "actors_down",
            Self::RateLimitedPerSecond => "rate_limited_per_second",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    Gt,
    Lt,
    Eq,
    Gte,
    Lte,
}

impl Condition {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gt => "gt",
            Self::Lt => "lt",
            Self::Eq => "eq",
            Self::Gte => "gte",
            Self::Lte => "lte",
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Gt => value > threshold,
            Self::Lt => value < threshold,
            Self::Eq => (value - threshold).abs() < f64::EPSILON,
            Self::Gte => value >= threshold,
            Self::Lte => value <= threshold,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertLevel {
    Critical,
    Warning,
    Info,
}

impl AlertLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

/// One rule, as written in `config/default.toml` under `[[monitor.alert_rules]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    pub signal: Signal,
    pub condition: Condition,
    pub threshold: f64,
    /// How long the condition must hold before the alert fires, seconds.
    pub for_s: f64,
    pub level: AlertLevel,
    pub summary: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inactive => "inactive",
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// A state change, kept in the history and handed to the handlers.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    pub rule: String,
    pub level: AlertLevel,
    pub state: AlertState,
    pub value: f64,
    pub threshold: f64,
    pub summary: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// When the condition started holding (for firing and resolved events).
    #[serde(with = "time::serde::rfc3339::option")]
    pub active_since: Option<OffsetDateTime>,
}

/// A rule as the alerts endpoint shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleStatus {
    #[serde(flatten)]
    pub rule: AlertRule,
    pub state: AlertState,
    pub value: Option<f64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub active_since: Option<OffsetDateTime>,
}

/// What the engine knows at one evaluation; a missing signal leaves its rules unchanged.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    values: Vec<(Signal, f64)>,
}

impl Signals {
    pub fn set(&mut self, signal: Signal, value: f64) {
        self.values.retain(|(s, _)| *s != signal);
        self.values.push((signal, value));
    }
    pub fn get(&self, signal: Signal) -> Option<f64> {
        self.values
            .iter()
            .find(|(s, _)| *s == signal)
            .map(|(_, v)| *v)
    }
}

struct RuleRuntime {
    rule: AlertRule,
    state: AlertState,
    /// Monotonic and wall time the condition started holding.
    since: Option<(Instant, OffsetDateTime)>,
    value: Option<f64>,
}

pub struct AlertEngine {
    rules: Vec<RuleRuntime>,
    history: VecDeque<AlertEvent>,
    history_capacity: usize,
}

impl AlertEngine {
    pub fn new(rules: Vec<AlertRule>, history_capacity: usize) -> Self {
        Self {
            rules: rules
                .into_iter()
                .map(|rule| RuleRuntime {
                    rule,
                    state: AlertState::Inactive,
                    since: None,
                    value: None,
                })
                .collect(),
            history: VecDeque::new(),
            history_capacity: history_capacity.max(1),
        }
    }

    /// Advances every rule; returns the transitions made (already in the history).
    pub fn evaluate(
        &mut self,
        signals: &Signals,
        now: Instant,
        wall: OffsetDateTime,
    ) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        for runtime in &mut self.rules {
            let Some(value) = signals.get(runtime.rule.signal) else {
                continue;
            };
            runtime.value = Some(value);
            let holds =
                value.is_finite() && runtime.rule.condition.holds(value, runtime.rule.threshold);
            let next = match (runtime.state, holds) {
                (AlertState::Inactive | AlertState::Resolved, true) => {
                    runtime.since = Some((now, wall));
                    if runtime.rule.for_s <= 0.0 {
                        AlertState::Firing
                    } else {
                        AlertState::Pending
                    }
                }
                (AlertState::Pending, true) => match runtime.since {
                    Some((started, _))
                        if now.duration_since(started).as_secs_f64() >= runtime.rule.for_s =>
                    {
                        AlertState::Firing
                    }
                    _ => AlertState::Pending,
                },
                (AlertState::Firing, true) => AlertState::Firing,
                (AlertState::Firing, false) => AlertState::Resolved,
                // A pending alert that stops holding never fired: back to quiet.
                (AlertState::Pending, false) => AlertState::Inactive,
                (state, false) => state,
            };
            if next == runtime.state {
                continue;
            }
            let active_since = runtime.since.map(|(_, wall)| wall);
            if matches!(next, AlertState::Inactive | AlertState::Resolved) {
                runtime.since = None;
            }
            runtime.state = next;
            if next == AlertState::Inactive {
                continue;
            }
            events.push(AlertEvent {
                rule: runtime.rule.name.clone(),
                level: runtime.rule.level,
                state: next,
                value,
                threshold: runtime.rule.threshold,
                summary: runtime.rule.summary.clone(),
                at: wall,
                active_since,
            });
        }
        for event in &events {
            if self.history.len() == self.history_capacity {
                self.history.pop_front();
            }
            self.history.push_back(event.clone());
        }
        events
    }

    pub fn rules(&self) -> Vec<RuleStatus> {
        self.rules
            .iter()
            .map(|runtime| RuleStatus {
                rule: runtime.rule.clone(),
                state: runtime.state,
                value: runtime.value,
                active_since: runtime.since.map(|(_, wall)| wall),
            })
            .collect()
    }

    /// Newest first.
    pub fn history(&self, limit: usize) -> Vec<AlertEvent> {
        self.history.iter().rev().take(limit).cloned().collect()
    }
}

/// The body Alertmanager sends to webhook receivers (version 4), so existing receivers work.
pub fn alertmanager_payload(event: &AlertEvent, external_url: &str) -> serde_json::Value {
    let status = if event.state == AlertState::Resolved {
        "resolved"
    } else {
        "firing"
    };
    let rfc3339 = |at: OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let labels = serde_json::json!({
        "alertname": event.rule,
        "severity": event.level.as_str(),
        "service": "streamgate",
    });
    let starts_at = rfc3339(event.active_since.unwrap_or(event.at));
    // Alertmanager's "zero time" marks a firing alert without an end.
    let ends_at = if status == "resolved" {
        rfc3339(event.at)
    } else {
        "0001-01-01T00:00:00Z".to_string()
    };
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", event.rule),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "streamgate",
        "groupLabels": { "alertname": event.rule },
        "commonLabels": labels,
        "commonAnnotations": { "summary": event.summary },
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": {
                "summary": event.summary,
                "value": event.value.to_string(),
                "threshold": event.threshold.to_string(),
            },
            "startsAt": starts_at,
            "endsAt": ends_at,
            "generatorURL": format!("{external_url}/api/v1/monitor/alerts"),
            "fingerprint": format!("streamgate-{}", event.rule),
        }],
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The names the alerts endpoint shows are the names the config is written in.
    #[test]
    fn names_match_the_config_spelling() {
        fn check<T: Serialize + Copy>(values: &[T], name: fn(T) -> &'static str) {
            for value in values {
                let written = serde_json::to_value(value).unwrap();
                assert_eq!(written.as_str(), Some(name(*value)));
            }
        }
        check(&Signal::ALL, Signal::as_str);
        let conditions = [Condition::Gt, Condition::Lt, Condition::Eq, Condition::Gte];
        check(&conditions, Condition::as_str);
        check(&[Condition::Lte], Condition::as_str);
        let states = [
            AlertState::Inactive,
            AlertState::Pending,
            AlertState::Firing,
        ];
        check(&states, AlertState::as_str);
        check(&[AlertState::Resolved], AlertState::as_str);
    }

    fn rule(for_s: f64) -> AlertRule {
        AlertRule {
            name: "HighErrorRate".into(),
            signal: Signal::HttpErrorRate,
            condition: Condition::Gt,
            threshold: 0.1,
            for_s,
            level: AlertLevel::Critical,
            summary: "errors".into(),
        }
    }

    fn signals(value: f64) -> Signals {
        let mut signals = Signals::default();
        signals.set(Signal::HttpErrorRate, value);
        signals
    }

    #[test]
    fn pending_then_firing_after_hold_then_resolved() {
        let mut engine = AlertEngine::new(vec![rule(10.0)], 10);
        let t0 = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let states = |events: Vec<AlertEvent>| -> Vec<AlertState> {
            events.into_iter().map(|e| e.state).collect()
        };
        assert!(engine.evaluate(&signals(0.0), t0, wall).is_empty());
        assert_eq!(
            states(engine.evaluate(&signals(0.5), t0, wall)),
            [AlertState::Pending]
        );
        assert!(engine
            .evaluate(&signals(0.5), t0 + Duration::from_secs(5), wall)
            .is_empty());
        assert_eq!(
            states(engine.evaluate(&signals(0.5), t0 + Duration::from_secs(10), wall)),
            [AlertState::Firing]
        );
        assert_eq!(
            states(engine.evaluate(&signals(0.05), t0 + Duration::from_secs(11), wall)),
            [AlertState::Resolved]
        );
        let history: Vec<AlertState> = engine.history(10).iter().map(|e| e.state).collect();
        assert_eq!(
            history,
            [
                AlertState::Resolved,
                AlertState::Firing,
                AlertState::Pending
            ]
        );
    }

    #[test]
    fn a_blip_shorter_than_the_hold_never_fires() {
        let mut engine = AlertEngine::new(vec![rule(10.0)], 10);
        let t0 = Instant::now();
        let wall = OffsetDateTime::now_utc();
        engine.evaluate(&signals(0.5), t0, wall);
        engine.evaluate(&signals(0.0), t0 + Duration::from_secs(1), wall);
        let events = engine.evaluate(&signals(0.5), t0 + Duration::from_secs(10), wall);
        assert_eq!(events[0].state, AlertState::Pending, "the hold starts over");
        assert_eq!(engine.rules()[0].state, AlertState::Pending);
    }

    #[test]
    fn conditions_compare_as_named() {
        assert!(Condition::Gt.holds(2.0, 1.0) && !Condition::Gt.holds(1.0, 1.0));
        assert!(Condition::Gte.holds(1.0, 1.0) && Condition::Lte.holds(1.0, 1.0));
        assert!(Condition::Lt.holds(0.0, 1.0) && Condition::Eq.holds(1.0, 1.0));
    }

    #[test]
    fn webhook_payload_is_alertmanager_shaped() {
        let event = AlertEvent {
            rule: "HighErrorRate".into(),
            level: AlertLevel::Critical,
            state: AlertState::Resolved,
            value: 0.0,
            threshold: 0.1,
            summary: "errors".into(),
            at: OffsetDateTime::now_utc(),
            active_since: Some(OffsetDateTime::now_utc()),
        };
        let payload = alertmanager_payload(&event, "http://sg");
        assert_eq!(payload["version"], "4");
        assert_eq!(payload["status"], "resolved");
        assert_eq!(payload["alerts"][0]["labels"]["alertname"], "HighErrorRate");
        assert_eq!(payload["alerts"][0]["labels"]["severity"], "critical");
    }
}
