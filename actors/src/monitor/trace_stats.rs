//! The trace statistics behind `/api/v1/monitor/traces` and the error-rate alert rules:
//! request, error and client-error counts, durations, and the most recent requests.
//!
//! Each HTTP worker records into a shard of its own through a [`TraceRecorder`], with plain
//! loads and stores (see [`super::owned`]): no lock and no locked instruction per request. A
//! shard's recent requests are a ring of integer-only entries, each behind a sequence number
//! (a seqlock) so a reader on another thread never sees an entry half written; a report merges
//! the shards, newest requests first.

use std::{
    cell::Cell,
    sync::{
        atomic::{fence, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use serde::Serialize;
use time::OffsetDateTime;

use super::{
    clock::MonotonicNanos,
    owned::{self, Copies, Owned},
    traces::hex_trace_id,
};

/// A finished request, for the recent list of `/api/v1/monitor/traces`.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: Option<String>,
    pub service: &'static str,
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
    pub duration_ms: f64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What `/api/v1/monitor/traces` reports.
#[derive(Debug, Clone, Serialize)]
pub struct TraceReport {
    pub count: u64,
    /// Requests answered with a 5xx status.
    pub errors: u64,
    pub error_rate: f64,
    pub duration_ms: DurationStats,
    pub recent: Vec<TraceSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DurationStats {
    /// Over every request since start.
    pub avg: f64,
    pub max: f64,
    /// Over the recent requests.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The statistics: every recorder's shard. Reports keep the newest `capacity` requests.
#[derive(Clone)]
pub struct TraceStats {
    capacity: usize,
    shards: Arc<Copies<Shard>>,
}

/// One recorder's counts and ring; only its [`TraceRecorder`] writes it.
struct Shard {
    count: AtomicU64,
    errors: AtomicU64,
    client_errors: AtomicU64,
    duration_micros: AtomicU64,
    max_micros: AtomicU64,
    recent: Box<[Slot]>,
}

/// One entry of a shard's ring. `sequence` is odd while the owner writes the entry and zero
/// until it first has: a reader takes the entry only if it read the same even, non-zero
/// sequence before and after the fields.
#[derive(Default)]
struct Slot {
    sequence: AtomicU64,
    labels: AtomicU64,
    duration_micros: AtomicU64,
    finished: AtomicU64,
    trace_high: AtomicU64,
    trace_low: AtomicU64,
}

/// A ring entry as read.
#[derive(Clone, Copy)]
struct Recent {
    labels: TraceLabels,
    duration_micros: u64,
    finished: MonotonicNanos,
    trace_id: u128,
}

impl Slot {
    /// Owner only.
    fn write(&self, entry: &Recent) {
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence.store(sequence + 1, Ordering::Relaxed);
        // The odd sequence is visible before any field changes.
        fence(Ordering::Release);
        self.labels.store(entry.labels.0, Ordering::Relaxed);
        self.duration_micros
            .store(entry.duration_micros, Ordering::Relaxed);
        self.finished
            .store(entry.finished.as_nanos(), Ordering::Relaxed);
        self.trace_high
            .store((entry.trace_id >> 64) as u64, Ordering::Relaxed);
        self.trace_low
            .store(entry.trace_id as u64, Ordering::Relaxed);
        self.sequence.store(sequence + 2, Ordering::Release);
    }

    /// The entry, unless it was never written or kept changing while read (a busy owner
    /// overwrites it with a newer request; skipping it costs the report one old entry).
    fn read(&self) -> Option<Recent> {
        for _ in 0..4 {
            let before = self.sequence.load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let entry = Recent {
                labels: TraceLabels(self.labels.load(Ordering::Relaxed)),
                duration_micros: self.duration_micros.load(Ordering::Relaxed),
                finished: MonotonicNanos::from_nanos(self.finished.load(Ordering::Relaxed)),
                trace_id: u128::from(self.trace_high.load(Ordering::Relaxed)) << 64
                    | u128::from(self.trace_low.load(Ordering::Relaxed)),
            };
            // The field loads happen before the second sequence load.
            fence(Ordering::Acquire);
            if self.sequence.load(Ordering::Relaxed) == before {
                return Some(entry);
            }
        }
        None
    }
}

/// A request's service, route, method and status as one integer (label ids from a table of
/// the `'static` labels seen), so a ring entry holds no pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceLabels(u64);

/// Every label a [`TraceLabels`] was made from; ids index it. Labels come from the app's
/// fixed tables (services, route patterns, methods), so it stays as small as they are.
static LABELS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Labels past this many share the last id's text ("other"); the cap only guards a bug.
const MAX_LABELS: usize = u16::MAX as usize;

impl TraceLabels {
    pub fn new(
        service: &'static str,
        route: &'static str,
        method: &'static str,
        status: u16,
    ) -> Self {
        let mut labels = LABELS.lock().unwrap_or_else(PoisonError::into_inner);
        let mut id = |label: &'static str| -> u64 {
            let index = match labels.iter().position(|known| *known == label) {
                Some(index) => index,
                None if labels.len() < MAX_LABELS => {
                    labels.push(label);
                    labels.len() - 1
                }
                None => MAX_LABELS,
            };
            index as u64
        };
        Self(id(service) << 48 | id(route) << 32 | id(method) << 16 | u64::from(status))
    }

    pub fn status(self) -> u16 {
        self.0 as u16
    }

    /// (service, route, method).
    fn names(self, labels: &[&'static str]) -> [&'static str; 3] {
        [48, 32, 16].map(|shift| {
            labels
                .get(usize::from((self.0 >> shift) as u16))
                .copied()
                .unwrap_or("other")
        })
    }
}

/// One HTTP worker's writing end of the statistics: not `Clone`, not `Sync`.
pub struct TraceRecorder {
    shard: Owned<Shard>,
    next: Cell<usize>,
}

impl TraceRecorder {
    /// Counts one answered request and makes it the shard's newest.
    pub fn record(
        &self,
        labels: TraceLabels,
        duration_nanos: u64,
        finished: MonotonicNanos,
        trace_id: Option<u128>,
    ) {
        let shard = self.shard.get();
        let micros = duration_nanos / 1000;
        owned::add(&shard.count, 1);
        match labels.status() {
            500.. => owned::add(&shard.errors, 1),
            400..=499 => owned::add(&shard.client_errors, 1),
            _ => {}
        }
        owned::add(&shard.duration_micros, micros);
        if micros > shard.max_micros.load(Ordering::Relaxed) {
            shard.max_micros.store(micros, Ordering::Relaxed);
        }
        let next = self.next.get();
        if let Some(slot) = shard.recent.get(next) {
            slot.write(&Recent {
                labels,
                duration_micros: micros,
                finished,
                trace_id: trace_id.unwrap_or(0),
            });
        }
        self.next.set(if next + 1 >= shard.recent.len() {
            0
        } else {
            next + 1
        });
    }
}

impl TraceStats {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            shards: Arc::default(),
        }
    }

    /// A shard for one writer (an HTTP worker), kept for as long as the statistics.
    pub fn recorder(&self) -> TraceRecorder {
        TraceRecorder {
            shard: self.shards.add(Shard {
                count: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                client_errors: AtomicU64::new(0),
                duration_micros: AtomicU64::new(0),
                max_micros: AtomicU64::new(0),
                recent: (0..self.capacity).map(|_| Slot::default()).collect(),
            }),
            next: Cell::new(0),
        }
    }

    fn sum(&self, read: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.sum(|shard| read(shard).load(Ordering::Relaxed))
    }

    /// (requests, 5xx errors) since start.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.sum(|shard| &shard.count),
            self.sum(|shard| &shard.errors),
        )
    }

    /// Requests answered with a 4xx status since start.
    pub fn client_errors(&self) -> u64 {
        self.sum(|shard| &shard.client_errors)
    }

    pub fn report(&self, recent_limit: usize) -> TraceReport {
        let (now, wall_now) = (MonotonicNanos::now(), OffsetDateTime::now_utc());
        let (mut count, mut errors, mut total_micros, mut max_micros) = (0u64, 0u64, 0u64, 0);
        let mut recent: Vec<Recent> = Vec::new();
        self.shards.for_each(|shard| {
            count += shard.count.load(Ordering::Relaxed);
            errors += shard.errors.load(Ordering::Relaxed);
            total_micros =
                total_micros.saturating_add(shard.duration_micros.load(Ordering::Relaxed));
            max_micros = max_micros.max(shard.max_micros.load(Ordering::Relaxed));
            recent.extend(shard.recent.iter().filter_map(Slot::read));
        });
        // Oldest first; the newest `capacity` across the shards.
        recent.sort_by_key(|entry| entry.finished);
        let recent = &recent[recent.len().saturating_sub(self.capacity)..];
        let labels = LABELS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let recent: Vec<TraceSummary> = recent
            .iter()
            .map(|entry| {
                let [service, route, method] = entry.labels.names(&labels);
                TraceSummary {
                    trace_id: (entry.trace_id != 0).then(|| hex_trace_id(entry.trace_id)),
                    service,
                    route,
                    method,
                    status: entry.labels.status(),
                    duration_ms: entry.duration_micros as f64 / 1000.0,
                    at: wall_now - now.duration_since(entry.finished),
                }
            })
            .collect();
        let mut durations: Vec<f64> = recent.iter().map(|t| t.duration_ms).collect();
        durations.sort_by(f64::total_cmp);
        let quantile = |q: f64| -> f64 {
            if durations.is_empty() {
                return 0.0;
            }
            let rank = ((durations.len() as f64 - 1.0) * q).round() as usize;
            durations[rank.min(durations.len() - 1)]
        };
        let average = |total: f64| {
            if count == 0 {
                0.0
            } else {
                total / count as f64
            }
        };
        TraceReport {
            count,
            errors,
            error_rate: average(errors as f64),
            duration_ms: DurationStats {
                avg: average(total_micros as f64 / 1000.0),
                max: max_micros as f64 / 1000.0,
                p50: quantile(0.5),
                p95: quantile(0.95),
                p99: quantile(0.99),
            },
            recent: recent.into_iter().rev().take(recent_limit).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_errors_and_durations() {
        let stats = TraceStats::new(4);
        let recorder = stats.recorder();
        for (status, ms) in [(200, 10), (503, 30), (200, 20), (404, 40), (500, 50)] {
            recorder.record(
                TraceLabels::new("gateway", "/health", "GET", status),
                ms * 1_000_000,
                MonotonicNanos::now(),
                None,
            );
        }
        let report = stats.report(10);
        assert_eq!((report.count, report.errors), (5, 2));
        assert_eq!(stats.client_errors(), 1);
        assert!((report.error_rate - 0.4).abs() < 1e-9);
        assert!((report.duration_ms.avg - 30.0).abs() < 1e-6);
        assert!((report.duration_ms.max - 50.0).abs() < 1e-6);
        assert_eq!(report.recent.len(), 4, "the ring keeps its capacity");
        assert_eq!(report.recent[0].status, 500, "newest first");
        assert_eq!(
            (
                report.recent[0].service,
                report.recent[0].route,
                report.recent[0].method
            ),
            ("gateway", "/health", "GET")
        );
    }

    #[test]
    fn shards_written_on_their_own_threads_merge_newest_first() {
        let stats = TraceStats::new(8);
        let writers: Vec<_> = ["GET", "POST"]
            .into_iter()
            .map(|method| {
                let recorder = stats.recorder();
                std::thread::spawn(move || {
                    for request in 0..1000u64 {
                        let status = if request % 10 == 0 { 500 } else { 200 };
                        recorder.record(
                            TraceLabels::new("metadata", "/api/v1/media/{id}", method, status),
                            request * 1000,
                            MonotonicNanos::from_nanos(request * 2 + u64::from(method == "POST")),
                            Some(u128::from(request) + 1),
                        );
                    }
                })
            })
            .collect();
        // A report while the writers run sees whole entries only.
        while !writers.iter().all(std::thread::JoinHandle::is_finished) {
            for entry in stats.report(8).recent {
                let trace_id = u128::from_str_radix(entry.trace_id.as_deref().unwrap(), 16);
                assert_eq!(
                    (entry.duration_ms * 1000.0).round() as u128 + 1,
                    trace_id.unwrap(),
                    "an entry's fields belong to one request"
                );
            }
        }
        for writer in writers {
            writer.join().unwrap();
        }
        let report = stats.report(8);
        assert_eq!((report.count, report.errors), (2000, 200));
        assert!((report.duration_ms.max - 0.999).abs() < 1e-9);
        let newest: Vec<(&str, f64)> = report
            .recent
            .iter()
            .map(|entry| (entry.method, entry.duration_ms))
            .collect();
        assert_eq!(
            newest,
            vec![
                ("POST", 0.999),
                ("GET", 0.999),
                ("POST", 0.998),
                ("GET", 0.998),
                ("POST", 0.997),
                ("GET", 0.997),
                ("POST", 0.996),
                ("GET", 0.996),
            ],
            "the newest across both shards, newest first"
        );
    }
}
