//! Operator subcommands of the one binary: `check`, `backup`, `restore`, `reindex`,
//! `retranscode`, `rotate-secret`, and the blob half of `migrate`.
//!
//! Exit codes scripts can trust: 0 done; 1 failed (a check did not pass, I/O, the server
//! refused); 2 the configuration or command line is invalid; 3 refused because a precondition
//! does not hold (a non-empty data directory, the store in use by a running server, no `--yes`).
//! Commands that open the record store need the server stopped (the store is single-process);
//! `backup` asks a running server to take the snapshot itself, `retranscode` works through the
//! running server's admin API.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use streamgate_actors::{
    auth::Keys,
    backup::{self, BackupPlan, Manifest, Progress},
    blobs::BlobStore,
    config::BlobBackend,
    outbound::Outbound,
    search::SearchIndex,
    store::{SharedRepo, SledStore},
};

use crate::Config;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;
pub const EXIT_REFUSED: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A precondition does not hold; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

impl OpsError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused(_) => EXIT_REFUSED,
            Self::Failed(_) => EXIT_FAILED,
        }
    }
}

fn failed(what: &str) -> impl Fn(&dyn std::fmt::Display) -> OpsError + '_ {
    move |error| OpsError::Failed(format!("{what}: {error}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, OpsError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("cannot start the async runtime")(&e))
}

/// A progress bar on stderr (drawn only on a terminal) and the callback that drives it.
fn progress_bar() -> (ProgressBar, Progress) {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} {eta}") {
        bar.set_style(style);
    }
    let driven = bar.clone();
    let progress: Progress = Arc::new(move |stage: &str, done: u64, total: u64| {
        driven.set_message(stage.to_string());
        driven.set_length(total.max(done));
        driven.set_position(done);
    });
    (bar, progress)
}

/// Opens the record store; a running server holds its lock, so this refuses then.
fn open_store(config: &Config) -> Result<SharedRepo, OpsError> {
    let path = config.storage.data_dir.join("db");
    if SledStore::in_use(&path) {
        return Err(OpsError::Refused(format!(
            "the record store {} is in use by a running server: stop it first",
            path.display()
        )));
    }
    SledStore::open_with_cache(&path, config.storage.record_cache_mb.max(1) << 20)
        .map(|store| Arc::new(store) as SharedRepo)
        .map_err(|error| {
            OpsError::Refused(format!(
                "cannot open the record store {} ({error}); is the server running? Stop it first",
                path.display()
            ))
        })
}

fn blob_store(config: &Config) -> Result<BlobStore, OpsError> {
    match config.storage.blobs {
        BlobBackend::Local => BlobStore::local(config.storage.data_dir.join("blobs")),
        BlobBackend::S3 => {
            let outbound =
                Outbound::new(&config.tls).map_err(|e| failed("tls.extra_ca_file")(&e))?;
            BlobStore::s3(&config.s3, outbound.extra_ca_pem())
        }
    }
    .map_err(|e| failed("cannot open the blob store")(&e))
}

/// The running server's base URL: `--url`, else `server.bind` (a wildcard address on loopback).
pub fn server_url(config: &Config, url: Option<&str>) -> String {
    if let Some(url) = url {
        return url.trim_end_matches('/').to_string();
    }
    let bind = config
        .server
        .bind
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("http://{bind}")
}

fn admin_token(config: &Config, token: Option<&str>) -> Result<String, OpsError> {
    let token = token.unwrap_or(&config.auth.admin_token);
    if token.is_empty() {
        return Err(OpsError::Refused(
            "this needs the admin token: set auth.admin_token or pass --admin-token".into(),
        ));
    }
    Ok(token.to_string())
}

fn client(config: &Config, timeout: Duration) -> Result<reqwest::Client, OpsError> {
    Outbound::new(&config.tls)
        .and_then(|outbound| outbound.client(timeout))
        .map_err(|e| failed("cannot build the HTTP client")(&e))
}

/// An error with its causes (reqwest hides why a connection failed, e.g. the TLS reason).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// check

struct Report {
    failures: usize,
}

impl Report {
    fn line(&mut self, ok: bool, what: &str, detail: &str) {
        println!("{} {what}: {detail}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.failures += 1;
        }
    }
}

