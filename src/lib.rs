//! StreamGate: a self-hostable video platform. This crate is the binary's library half: it loads
//! configuration ([`config`]) and runs the platform on an already bound listener ([`start`],
//! [`run`]), so tests can bind port 0 and run the real thing.

pub mod config;
pub mod ops;

use std::net::TcpListener;

use std::time::Duration;

use actix_server::ServerBuilder;
use actix_web::{dev::ServerHandle, middleware::Condition, web, App};
use streamgate_actors::{monitor::otlp::SpanExporter, transcode::StopWorkers, Actors, StartError};
use streamgate_web::{
    middleware::{self as mw, rate_limit::RateLimits},
    send_budget::SendBudget,
    serve,
};
use tracing_actix_web::TracingLogger;

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// A started platform: the HTTP server plus the actors behind it.
pub struct Running {
    pub handle: ServerHandle,
    pub actors: Actors,
    server: actix_server::Server,
}

impl Running {
    /// Runs until the server stops (SIGINT/SIGTERM or [`ServerHandle::stop`]), which drains
    /// in-flight requests; then kills any running ffmpeg so no process outlives us.
    pub async fn wait(self) -> Result<(), RunError> {
        let served = self.server.await;
        match self.actors.transcode.send(StopWorkers).await {
            Ok(killed) if killed > 0 => tracing::info!(killed, "stopped running transcodes"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "transcode actor gone at shutdown"),
        }
        tracing::info!("stopped");
        Ok(served?)
    }
}

/// Starts the actors and the HTTP server on `listener`. Must run inside an actix system.
pub fn start(config: Config, listener: TcpListener) -> Result<Running, RunError> {
    start_with_clock(
        config,
        listener,
        std::sync::Arc::new(streamgate_actors::clock::SystemClock),
    )
}

/// [`start`] with the clock auth expiries are measured against (tests move it ahead).
pub fn start_with_clock(
    config: Config,
    listener: TcpListener,
    clock: streamgate_actors::clock::SharedClock,
) -> Result<Running, RunError> {
    let actors = streamgate_actors::start_with_clock(config.actors(), clock)?;
    let data = web::Data::new(actors.clone());
    let rate_limits = RateLimits::new(
        &config.rate_limit,
        actors.metrics.clone(),
        actors.audit.clone(),
    );
    actix_rt::spawn(
        rate_limits
            .clone()
            .sweep_every(Duration::from_secs(config.rate_limit.cleanup_interval_s)),
    );
    let spans = SpanExporter::start(&config.monitor, &actors.metrics, &actors.outbound);
    if let Some(exporter) = &spans {
        actors.metrics.install_span_exporter(exporter.clone());
    }
    let observe = mw::Observe::new(
        config
            .monitor
            .http_middleware
            .then(|| actors.metrics.clone()),
        config.rate_limit.enabled.then(|| rate_limits.clone()),
    )
    // Request spans are the middleware's: no monitoring, no request spans (jobs still).
    .exporting_spans(spans.filter(|_| config.monitor.http_middleware));
    let request_spans = config.monitor.http_middleware;
    let http = config.http.clone();
    let connection_metrics = actors.metrics.clone();
    let address = listener.local_addr()?;
    // std listens with a backlog of 128; Linux takes a second listen() as the new backlog.
    rustix::net::listen(
        &listener,
        i32::try_from(config.server.listen_backlog).unwrap_or(i32::MAX),
    )
    .map_err(std::io::Error::from)?;
    let send_budget = web::Data::new(SendBudget::new(
        config.server.send_budget_kib * 1024,
        config.server.write_chunk_max_kib * 1024,
    ));
    let body_stall = mw::BodyStall::new(
        (config.server.body_timeout_s > 0)
            .then(|| Duration::from_secs(config.server.body_timeout_s)),
        actors.metrics.http_timeouts.with_label_values(&["body"]),
    );
    let app = move || {
        App::new()
            .app_data(data.clone())
            .app_data(send_budget.clone())
            // Innermost: it must wrap the router itself (see `Observe`).
            .wrap(observe.clone())
            // The request's root span, around `Observe`, which reads the trace it started.
            .wrap(Condition::new(
                request_spans,
                TracingLogger::<mw::RequestSpan>::new(),
            ))
            .wrap(mw::json_errors())
            .wrap(mw::security_headers())
            .wrap(Condition::new(mw::cors_enabled(&http), mw::cors(&http)))
            .wrap(body_stall.clone())
            .configure(streamgate_web::configure)
            .default_service(web::to(streamgate_web::not_found))
    };
    let on_connect: serve::OnConnect = std::sync::Arc::new(move |extensions| {
        extensions.insert(mw::ConnectionGuard::open(&connection_metrics));
    });
    let seconds = |seconds: u64| (seconds > 0).then(|| Duration::from_secs(seconds));
    let settings = serve::Settings {
        sendfile: config.server.sendfile,
        sendfile_bytes: actors.metrics.http_sendfile_bytes.clone(),
        send_timeouts: actors.metrics.http_timeouts.with_label_values(&["send"]),
        timeouts: serve::Timeouts {
            keep_alive: seconds(config.server.keep_alive_s),
            first_request: seconds(config.server.first_request_timeout_s),
            send: seconds(config.server.send_timeout_s),
        },
    };
    let mut builder = ServerBuilder::default()
        .shutdown_timeout(config.server.shutdown_timeout_s)
        .max_concurrent_connections(config.server.max_connections_per_worker);
    if config.server.workers > 0 {
        builder = builder.workers(config.server.workers);
    }
    let server = serve::listen(builder, listener, settings, on_connect, app)?.run();
    tracing::info!(%address, data_dir = %config.storage.data_dir.display(), "streamgate listening");
    Ok(Running {
        handle: server.handle(),
        actors,
        server,
    })
}

/// [`start`], then [`Running::wait`].
pub async fn run(config: Config, listener: TcpListener) -> Result<(), RunError> {
    start(config, listener)?.wait().await
}
