//! The trace statistics behind `/api/v1/monitor/traces` and the error-rate alert rules:
//! request, error and client-error counts, durations, and a ring of the most recent requests.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use time::OffsetDateTime;

use super::traces::{hex_trace_id, RequestRecord};

/// A finished request, for the recent list of `/api/v1/monitor/traces`.
#[derive(Debug, Clone)]
pub struct TraceSummary {
    pub trace_id: Option<String>,
    pub service: &'static str,
    pub route: String,
    pub method: String,
    pub status: u16,
    pub duration_ms: f64,
    pub at: OffsetDateTime,
}

/// What `/api/v1/monitor/traces` reports.
#[derive(Debug, Clone)]
pub struct TraceReport {
    pub count: u64,
    /// Requests answered with a 5xx status.
    pub errors: u64,
    pub error_rate: f64,
    pub duration_ms: DurationStats,
    pub recent: Vec<TraceSummary>,
}

/// One service's answers since start (`service` is the rate-limit service of the route).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServiceCounts {
    pub requests: u64,
    /// Answered below 400.
    pub successes: u64,
    /// Answered 4xx.
    pub client_errors: u64,
    /// Answered 5xx.
    pub errors: u64,
}

impl ServiceCounts {
    fn share(&self, part: u64) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            part as f64 / self.requests as f64
        }
    }

    pub fn success_rate(&self) -> f64 {
        self.share(self.successes)
    }

    pub fn error_rate(&self) -> f64 {
        self.share(self.errors)
    }

    pub fn client_error_rate(&self) -> f64 {
        self.share(self.client_errors)
    }
}

#[derive(Debug, Clone)]
pub struct DurationStats {
    /// Over every request since start (all zero before the first).
    pub total: f64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    /// Over the recent requests.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The statistics, shared by every HTTP worker. Cloning shares them.
#[derive(Clone)]
pub struct TraceStats {
    capacity: usize,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    count: u64,
    errors: u64,
    client_errors: u64,
    total: Duration,
    min: Option<Duration>,
    max: Duration,
    /// Per service, in first-seen order; services are the route table's handful.
    services: Vec<(&'static str, ServiceCounts)>,
    /// Oldest first.
    recent: VecDeque<TraceSummary>,
}

impl TraceStats {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one answered request and makes it the newest.
    pub fn record(&self, request: &RequestRecord<'_>) {
        let summary = TraceSummary {
            trace_id: request.trace_id.map(hex_trace_id),
            service: request.service,
            route: request.route.to_string(),
            method: request.method.to_string(),
            status: request.status,
            duration_ms: request.duration.as_secs_f64() * 1000.0,
            at: OffsetDateTime::now_utc(),
        };
        let mut state = self.state();
        state.count += 1;
        match request.status {
            500.. => state.errors += 1,
            400..=499 => state.client_errors += 1,
            _ => {}
        }
        state.total += request.duration;
        state.min = Some(
            state
                .min
                .map_or(request.duration, |min| min.min(request.duration)),
        );
        let at = match state
            .services
            .iter()
            .position(|(s, _)| *s == request.service)
        {
            Some(at) => at,
            None => {
                state
                    .services
                    .push((request.service, ServiceCounts::default()));
                state.services.len() - 1
            }
        };
        let counts = &mut state.services[at].1;
        counts.requests += 1;
        match request.status {
            500.. => counts.errors += 1,
            400..=499 => counts.client_errors += 1,
            _ => counts.successes += 1,
        }
        state.max = state.max.max(request.duration);
        if state.recent.len() >= self.capacity {
            state.recent.pop_front();
        }
        state.recent.push_back(summary);
    }

    /// (requests, 5xx errors) since start.
    pub fn totals(&self) -> (u64, u64) {
        let state = self.state();
        (state.count, state.errors)
    }

    /// Each service that answered a request since start, with its counts.
    pub fn services(&self) -> Vec<(&'static str, ServiceCounts)> {
        self.state().services.clone()
    }

    /// Requests answered with a 4xx status since start.
    pub fn client_errors(&self) -> u64 {
        self.state().client_errors
    }