/// Validates what the configuration points at: data dir, ffmpeg, RPC per chain, S3, webhooks.
pub fn check(config: &Config) -> Result<(), OpsError> {
    let mut report = Report { failures: 0 };
    report.line(true, "configuration", "valid");
    let dir = &config.storage.data_dir;
    let min_free = config.storage.min_free_disk_mb.saturating_mul(1 << 20);
    match data_dir_writable(dir) {
        Ok(free) => report.line(
            free >= min_free,
            "data dir",
            &format!(
                "{} writable, {} MiB free (minimum {} MiB)",
                dir.display(),
                free >> 20,
                min_free >> 20
            ),
        ),
        Err(error) => report.line(false, "data dir", &format!("{}: {error}", dir.display())),
    }
    for (name, path) in [
        ("ffmpeg", &config.transcode.ffmpeg_path),
        ("ffprobe", &config.transcode.ffprobe_path),
    ] {
        match std::process::Command::new(path).arg("-version").output() {
            Ok(output) if output.status.success() => {
                let first = String::from_utf8_lossy(&output.stdout);
                report.line(true, name, first.lines().next().unwrap_or_default());
            }
            Ok(output) => report.line(false, name, &format!("{path} -version: {}", output.status)),
            Err(error) => report.line(false, name, &format!("cannot run {path}: {error}")),
        }
    }
    let outbound = match Outbound::new(&config.tls) {
        Ok(outbound) => {
            report.line(
                true,
                "tls",
                &format!("{} trusted roots", outbound.trusted_roots()),
            );
            Some(outbound)
        }
        Err(error) => {
            report.line(false, "tls", &error.to_string());
            None
        }
    };
    let runtime = runtime()?;
    runtime.block_on(async {
        if let Some(outbound) = &outbound {
            reach_outside(config, outbound, &mut report).await;
        }
        if config.storage.blobs == BlobBackend::S3 {
            let extra_ca = outbound.as_ref().and_then(Outbound::extra_ca_pem);
            let checked = match BlobStore::s3(&config.s3, extra_ca) {
                Ok(blobs) => blobs.check().await.map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            let bucket = &config.s3.bucket;
            match checked {
                Ok(()) => report.line(true, "s3", &format!("bucket {bucket} writable")),
                Err(error) => report.line(false, "s3", &format!("bucket {bucket}: {error}")),
            }
        }
    });
    match report.failures {
        0 => Ok(()),
        n => Err(OpsError::Failed(format!("{n} check(s) failed"))),
    }
}

fn data_dir_writable(dir: &Path) -> Result<u64, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let probe = dir.join(".check-probe");
    std::fs::write(&probe, b"ok").map_err(|e| format!("not writable: {e}"))?;
    let _ = std::fs::remove_file(&probe);
    let stats = rustix::fs::statvfs(dir).map_err(|e| format!("statvfs: {e}"))?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

async fn reach_outside(config: &Config, outbound: &Outbound, report: &mut Report) {
    let timeout = Duration::from_millis(config.auth.rpc_timeout_ms);
    let Ok(client) = outbound.client(timeout) else {
        report.line(false, "tls", "cannot build the HTTP client");
        return;
    };
    for rpc in &config.auth.rpc {
        let what = format!("rpc chain {}", rpc.chain_id);
        let asked = client
            .post(&rpc.url)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}))
            .send()
            .await;
        let answer = match asked {
            Ok(response) => response.json::<Value>().await.map_err(|e| chain(&e)),
            Err(error) => Err(chain(&error)),
        };
        let chain_id = answer.as_ref().ok().and_then(|a| {
            a["result"]
                .as_str()
                .and_then(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
        });
        match (answer, chain_id) {
            (_, Some(id)) if id == rpc.chain_id => {
                report.line(true, &what, &format!("{} answers chain {id}", rpc.url));
            }
            (_, Some(id)) => report.line(
                false,
                &what,
                &format!("{} is chain {id}, not {}", rpc.url, rpc.chain_id),
            ),
            (Ok(answer), None) => report.line(
                false,
                &what,
                &format!("{}: unexpected answer {answer}", rpc.url),
            ),
            (Err(error), None) => report.line(false, &what, &format!("{}: {error}", rpc.url)),
        }
    }
    let mut endpoints: Vec<(&str, String)> = config
        .monitor
        .alert_webhooks
        .iter()
        .map(|url| ("webhook", url.clone()))
        .collect();
    if !config.monitor.otlp_endpoint.is_empty() {
        let endpoint = config.monitor.otlp_endpoint.trim_end_matches('/');
        endpoints.push(("otlp", format!("{endpoint}/v1/traces")));
    }
    // Reachable means an HTTP answer of any status: a test POST would raise a false alert.
    for (what, url) in endpoints {
        match client.head(&url).send().await {
            Ok(response) => report.line(
                true,
                what,
                &format!("{url} reachable (HTTP {})", response.status().as_u16()),
            ),
            Err(error) => report.line(false, what, &format!("{url}: {}", chain(&error))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// backup / restore

fn summary(manifest: &Manifest) -> String {
    let blobs = if manifest.blobs_included {
        format!(
            "{} blobs ({} MiB)",
            manifest.blob_files,
            manifest.blob_bytes >> 20
        )
    } else {
        format!("blobs referenced in s3 bucket {}", manifest.s3_bucket)
    };
    format!(
        "{} records, {} partial uploads, {blobs}",
        manifest.records, manifest.partial_files
    )
}

/// Backs up into `out`: through the running server (at `url`) when one holds the data dir's
/// store, else directly.
pub fn backup(
    config: &Config,
    out: &Path,
    with_blobs: bool,
    url: Option<&str>,
    token: Option<&str>,
) -> Result<(), OpsError> {
    if out.exists() {
        return Err(OpsError::Refused(format!(
            "{} exists already: back up into a new directory",
            out.display()
        )));
    }
    let runtime = runtime()?;
    let base = server_url(config, url);
    let manifest = if SledStore::in_use(&config.storage.data_dir.join("db")) {
        eprintln!("the server at {base} is running: it takes the snapshot");
        runtime.block_on(backup_online(config, &base, out, with_blobs, token))?
    } else {
        let repo = open_store(config)?;
        let plan = BackupPlan {
            repo,
            blobs: blob_store(config)?,
            backend: config.storage.blobs,
            s3_bucket: config.s3.bucket.clone(),
            s3_endpoint: config.s3.endpoint.clone(),
            partial_dir: streamgate_actors::config::partial_dir(
                &config.storage.data_dir,
                &config.upload.partial_dir,
            ),
            out: out.to_path_buf(),
            with_blobs,
        };
        let (bar, progress) = progress_bar();
        let done = runtime.block_on(backup::backup(plan, progress));
        bar.finish_and_clear();
        done.map_err(|e| failed("backup failed")(&e))?
    };
    println!("backed up to {}: {}", out.display(), summary(&manifest));
    Ok(())
}

async fn backup_online(
    config: &Config,
    base: &str,
    out: &Path,
    with_blobs: bool,
    token: Option<&str>,
) -> Result<Manifest, OpsError> {
    let token = admin_token(config, token)?;
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("the server is taking the snapshot");
    spinner.enable_steady_tick(Duration::from_millis(200));
    let response = client(config, Duration::from_secs(24 * 3600))?
        .post(format!("{base}/api/v1/admin/backups"))
        .bearer_auth(token)
        .json(&json!({"with_blobs": with_blobs}))
        .send()
        .await;
    spinner.finish_and_clear();
    let response = response.map_err(|e| failed("the server did not answer")(&chain(&e)))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(OpsError::Failed(format!(
            "the server refused the backup: HTTP {} {}",
            status.as_u16(),
            body
        )));
    }
    let name = body["name"]
        .as_str()
        .ok_or_else(|| OpsError::Failed(format!("unexpected answer {body}")))?;
    let made = backups_dir(config).join(name);
    move_dir(&made, out)?;
    backup::read_manifest(out).map_err(|e| failed("the backup is incomplete")(&e))
}

/// Where a running server writes the backups it is asked for (then moved to `--out`).
pub fn backups_dir(config: &Config) -> PathBuf {
    config.storage.data_dir.join("backups")
}

fn move_dir(from: &Path, to: &Path) -> Result<(), OpsError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| failed("cannot create the target")(&e))?;
    }
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    // Another filesystem: copy, then remove the server's copy.
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| failed("cannot copy the backup")(&e))?;
    if !status.success() {
        return Err(OpsError::Failed(format!(
            "cannot copy {} to {}",
            from.display(),
            to.display()
        )));
    }
    std::fs::remove_dir_all(from).map_err(|e| failed("cannot remove the server's copy")(&e))
}

