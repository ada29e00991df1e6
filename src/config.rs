//! Configuration: the sections each crate owns, composed and loaded in layers.
//!
//! defaults (`config/default.toml`, compiled in) ← `--config FILE` ← `STREAMGATE__SECTION__KEY`
//! environment variables ← command-line overrides. Every layer above the defaults may only set
//! keys the defaults document; anything else is an error naming the key and its source.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use streamgate_actors::config::{
    ActorsConfig, AuditConfig, AuthConfig, CacheConfig, HttpConfig, MonitorConfig, PostgresConfig,
    RateLimitConfig, S3Config, StorageConfig, TlsConfig, TranscodeConfig, UploadConfig,
    WebhookConfig,
};
use toml::{Table, Value};

pub const DEFAULTS: &str = include_str!("../config/default.toml");
const ENV_PREFIX: &str = "STREAMGATE__";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub bind: String,
    pub workers: usize,
    pub shutdown_timeout_s: u64,
    pub keep_alive_s: u64,
    pub first_request_timeout_s: u64,
    pub send_timeout_s: u64,
    pub body_timeout_s: u64,
    pub max_connections_per_worker: usize,
    pub listen_backlog: u32,
    pub sendfile: bool,
    pub send_budget_kib: usize,
    pub write_chunk_max_kib: usize,
    pub log_format: LogFormat,
    pub log_level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub webhooks: Vec<WebhookConfig>,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub s3: S3Config,
    pub postgres: PostgresConfig,
    pub upload: UploadConfig,
    pub transcode: TranscodeConfig,
    pub auth: AuthConfig,
    pub monitor: MonitorConfig,
    pub rate_limit: RateLimitConfig,
    pub http: HttpConfig,
    pub cache: CacheConfig,
    pub audit: AuditConfig,
    pub tls: TlsConfig,
}

impl Config {
    pub fn actors(&self) -> ActorsConfig {
        ActorsConfig {
            webhooks: self.webhooks.clone(),
            storage: self.storage.clone(),
            s3: self.s3.clone(),
            postgres: self.postgres.clone(),
            upload: self.upload.clone(),
            transcode: self.transcode.clone(),
            auth: self.auth.clone(),
            monitor: self.monitor.clone(),
            cache: self.cache.clone(),
            audit: self.audit.clone(),
            tls: self.tls.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path} is not valid TOML: {reason}")]
    Syntax { path: String, reason: String },
    #[error(
        "unknown config key `{key}` (from {source_name}); see config/default.toml for every key"
    )]
    UnknownKey { key: String, source_name: String },
    #[error("config key `{key}` (from {source_name}): expected {expected}")]
    WrongType {
        key: String,
        source_name: String,
        expected: &'static str,
    },
    #[error("override `{0}` must look like section.key=value")]
    BadOverride(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Where the layers above the defaults come from.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    /// Environment variables; only `STREAMGATE__*` ones are read.
    pub env: Vec<(String, String)>,
    /// `section.key=value` pairs, applied last.
    pub overrides: Vec<String>,
}

impl Sources {
    /// Reads the process environment.
    pub fn with_process_env(mut self) -> Self {
        self.env = std::env::vars().collect();
        self
    }
}

/// Loads the configuration from the defaults and `sources`.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let mut merged: Table = toml::from_str(DEFAULTS).map_err(|e| ConfigError::Syntax {
        path: "config/default.toml".into(),
        reason: e.to_string(),
    })?;
    let defaults = merged.clone();

    if let Some(path) = &sources.file {
        let layer = read_file(path)?;
        merge(
            &defaults,
            &mut merged,
            layer,
            "",
            &format!("file {}", path.display()),
        )?;
    }
    let mut env: Vec<&(String, String)> = sources
        .env
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    for (name, raw) in env {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        set(
            &defaults,
            &mut merged,
            &path,
            raw,
            &format!("environment variable {name}"),
        )?;
    }
    for item in &sources.overrides {
        let (key, raw) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::BadOverride(item.clone()))?;
        let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        set(
            &defaults,
            &mut merged,
            &path,
            raw.trim(),
            &format!("command line `{item}`"),
        )?;
    }

    let config: Config = Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
    config.actors().validate().map_err(ConfigError::Invalid)?;
    config.rate_limit.validate().map_err(ConfigError::Invalid)?;
    if config.server.max_connections_per_worker == 0 {
        return Err(ConfigError::Invalid(
            "server.max_connections_per_worker must be at least 1".into(),
        ));
    }
    if config.server.bind.parse::<std::net::SocketAddr>().is_err() {
        return Err(ConfigError::Invalid(format!(
            "server.bind {:?} is not an address like 127.0.0.1:8080",
            config.server.bind
        )));
    }
    Ok(config)
}

