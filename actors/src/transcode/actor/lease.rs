//! Jobs shared by several nodes (records on Postgres): claims, lease heartbeats and cancels
//! that reach the node running a job.
//!
//! Invariant: a node runs a job only while it holds the job's lease; it kills a run whose lease
//! it lost or could not renew within the lease time, and never stores that run's outcome, so a
//! job runs on at most one node at a time, except after a lease expired.

use std::time::{Duration, Instant};

use actix::{
    ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, ResponseActFuture, WrapFuture,
};
use time::OffsetDateTime;

use super::{Pump, TranscodeActor};
use crate::{
    model::{CancelRequest, Job, JobId, JobState},
    store::{blocking, SharedRepo, StoreError},
    transcode::TranscodeError,
};

/// How jobs are shared between nodes.
#[derive(Debug, Clone)]
pub struct Leasing {
    /// This process's name on leases (unique per process).
    pub node: String,
    /// How long a claim or renewal holds a job (`transcode.lease_s`); renewed every third of it.
    pub lease: Duration,
    /// How often to look for jobs queued by other nodes or left by dead ones
    /// (`transcode.claim_interval_ms`).
    pub claim_every: Duration,
}

impl Leasing {
    /// A node name unique to this process: host, pid and a random suffix (a pid is reused
    /// after a restart; the lease must not be mistaken for the old process's).
    pub fn node_name() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "node".into());
        format!(
            "{host}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
    }

    fn heartbeat(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(100))
    }
}

/// Renews this node's leases and picks up cancel requests made through other nodes.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
struct Heartbeat;

impl TranscodeActor {
    /// Starts the claim and heartbeat timers (with leases only).
    pub(super) fn start_leasing(&mut self, ctx: &mut Context<Self>) {
        let Some(leasing) = &self.leasing else {
            return;
        };
        ctx.run_interval(leasing.claim_every, |_, ctx| ctx.notify(Pump));
        ctx.run_interval(leasing.heartbeat(), |_, ctx| ctx.notify(Heartbeat));
        self.renewed_at = Instant::now();
    }

    /// `Pump` with leases: claims as many jobs as there are idle workers and starts them.
    pub(super) fn claim(
        &mut self,
        leasing: Leasing,
        _: &mut Context<Self>,
    ) -> AtomicResponse<Self, ()> {
        let idle = if self.stopping {
            0
        } else {
            self.config.workers.saturating_sub(self.running.len())
        };
        let repo = self.repo.clone();
        AtomicResponse::new(Box::pin(
            async move {
                blocking(&repo, move |repo| {
                    let mut claimed = Vec::new();
                    while claimed.len() < idle {
                        let now = OffsetDateTime::now_utc();
                        match repo.claim_job(&leasing.node, now, now + leasing.lease)? {
                            Some(job) => claimed.push(job),
                            None => break,
                        }
                    }
                    Ok((claimed, repo.count_jobs(JobState::Queued)?))
                })
                .await
            }
            .into_actor(self)
            .map(|claimed: Result<(Vec<Job>, u64), StoreError>, actor, ctx| {
                match claimed {
                    Ok((jobs, queued)) => {
                        actor.shared_queued = Some(queued);
                        for job in jobs {
                            let cancel = job
                                .lease
                                .as_ref()
                                .and_then(|lease| lease.cancel_requested_by.clone());
                            if job.attempts > 1 {
                                tracing::warn!(job_id = %job.id, attempt = job.attempts, "job claimed for another run");
                            }
                            let job_id = job.id.clone();
                            if actor.running.contains_key(&job_id) {
                                // Our own lease lapsed and we claimed it back: the run goes on.
                                continue;
                            }
                            actor.launch(job, ctx);
                            if let Some(caller) = cancel {
                                actor.cancel_locally(&job_id, caller);
                            }
                        }
                    }
                    Err(error) => tracing::error!(%error, "could not claim jobs"),
                }
                actor.publish_gauges();
            }),
        ))
    }