/// Restores a backup into the configured, empty data directory.
pub fn restore(config: &Config, from: &Path) -> Result<(), OpsError> {
    let data_dir = &config.storage.data_dir;
    let empty = backup::is_empty_dir(data_dir).map_err(|e| failed("data dir")(&e))?;
    if !empty {
        return Err(OpsError::Refused(format!(
            "{} is not empty: restore only into an empty data directory",
            data_dir.display()
        )));
    }
    let manifest = backup::read_manifest(from).map_err(|e| failed("cannot restore")(&e))?;
    if !manifest.blobs_included && config.storage.blobs == BlobBackend::Local {
        eprintln!(
            "warning: the backup's blobs stay in s3 bucket {} ({}); set storage.blobs = \"s3\" \
             and [s3] to serve them",
            manifest.s3_bucket, manifest.s3_endpoint
        );
    }
    let runtime = runtime()?;
    let (bar, progress) = progress_bar();
    let partial_dir = streamgate_actors::config::partial_dir(data_dir, &config.upload.partial_dir);
    let done = runtime.block_on(backup::restore(
        from,
        data_dir,
        &partial_dir,
        || blob_store(config).map_err(|e| e.to_string()),
        progress,
    ));
    bar.finish_and_clear();
    let manifest = done.map_err(|e| failed("restore failed")(&e))?;
    println!(
        "restored {} into {}: {}; the search index is rebuilt at the next start",
        from.display(),
        data_dir.display(),
        summary(&manifest)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// reindex, rotate-secret, retranscode

/// Deletes the search index and builds it again from the records.
pub fn reindex(config: &Config) -> Result<(), OpsError> {
    let repo = open_store(config)?;
    let dir = config.storage.data_dir.join("search");
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed("cannot remove the old index")(&error)),
    }
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("indexing {} records", repo.record_count()));
    spinner.enable_steady_tick(Duration::from_millis(200));
    let built = SearchIndex::open(&dir, &repo).and_then(|(index, report)| {
        index.commit()?;
        Ok(report)
    });
    spinner.finish_and_clear();
    let report = built.map_err(|e| failed("reindex failed")(&e))?;
    println!(
        "search index rebuilt in {}: {} media records",
        dir.display(),
        report.indexed
    );
    Ok(())
}

