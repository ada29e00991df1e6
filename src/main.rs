//! The `streamgate` binary: command line → configuration → logging → [`streamgate::run`].

use std::{net::TcpListener, path::PathBuf, process::ExitCode};

use clap::Parser;
use streamgate::config::{self, LogFormat, Sources};
use streamgate_actors::monitor::logs::{level_from_str, LogRing, RequestTagged};
use tracing_subscriber::{filter::LevelFilter, EnvFilter};

/// A self-hostable video platform: upload, transcode to HLS, stream.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// A TOML file layered over the built-in defaults (config/default.toml lists every key).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (server.bind).
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Where records and blobs live (storage.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Any key as section.key=value; repeatable, applied last.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Print the effective configuration's validity and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Copy this install's records (storage.data_dir/db) into the configured [postgres]
    /// database; safe to re-run, refused while a server holds the data directory.
    Migrate {
        /// The record backend to copy into.
        #[arg(long, value_enum)]
        to: MigrateTarget,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MigrateTarget {
    Postgres,
}

fn main() -> ExitCode {
    streamgate_actors::monitor::process::tune_allocator();
    let cli = Cli::parse();
    let mut overrides = Vec::new();
    if let Some(bind) = &cli.bind {
        overrides.push(format!("server.bind={}", toml_string(bind)));
    }
    if let Some(dir) = &cli.data_dir {
        overrides.push(format!(
            "storage.data_dir={}",
            toml_string(&dir.display().to_string())
        ));
    }
    overrides.extend(cli.overrides.iter().cloned());
    let sources = Sources {
        file: cli.config.clone(),
        overrides,
        ..Sources::default()
    }
    .with_process_env();
    let config = match config::load(&sources) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("streamgate: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Migrate {
        to: MigrateTarget::Postgres,
    }) = cli.command
    {
        return migrate_to_postgres(&config);
    }
    init_logging(&config);
    let listener = match TcpListener::bind(&config.server.bind) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "streamgate: cannot listen on {}: {error}",
                config.server.bind
            );
            return ExitCode::from(1);
        }
    };
    let outcome = actix_rt::System::new().block_on(streamgate::run(config, listener));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("streamgate: {error}");
            ExitCode::from(1)
        }
    }
}

/// Copies the sled records into Postgres, printing each relation's running count.
fn migrate_to_postgres(config: &config::Config) -> ExitCode {
    use std::io::Write;
    if config.postgres.url.is_empty() {
        eprintln!("streamgate: migrate --to postgres needs postgres.url");
        return ExitCode::from(2);
    }
    let mut stderr = std::io::stderr();
    let mut current = "";
    let mut progress = |relation: &'static str, records: usize| {
        // One line per relation, rewritten in place as its count grows.
        let start = if current.is_empty() || current == relation {
            "\r"
        } else {
            "\n"
        };
        current = relation;
        let _ = write!(stderr, "{start}{relation}: {records} copied\x1b[K");
        let _ = stderr.flush();
    };
    let outcome = streamgate_actors::store::copy_sled_to_postgres(
        &config.storage.data_dir,
        &config.postgres.url,
        &mut progress,
    );
    eprintln!();
    match outcome {
        Ok(report) => {
            for copied in report {
                println!("{}: {}", copied.relation, copied.records);
            }
            println!("migrated; start with storage.records = \"postgres\"");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("streamgate: {error}");
            ExitCode::from(1)
        }
    }
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// Logs to stdout (text or JSON) and into the monitor's ring of recent events, which
/// `/api/v1/monitor/logs` serves.
fn init_logging(config: &config::Config) {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let level = &config.server.log_level;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ring = LogRing::global(config.monitor.log_ring_capacity);
    let ring_level = level_from_str(&config.monitor.log_ring_level).unwrap_or(tracing::Level::INFO);
    // Lines logged while a request is polled get its ids (no span per request, see
    // `RequestTagged`).
    let fmt = match config.server.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .map_event_format(RequestTagged)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .map_event_format(RequestTagged)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(
            ring.layer(ring_level)
                .with_filter(LevelFilter::from_level(ring_level)),
        )
        .init();
}