fn read_file(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Merges `layer` into `merged`, refusing keys the defaults do not have and values whose type
/// differs from the default's.
fn merge(
    defaults: &Table,
    merged: &mut Table,
    layer: Table,
    prefix: &str,
    source_name: &str,
) -> Result<(), ConfigError> {
    for (key, value) in layer {
        let full_key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let Some(default) = defaults.get(&key) else {
            return Err(ConfigError::UnknownKey {
                key: full_key,
                source_name: source_name.to_string(),
            });
        };
        match (default, value) {
            (Value::Table(default_table), Value::Table(layer_table)) => {
                let target = merged
                    .entry(key.clone())
                    .or_insert_with(|| Value::Table(Table::new()));
                if let Value::Table(target_table) = target {
                    merge(
                        default_table,
                        target_table,
                        layer_table,
                        &full_key,
                        source_name,
                    )?;
                }
            }
            (default, value) => {
                check_type(default, &value, &full_key, source_name)?;
                merged.insert(key, value);
            }
        }
    }
    Ok(())
}

/// Sets one dotted key from a string, parsed as a TOML value when it is one.
fn set(
    defaults: &Table,
    merged: &mut Table,
    path: &[String],
    raw: &str,
    source_name: &str,
) -> Result<(), ConfigError> {
    let full_key = path.join(".");
    let unknown = || ConfigError::UnknownKey {
        key: full_key.clone(),
        source_name: source_name.to_string(),
    };
    let (last, parents) = path.split_last().ok_or_else(unknown)?;
    let mut layer = Table::new();
    let value = parse_scalar(raw);
    let mut node = &mut layer;
    for parent in parents {
        node = match node
            .entry(parent.clone())
            .or_insert_with(|| Value::Table(Table::new()))
        {
            Value::Table(table) => table,
            _ => return Err(unknown()),
        };
    }
    node.insert(last.clone(), value);
    // A value that only parses as a string but is meant for a number is reported as such.
    merge(defaults, merged, layer, "", source_name)
}

fn parse_scalar(raw: &str) -> Value {
    format!("value = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn check_type(
    default: &Value,
    value: &Value,
    key: &str,
    source_name: &str,
) -> Result<(), ConfigError> {
    let expected = match default {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
        Value::Datetime(_) => "a date-time",
    };
    let matches = std::mem::discriminant(default) == std::mem::discriminant(value)
        || matches!((default, value), (Value::Float(_), Value::Integer(_)));
    if matches {
        Ok(())
    } else {
        Err(ConfigError::WrongType {
            key: key.to_string(),
            source_name: source_name.to_string(),
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_layers_override_in_order() {
        let config = load(&Sources::default()).unwrap();
        assert_eq!(config.server.bind, "127.0.0.1:8080");
        assert_eq!(config.transcode.ladder.len(), 4);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nbind = \"127.0.0.1:9000\"\nworkers = 3\n").unwrap();
        let sources = Sources {
            file: Some(file),
            env: vec![
                ("STREAMGATE__SERVER__WORKERS".into(), "5".into()),
                ("OTHER".into(), "x".into()),
            ],
            overrides: vec!["server.log_format=json".into()],
        };
        let config = load(&sources).unwrap();
        assert_eq!(config.server.bind, "127.0.0.1:9000");
        assert_eq!(config.server.workers, 5);
        assert_eq!(config.server.log_format, LogFormat::Json);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let env = |name: &str, value: &str| Sources {
            env: vec![(name.into(), value.into())],
            ..Sources::default()
        };
        let error = load(&env("STREAMGATE__SERVER__BINDD", "x"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("server.bindd") && error.contains("STREAMGATE__SERVER__BINDD"),
            "{error}"
        );
        let error = load(&env("STREAMGATE__SERVER__WORKERS", "many"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("server.workers") && error.contains("integer"),
            "{error}"
        );
        let error = load(&env("STREAMGATE__SERVER__MAX_CONNECTIONS_PER_WORKER", "0"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("server.max_connections_per_worker"),
            "{error}"
        );
        let error = load(&env("STREAMGATE__SERVER__LOG_FORMAT", "xml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("xml"), "{error}");
        let error = load(&env("STREAMGATE__TRANSCODE__WORKERS", "0"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("transcode.workers"), "{error}");
        for (name, value, key) in [
            (
                "STREAMGATE__RATE_LIMIT__IPV6_PREFIX_LEN",
                "129",
                "ipv6_prefix_len",
            ),
            (
                "STREAMGATE__RATE_LIMIT__MAX_TRACKED_CLIENTS",
                "0",
                "max_tracked_clients",
            ),
        ] {
            let error = load(&env(name, value)).unwrap_err().to_string();
            assert!(error.contains(&format!("rate_limit.{key}")), "{error}");
        }
        let error = load(&Sources {
            overrides: vec!["nosuch.key=1".into()],
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("nosuch.key"), "{error}");
    }

    #[test]
    fn records_move_to_postgres_through_the_environment() {
        use streamgate_actors::config::RecordBackend;
        let url = "postgres://sg:hunter2@db.internal:5432/streamgate";
        let env = |pairs: &[(&str, &str)]| Sources {
            env: pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            ..Sources::default()
        };
        assert_eq!(
            load(&Sources::default()).unwrap().storage.records,
            RecordBackend::Sled
        );
        let config = load(&env(&[
            ("STREAMGATE__STORAGE__RECORDS", "postgres"),
            ("STREAMGATE__POSTGRES__URL", url),
            ("STREAMGATE__POSTGRES__POOL_SIZE", "3"),
        ]))
        .unwrap();
        assert_eq!(config.storage.records, RecordBackend::Postgres);
        assert_eq!(config.postgres.url, url);
        assert_eq!(config.postgres.pool_size, 3);
        assert!(!format!("{config:?}").contains("hunter2"));
        let error = load(&env(&[("STREAMGATE__STORAGE__RECORDS", "postgres")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("postgres.url"), "{error}");
        let error = load(&env(&[("STREAMGATE__STORAGE__RECORDS", "mysql")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("mysql"), "{error}");
    }
}
