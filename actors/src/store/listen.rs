//! The change feed between nodes sharing one Postgres database: every write another node must
//! hear of sends a `NOTIFY` in the same statement or transaction as the write (so it is heard
//! only once committed, and never for a write that rolled back), and each node keeps one
//! dedicated `LISTEN` connection on a thread of its own.
//!
//! Notifications are not queued for a listener that is not connected: after the connection
//! drops (the database restarted, the network broke) the listener reconnects with backoff and
//! then reports [`Change::Resync`], so the node reloads every copy instead of trusting it.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use postgres::{fallible_iterator::FallibleIterator, Client, GenericClient, NoTls};

use super::{Change, ChangeSink, StoreError};
use crate::model::{MediaId, UploadId};

/// The channel every node listens on.
pub(super) const CHANNEL: &str = "streamgate_changes";
/// How long the listener waits for a notification before it checks its connection.
const POLL: Duration = Duration::from_millis(500);
/// A connection with no traffic is probed this often, so a half-open one is noticed.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a node says about one of its writes. The payload is `node|kind|key`; the node id lets
/// a listener skip its own writes, which it has already applied.
pub(super) enum Notice<'a> {
    Media(&'a MediaId),
    Gate(&'a MediaId),
    Revoked {
        session_id: &'a str,
        expires_at_ns: i64,
    },
    TusUpload(&'a UploadId),
}

impl Notice<'_> {
    pub(super) fn payload(&self, node: &str) -> String {
        match self {
            Notice::Media(id) => format!("{node}|m|{}", hex::encode(id.as_bytes())),
            Notice::Gate(id) => format!("{node}|g|{}", hex::encode(id.as_bytes())),
            Notice::Revoked {
                session_id,
                expires_at_ns,
            } => format!("{node}|r|{expires_at_ns}|{session_id}"),
            Notice::TusUpload(id) => format!("{node}|t|{}", hex::encode(id.as_bytes())),
        }
    }

    /// Sends the notice inside the caller's transaction: delivered at its commit.
    pub(super) fn send(
        &self,
        client: &mut impl GenericClient,
        node: &str,
    ) -> Result<(), StoreError> {
        client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.payload(node)])
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(())
    }
}

/// Parses a payload; `None` for one this node sent itself or cannot read (a newer build's).
pub(super) fn parse(payload: &str, own_node: &str) -> Option<Change> {
    let mut parts = payload.splitn(3, '|');
    let (node, kind, key) = (parts.next()?, parts.next()?, parts.next()?);
    if node == own_node {
        return None;
    }
    let bytes = || hex::decode(key).ok();
    match kind {
        "m" => MediaId::from_bytes(&bytes()?).map(Change::Media),
        "g" => MediaId::from_bytes(&bytes()?).map(Change::Gate),
        "t" => UploadId::from_bytes(&bytes()?).map(Change::TusUpload),
        "r" => {
            let (expires_ns, session_id) = key.split_once('|')?;
            let expires_at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
                expires_ns.parse::<i64>().ok()?,
            ))
            .ok()?;
            Some(Change::Revoked {
                session_id: session_id.to_string(),
                expires_at,
            })
        }
        _ => None,
    }
}

/// Starts the listener thread. Returns once the first `LISTEN` is in place, so no change made
/// after start-up's loads is missed; a later reconnect reports [`Change::Resync`].
/// The thread ends within a poll interval of `closed` being set (the store was dropped).
pub(super) fn start(
    config: postgres::Config,
    node: String,
    sink: ChangeSink,
    closed: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    let first = listen(&config)?;
    std::thread::Builder::new()
        .name("pg-listen".into())
        .spawn(move || run(config, node, sink, first, &closed))
        .map(drop)
        .map_err(|e| StoreError::Backend(format!("cannot start the change listener: {e}")))
}

fn listen(config: &postgres::Config) -> Result<Client, StoreError> {
    let mut client = config
        .connect(NoTls)
        .map_err(|e| StoreError::Backend(format!("change listener: {e}")))?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(|e| StoreError::Backend(format!("change listener: {e}")))?;
    Ok(client)
}

fn run(
    config: postgres::Config,
    node: String,
    sink: ChangeSink,
    first: Client,
    closed: &AtomicBool,
) {
    let mut client = Some(first);
    let mut backoff = BACKOFF_MIN;
    while !closed.load(Ordering::Acquire) {
        let Some(connected) = client.as_mut() else {
            match listen(&config) {
                Ok(fresh) => {
                    tracing::info!("change listener reconnected: reloading node-local state");
                    client = Some(fresh);
                    backoff = BACKOFF_MIN;
                    sink(Change::Resync);
                }
                Err(error) => {
                    tracing::warn!(%error, "change listener cannot reconnect yet");
                    // A thread of its own, not an async worker: waiting here blocks nothing else.
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        };
        if !follow(connected, &node, &sink, closed) {
            tracing::warn!("change listener lost its connection");
            client = None;
        }
    }
}

/// Hands on notifications until the connection fails (false) or the store closes (true).
fn follow(client: &mut Client, node: &str, sink: &ChangeSink, closed: &AtomicBool) -> bool {
    let mut quiet_since = std::time::Instant::now();
    while !closed.load(Ordering::Acquire) {
        let mut heard = false;
        {
            let mut notifications = client.notifications();
            let mut iter = notifications.timeout_iter(POLL);
            loop {
                match iter.next() {
                    Ok(Some(notification)) => {
                        heard = true;
                        if let Some(change) = parse(notification.payload(), node) {
                            sink(change);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "change listener read failed");
                        return false;
                    }
                    Ok(None) => break,
                }
            }
        }
        if client.is_closed() {
            return false;
        }
        if heard {
            quiet_since = std::time::Instant::now();
        } else if quiet_since.elapsed() >= PROBE_EVERY {
            if client.is_valid(PROBE_EVERY).is_err() {
                return false;
            }
            quiet_since = std::time::Instant::now();
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_own_writes_are_skipped() {
        let media = MediaId::new();
        let upload = UploadId::new();
        let expires_ns = 1_700_000_000_000_000_000;
        let cases = [
            (Notice::Media(&media), Change::Media(media.clone())),
            (Notice::Gate(&media), Change::Gate(media.clone())),
            (
                Notice::TusUpload(&upload),
                Change::TusUpload(upload.clone()),
            ),
            (
                Notice::Revoked {
                    session_id: "a|b",
                    expires_at_ns: expires_ns,
                },
                Change::Revoked {
                    session_id: "a|b".into(),
                    expires_at: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
                        expires_ns,
                    ))
                    .unwrap(),
                },
            ),
        ];
        for (notice, change) in cases {
            let payload = notice.payload("node-a");
            assert_eq!(parse(&payload, "node-b"), Some(change));
            assert_eq!(parse(&payload, "node-a"), None);
        }
        assert_eq!(parse("node-a|x|00", "node-b"), None);
    }
}