    /// Kills a run this node holds because `caller` cancelled it (through another node).
    fn cancel_locally(&mut self, job_id: &JobId, caller: String) {
        if let Some(running) = self.running.get_mut(job_id) {
            if running.cancel.is_none() {
                tracing::info!(%job_id, %caller, "cancel requested through another node");
                running.cancel = Some((caller, Vec::new()));
            }
            running.kill_switch.kill();
        }
    }

    /// Kills a run whose lease this node no longer holds; its outcome will not be stored.
    fn drop_lost(&mut self, job_id: &JobId) {
        if let Some(running) = self.running.get_mut(job_id) {
            if !running.lost {
                tracing::warn!(%job_id, "lease lost; killing this node's run");
                running.lost = true;
            }
            running.kill_switch.kill();
        }
    }
}

impl Handler<Heartbeat> for TranscodeActor {
    // Not atomic: the actor keeps answering while a renewal waits on the database.
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Heartbeat, _: &mut Self::Context) -> Self::Result {
        let Some(leasing) = self.leasing.clone() else {
            return Box::pin(actix::fut::ready(()));
        };
        let held: Vec<JobId> = self
            .running
            .iter()
            .filter(|(_, running)| !running.lost)
            .map(|(id, _)| id.clone())
            .collect();
        let repo = self.repo.clone();
        let asked = held.clone();
        Box::pin(
            async move {
                if asked.is_empty() {
                    return Ok(Vec::new());
                }
                let until = OffsetDateTime::now_utc() + leasing.lease;
                blocking(&repo, move |repo| {
                    repo.renew_leases(&leasing.node, &asked, until)
                })
                .await
            }
            .into_actor(self)
            .map(move |renewed, actor, _| match renewed {
                Ok(still_held) => {
                    actor.renewed_at = Instant::now();
                    for job_id in &held {
                        match still_held.iter().find(|(id, _)| id == job_id) {
                            Some((_, Some(caller))) => actor.cancel_locally(job_id, caller.clone()),
                            Some((_, None)) => {}
                            None => actor.drop_lost(job_id),
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "could not renew job leases");
                    let lease = actor
                        .leasing
                        .as_ref()
                        .map_or(Duration::ZERO, |leasing| leasing.lease);
                    // Past the lease another node may have taken the jobs over: stop ours.
                    if actor.renewed_at.elapsed() >= lease {
                        for job_id in &held {
                            actor.drop_lost(job_id);
                        }
                    }
                }
            }),
        )
    }
}

/// A cancel of a job this node does not run (records on Postgres): a queued job is cancelled
/// in the store; for a running one the request goes on its lease, and this waits until the
/// node running it (or one that took it over) has ended it, asking again if a retry re-queued
/// it meanwhile.
pub(super) async fn cancel_through_store(
    repo: SharedRepo,
    job_id: JobId,
    caller: String,
    wait_at_most: Duration,
) -> Result<(CancelRequest, bool), TranscodeError> {
    let started = Instant::now();
    let mut asked_once = false;
    loop {
        let (id, who) = (job_id.clone(), caller.clone());
        let answer = blocking(&repo, move |repo| {
            repo.request_cancel(&id, &who, OffsetDateTime::now_utc())
        })
        .await?;
        match answer {
            CancelRequest::Requested(_) => {}
            // A run of ours ended it: report the final job as found.
            other => return Ok((other, asked_once)),
        }
        asked_once = true;
        // Wait for the holder to end the run, while the request stands on the lease.
        loop {
            if started.elapsed() >= wait_at_most {
                return Err(TranscodeError::Interrupted);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let id = job_id.clone();
            let Some(job) = blocking(&repo, move |repo| repo.get_job(&id)).await? else {
                return Err(TranscodeError::NotFound(job_id));
            };
            if job.state.is_final() {
                return Ok((CancelRequest::Final(job), true));
            }
            let pending = job.state == JobState::Running
                && job
                    .lease
                    .as_ref()
                    .is_some_and(|lease| lease.cancel_requested_by.is_some());
            if !pending {
                // Re-queued or claimed afresh without the request: ask again.
                break;
            }
        }
    }
}
