//! The `streamgate` binary: command line → configuration → logging → [`streamgate::run`], or one
//! of the operator subcommands ([`streamgate::ops`]).

use std::{net::TcpListener, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use streamgate::{
    config::{self, LogFormat, Sources},
    ops,
};
use streamgate_actors::monitor::logs::{level_from_str, LogRing, RequestTagged};
use tracing_subscriber::{filter::LevelFilter, EnvFilter};

/// A self-hostable video platform: upload, transcode to HLS, stream.
///
/// Without a subcommand it serves. Exit codes: 0 done, 1 failed, 2 invalid configuration or
/// command line, 3 refused (a precondition does not hold; nothing changed).
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
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Any key as section.key=value; repeatable, applied last.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
    /// Print the effective configuration's validity and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// How to reach a running server (for the commands that work through it).
#[derive(Debug, clap::Args)]
struct ServerAccess {
    /// Base URL of the running server; default: http:// and server.bind.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Admin bearer token; default: auth.admin_token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "STREAMGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and report what it reaches: data dir, ffmpeg, RPC per chain,
    /// S3, webhooks, OTLP. Exit 1 when a check fails.
    Check,
    /// Snapshot records and blobs into a new directory, from a running server (through its admin
    /// API) or a stopped one. Blobs on S3 are referenced, not copied, unless --with-blobs.
    Backup {
        /// The directory to create.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Copy blobs from S3 too (local blobs are always copied).
        #[arg(long)]
        with_blobs: bool,
        #[command(flatten)]
        server: ServerAccess,
    },
    /// Restore a backup into the configured data dir, which must be empty (exit 3 otherwise).
    Restore {
        /// A directory `streamgate backup` made.
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
    },
    /// Rebuild the search index from the records (server stopped).
    Reindex,
    /// Queue transcode jobs on the running server, e.g. after a ladder change.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["all", "media"])))]
    Retranscode {
        /// Every media item not being uploaded or processed.
        #[arg(long)]
        all: bool,
        /// These media ids.
        #[arg(long, value_name = "ID", num_args = 1..)]
        media: Vec<String>,
        #[command(flatten)]
        server: ServerAccess,
    },
    /// Replace the generated session secret: every session and playback token dies (server
    /// stopped). Warns and changes nothing without --yes.
    RotateSecret {
        /// Rotate for real.
        #[arg(long)]
        yes: bool,
    },
    /// Copy this install's records (storage.data_dir/db) into the configured [postgres]
    /// database, its local blobs into S3 (with storage.blobs = "s3") and partial uploads into
    /// upload.partial_dir (when set); safe to re-run, refused while a server holds the data
    /// directory.
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
            return ExitCode::from(ops::EXIT_CONFIG);
        }
    };
    if let Some(command) = cli.command {
        return run_command(&config, command);
    }
    if cli.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
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

fn run_command(config: &config::Config, command: Command) -> ExitCode {
    // Warnings from the domain (e.g. an unreadable index) go to stderr; stdout is the report.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let done = match command {
        Command::Check => ops::check(config),
        Command::Backup {
            out,
            with_blobs,
            server,
        } => ops::backup(
            config,
            &out,
            with_blobs,
            server.url.as_deref(),
            server.admin_token.as_deref(),
        ),
        Command::Restore { from } => ops::restore(config, &from),
        Command::Reindex => ops::reindex(config),
        Command::Retranscode { all, media, server } => ops::retranscode(
            config,
            all,
            &media,
            server.url.as_deref(),
            server.admin_token.as_deref(),
        ),
        Command::RotateSecret { yes } => ops::rotate_secret(config, yes),
        Command::Migrate {
            to: MigrateTarget::Postgres,
        } => return migrate_to_postgres(config),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("streamgate: {error}");
            ExitCode::from(error.exit_code())
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
            match ops::migrate_blobs(config) {
                Ok((copied, present)) => {
                    println!("blobs: {copied} copied, {present} already there");
                }
                Err(error) => {
                    eprintln!("streamgate: {error}");
                    return ExitCode::from(error.exit_code());
                }
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
