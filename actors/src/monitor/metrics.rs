//! The metrics registry. The monitor actor owns it; hot paths (the HTTP middleware, upload
//! streaming) hold cheap clones of individual metrics and bump them directly, as atomics.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use super::names;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    pub actor_up: IntGaugeVec,
    pub actor_restarts: IntCounterVec,
    pub uploads: IntCounterVec,
    pub upload_bytes: IntCounter,
    pub transcode_jobs: IntCounterVec,
    pub job_duration: HistogramVec,
    pub ffmpeg_failures: IntCounterVec,
    pub transcode_speed: prometheus::Histogram,
    pub jobs: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                names::HTTP_REQUESTS_TOTAL,
                "HTTP requests answered, by route pattern, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                names::HTTP_REQUEST_DURATION_SECONDS,
                "Time to answer an HTTP request, by route pattern and method.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route", "method"],
        )?;
        let http_in_flight = IntGauge::new(
            names::HTTP_REQUESTS_IN_FLIGHT,
            "HTTP requests being answered right now.",
        )?;
        let actor_up = IntGaugeVec::new(
            Opts::new(
                names::ACTOR_UP,
                "1 when the actor answered its last liveness ping, else 0.",
            ),
            &["actor"],
        )?;
        let actor_restarts = IntCounterVec::new(
            Opts::new(
                names::ACTOR_RESTARTS_TOTAL,
                "Times the supervisor restarted an actor after a panic or stop.",
            ),
            &["actor"],
        )?;
        let uploads = IntCounterVec::new(
            Opts::new(names::UPLOADS_TOTAL, "Uploads by outcome."),
            &["outcome"],
        )?;
        let upload_bytes =
            IntCounter::new(names::UPLOAD_BYTES_TOTAL, "Bytes of uploaded files stored.")?;
        let transcode_jobs = IntCounterVec::new(
            Opts::new(
                names::TRANSCODE_JOBS_TOTAL,
                "Transcode jobs ended, by outcome.",
            ),
            &["outcome"],
        )?;
        let job_duration = HistogramVec::new(
            HistogramOpts::new(
                names::JOB_DURATION_SECONDS,
                "Wall time of one job run, by kind and outcome (succeeded, failed, retrying, cancelled, interrupted).",
            )
            .buckets(vec![
                0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
            ]),
            &["kind", "outcome"],
        )?;
        let ffmpeg_failures = IntCounterVec::new(
            Opts::new(
                names::FFMPEG_FAILURES_TOTAL,
                "ffmpeg or ffprobe runs that failed, by reason (undecodable input or a failed run).",
            ),
            &["reason"],
        )?;
        let transcode_speed = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                names::TRANSCODE_SPEED_RATIO,
                "Encode speed of finished transcodes: media seconds per wall second (× realtime).",
            )
            .buckets(vec![
                0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0,
            ]),
        )?;
        let jobs = IntGaugeVec::new(
            Opts::new(names::JOBS, "Jobs by state, as the queue sees them."),
            &["state"],
        )?;

        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(http_in_flight.clone()))?;
        registry.register(Box::new(actor_up.clone()))?;
        registry.register(Box::new(actor_restarts.clone()))?;
        registry.register(Box::new(uploads.clone()))?;
        registry.register(Box::new(upload_bytes.clone()))?;
        registry.register(Box::new(transcode_jobs.clone()))?;
        registry.register(Box::new(job_duration.clone()))?;
        registry.register(Box::new(ffmpeg_failures.clone()))?;
        registry.register(Box::new(transcode_speed.clone()))?;
        registry.register(Box::new(jobs.clone()))?;

        Ok(Self {
            registry,
            http_requests,
            http_duration,
            http_in_flight,
            actor_up,
            actor_restarts,
            uploads,
            upload_bytes,
            transcode_jobs,
            job_duration,
            ffmpeg_failures,
            transcode_speed,
            jobs,
        })
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
