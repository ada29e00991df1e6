//! Job claim throughput on Postgres: 1,000 queued jobs drained by one node, then (a fresh
//! 1,000) by two, each node a store with its own connection pool claiming in a loop as a node
//! with free workers does (`SELECT … FOR UPDATE SKIP LOCKED`, mark running, commit).

use std::{collections::HashSet, sync::Arc, time::Instant};

use streamgate_actors::{
    model::{Job, JobId, JobKind, JobState, MediaId},
    store::{test_postgres, JobRepo, PostgresStore},
};
use time::OffsetDateTime;

use crate::common::{median, Load};

pub const QUEUED: usize = 1000;

fn queued_job() -> Job {
    let now = OffsetDateTime::now_utc();
    Job {
        id: JobId::new(),
        kind: JobKind::Transcode,
        media_id: Some(MediaId::new()),
        profiles: Vec::new(),
        state: JobState::Queued,
        priority: 5,
        attempts: 0,
        last_error: None,
        error_code: None,
        owner: None,
        progress: 0,
        summary: None,
        run_at: None,
        started_at: None,
        finished_at: None,
        trace_id: None,
        created_at: now,
        updated_at: now,
        lease: None,
    }
}

/// Drains [`QUEUED`] fresh jobs with `nodes` claimers: claims/s, per-claim latency, and as
/// errors the claims that were not exactly one per job.
pub fn drain(nodes: usize) -> Load {
    let url = test_postgres::fresh_database().unwrap();
    let connect =
        || Arc::new(PostgresStore::connect(&url, 4, std::time::Duration::from_secs(10)).unwrap());
    let seeder = connect();
    for _ in 0..QUEUED {
        seeder.put_job(&queued_job()).unwrap();
    }
    let stores: Vec<Arc<PostgresStore>> = (0..nodes).map(|_| connect()).collect();
    let started = Instant::now();
    let claims: Vec<(JobId, f64)> = std::thread::scope(|scope| {
        let claimers: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(n, store)| {
                scope.spawn(move || {
                    let node = format!("bench-node-{n}");
                    let mut mine = Vec::new();
                    loop {
                        let at = Instant::now();
                        let now = OffsetDateTime::now_utc();
                        let until = now + time::Duration::seconds(30);
                        match store.claim_job(&node, now, until).unwrap() {
                            Some(job) => mine.push((job.id, at.elapsed().as_secs_f64() * 1000.0)),
                            None => return mine,
                        }
                    }
                })
            })
            .collect();
        claimers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let distinct: HashSet<&JobId> = claims.iter().map(|(id, _)| id).collect();
    let latencies: Vec<f64> = claims.iter().map(|(_, ms)| *ms).collect();
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    Load {
        requests_per_s: claims.len() as f64 / elapsed,
        megabytes_per_s: 0.0,
        p50_ms: median(latencies),
        p99_ms: sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)],
        errors: (claims.len().abs_diff(QUEUED) + claims.len() - distinct.len()) as u64,
    }
}