/// Replaces the stored session secret; every session and playback token dies.
pub fn rotate_secret(config: &Config, yes: bool) -> Result<(), OpsError> {
    if !config.auth.session_secret.is_empty() {
        return Err(OpsError::Refused(
            "auth.session_secret is set in the configuration: change it there and restart".into(),
        ));
    }
    eprintln!(
        "warning: rotating the session secret ends every session and playback token: everyone \
         signs in again and players refetch their playlists. The server must be stopped."
    );
    if !yes {
        return Err(OpsError::Refused(
            "nothing changed; run again with --yes to rotate".into(),
        ));
    }
    let repo = open_store(config)?;
    Keys::rotate_stored(&repo).map_err(|e| failed("cannot store the new secret")(&e))?;
    println!("session secret rotated; old sessions are refused from the next start on");
    Ok(())
}

/// Queues a transcode job for each media item (all, or `media`) on the running server, after a
/// ladder change.
pub fn retranscode(
    config: &Config,
    all: bool,
    media: &[String],
    url: Option<&str>,
    token: Option<&str>,
) -> Result<(), OpsError> {
    let token = admin_token(config, token)?;
    let base = server_url(config, url);
    let client = client(config, Duration::from_secs(60))?;
    runtime()?.block_on(async {
        let ids = if all {
            list_media(&client, &base, &token).await?
        } else {
            media.to_vec()
        };
        let (bar, progress) = progress_bar();
        let (mut queued, mut skipped, mut errors) = (0, 0, Vec::new());
        for (done, id) in ids.iter().enumerate() {
            let response = client
                .post(format!("{base}/api/v1/jobs"))
                .bearer_auth(&token)
                .json(&json!({"kind": "transcode", "media_id": id}))
                .send()
                .await
                .map_err(|e| failed("the server did not answer")(&chain(&e)))?;
            match response.status().as_u16() {
                200..=299 => queued += 1,
                // A job for it is queued or running already.
                409 => skipped += 1,
                status => {
                    let body = response.text().await.unwrap_or_default();
                    errors.push(format!("{id}: HTTP {status} {body}"));
                }
            }
            progress("media", done as u64 + 1, ids.len() as u64);
        }
        bar.finish_and_clear();
        println!(
            "queued {queued} transcode jobs, {skipped} skipped (already active), {} failed",
            errors.len()
        );
        for error in &errors {
            eprintln!("{error}");
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err(OpsError::Failed(format!(
                "{} media could not be queued",
                errors.len()
            ))),
        }
    })
}