    pub fn report(&self, recent_limit: usize) -> TraceReport {
        let state = self.state();
        let mut durations: Vec<f64> = state.recent.iter().map(|t| t.duration_ms).collect();
        durations.sort_by(f64::total_cmp);
        let quantile = |q: f64| -> f64 {
            if durations.is_empty() {
                return 0.0;
            }
            let rank = ((durations.len() as f64 - 1.0) * q).round() as usize;
            durations[rank.min(durations.len() - 1)]
        };
        let average = |total: f64| {
            if state.count == 0 {
                0.0
            } else {
                total / state.count as f64
            }
        };
        TraceReport {
            count: state.count,
            errors: state.errors,
            error_rate: average(state.errors as f64),
            duration_ms: DurationStats {
                total: state.total.as_secs_f64() * 1000.0,
                avg: average(state.total.as_secs_f64() * 1000.0),
                min: state.min.unwrap_or_default().as_secs_f64() * 1000.0,
                max: state.max.as_secs_f64() * 1000.0,
                p50: quantile(0.5),
                p95: quantile(0.95),
                p99: quantile(0.99),
            },
            recent: state
                .recent
                .iter()
                .rev()
                .take(recent_limit)
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stats: &TraceStats, method: &str, status: u16, micros: u64, trace_id: Option<u128>) {
        stats.record(&RequestRecord {
            service: "gateway",
            route: "/health",
            method,
            status,
            duration: Duration::from_micros(micros),
            response_bytes: None,
            trace_id,
        });
    }

    #[test]
    fn stats_count_errors_and_durations() {
        let stats = TraceStats::new(4);
        for (status, ms) in [(200, 10), (503, 30), (200, 20), (404, 40), (500, 50)] {
            record(&stats, "GET", status, ms * 1000, None);
        }
        let report = stats.report(10);
        assert_eq!((report.count, report.errors), (5, 2));
        assert_eq!(stats.client_errors(), 1);
        assert!((report.error_rate - 0.4).abs() < 1e-9);
        assert!((report.duration_ms.avg - 30.0).abs() < 1e-6);
        assert!((report.duration_ms.max - 50.0).abs() < 1e-6);
        assert!((report.duration_ms.min - 10.0).abs() < 1e-6);
        assert!((report.duration_ms.total - 150.0).abs() < 1e-6);
        let gateway = ServiceCounts {
            requests: 5,
            successes: 2,
            client_errors: 1,
            errors: 2,
        };
        assert_eq!(stats.services(), vec![("gateway", gateway)]);
        assert!((gateway.error_rate() - 0.4).abs() < 1e-9);
        assert!((gateway.success_rate() - 0.4).abs() < 1e-9);
        assert_eq!(report.recent.len(), 4, "the ring keeps its capacity");
        assert_eq!(report.recent[0].status, 500, "newest first");
        assert_eq!(
            (
                report.recent[0].service,
                report.recent[0].route.as_str(),
                report.recent[0].method.as_str()
            ),
            ("gateway", "/health", "GET")
        );
    }

    #[test]
    fn writers_on_several_threads_are_all_counted() {
        let stats = TraceStats::new(8);
        let writers: Vec<_> = ["GET", "POST"]
            .into_iter()
            .map(|method| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for request in 0..1000u64 {
                        let status = if request % 10 == 0 { 500 } else { 200 };
                        record(
                            &stats,
                            method,
                            status,
                            request,
                            Some(u128::from(request) + 1),
                        );
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let report = stats.report(8);
        assert_eq!((report.count, report.errors), (2000, 200));
        assert!((report.duration_ms.max - 0.999).abs() < 1e-9);
        assert_eq!(report.recent.len(), 8);
        for entry in &report.recent {
            let trace_id = u128::from_str_radix(entry.trace_id.as_deref().unwrap(), 16).unwrap();
            assert_eq!(
                (entry.duration_ms * 1000.0).round() as u128 + 1,
                trace_id,
                "an entry's fields belong to one request"
            );
        }
    }
}
