//! Every metric name StreamGate exports. Dashboards and alert rules use only these.

pub const HTTP_REQUESTS_TOTAL: &str = "streamgate_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "streamgate_http_request_duration_seconds";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "streamgate_http_requests_in_flight";
pub const ACTOR_UP: &str = "streamgate_actor_up";
pub const ACTOR_RESTARTS_TOTAL: &str = "streamgate_actor_restarts_total";
pub const UPLOADS_TOTAL: &str = "streamgate_uploads_total";
pub const UPLOAD_BYTES_TOTAL: &str = "streamgate_upload_bytes_total";
pub const TRANSCODE_JOBS_TOTAL: &str = "streamgate_transcode_jobs_total";
pub const JOB_DURATION_SECONDS: &str = "streamgate_job_duration_seconds";
pub const FFMPEG_FAILURES_TOTAL: &str = "streamgate_ffmpeg_failures_total";
pub const TRANSCODE_SPEED_RATIO: &str = "streamgate_transcode_speed_ratio";
pub const JOBS: &str = "streamgate_jobs";

/// Label values for [`UPLOADS_TOTAL`]'s `outcome`.
pub mod upload_outcome {
    pub const FINISHED: &str = "finished";
    pub const REJECTED: &str = "rejected";
}