/// Every media id the server lists that is not being uploaded or processed.
async fn list_media(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> Result<Vec<String>, OpsError> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client
            .get(format!("{base}/api/v1/media"))
            .bearer_auth(token)
            .query(&[("limit", "100")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor.as_str())]);
        }
        let response = request
            .send()
            .await
            .map_err(|e| failed("the server did not answer")(&chain(&e)))?;
        if !response.status().is_success() {
            return Err(OpsError::Failed(format!(
                "listing media: HTTP {}",
                response.status().as_u16()
            )));
        }
        let page: Value = response
            .json()
            .await
            .map_err(|e| failed("listing media")(&e))?;
        for item in page["items"].as_array().into_iter().flatten() {
            let busy = matches!(item["state"].as_str(), Some("uploading" | "processing"));
            if let (Some(id), false) = (item["id"].as_str(), busy) {
                ids.push(id.to_string());
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(ids),
        }
    }
}

/// `migrate --to postgres`, after the records: copies the local blobs into the configured S3
/// store (`storage.blobs = "s3"`) and partial resumable uploads into `upload.partial_dir` when
/// that names another directory. Both skip what the target already holds, so a re-run after an
/// interruption copies only the rest. Returns (blobs copied, blobs already there).
pub fn migrate_blobs(config: &Config) -> Result<(u64, u64), OpsError> {
    let data_dir = &config.storage.data_dir;
    let partials = data_dir.join("partials");
    let shared = streamgate_actors::config::partial_dir(data_dir, &config.upload.partial_dir);
    if shared != partials && partials.is_dir() {
        copy_partials(&partials, &shared)?;
    }
    if config.storage.blobs != BlobBackend::S3 {
        return Ok((0, 0));
    }
    let source = BlobStore::local(data_dir.join("blobs"))
        .map_err(|e| failed("cannot open the local blobs")(&e))?;
    let target = blob_store(config)?;
    let (bar, progress) = progress_bar();
    let mut report = move |done: u64, total: u64| progress("blobs", done, total);
    let copied = runtime()?
        .block_on(source.copy_missing_to(&target, &mut report))
        .map_err(|e| failed("copying blobs to S3")(&e));
    bar.finish_and_clear();
    let copied = copied?;
    Ok((copied.copied, copied.present))
}

/// Copies each partial upload file missing (or shorter) in `to`; a longer one there is newer.
fn copy_partials(from: &Path, to: &Path) -> Result<(), OpsError> {
    std::fs::create_dir_all(to).map_err(|e| failed("upload.partial_dir")(&e))?;
    let entries = std::fs::read_dir(from).map_err(|e| failed("partial uploads")(&e))?;
    for entry in entries {
        let entry = entry.map_err(|e| failed("partial uploads")(&e))?;
        let target = to.join(entry.file_name());
        let length = |path: &Path| std::fs::metadata(path).map(|m| m.len()).ok();
        if length(&target) >= length(&entry.path()) {
            continue;
        }
        // Whole or not at all: a copy under a temporary name, then a rename.
        let staging = to.join(format!(
            ".{}.migrating",
            entry.file_name().to_string_lossy()
        ));
        std::fs::copy(entry.path(), &staging)
            .and_then(|_| std::fs::rename(&staging, &target))
            .map_err(|e| failed("copying a partial upload")(&e))?;
    }
    Ok(())
}
