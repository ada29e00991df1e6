//! Many viewers at once: StreamGate (its default workers and connection settings) and nginx
//! (`worker_processes auto`, sendfile) serving the same segments to 1,000 connections back to
//! back (wrk), and to viewers paced like players: one segment every 6 s over one kept-alive
//! connection. Memory is sampled while they run, as RssAnon (heap and buffers) beside RSS
//! (which also counts mapped segment pages once per mapping).

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{parse_wrk, Load};

/// Latency beyond which a segment request counts as stalled (a 6 s segment a third late).
const STALL_US: u64 = 2_000_000;

/// Appends to a [`crate::common::paths_script`] script a report of how many requests took
/// longer than [`STALL_US`]: wrk's histogram, bucket by bucket.
pub fn count_stalls(script: &Path) {
    let mut lua = std::fs::read_to_string(script).unwrap();
    lua.push_str(&format!(
        "function done(summary, latency, requests)\n  local over = 0\n  \
         for i = 1, #latency do\n    local value, count = latency(i)\n    \
         if value > {STALL_US} then over = over + count end\n  end\n  \
         io.write(string.format(\"stalled %d\\n\", over))\nend\n"
    ));
    std::fs::write(script, lua).unwrap();
}

/// One back-to-back run of many connections.
pub struct BackToBack {
    pub load: Load,
    pub stalled: u64,
    pub memory: Memory,
}

/// Peak memory of a set of processes while a run lasted, in MB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_anon_mb: f64,
    pub rss_mb: f64,
}

/// Samples the summed RssAnon and VmRSS of `pids` every 100 ms until dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Memory>>,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = Memory::default();
            while !stopped.load(Ordering::Relaxed) {
                let field =
                    |name: &str| -> f64 { pids.iter().map(|pid| status_kb(*pid, name)).sum() };
                peak.rss_anon_mb = peak.rss_anon_mb.max(field("RssAnon:") / 1024.0);
                peak.rss_mb = peak.rss_mb.max(field("VmRSS:") / 1024.0);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Memory {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn status_kb(pid: u32, name: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0.0)
}

/// User and system time of `pids` (every thread of each) so far, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // Clock ticks: 100 per second on Linux.
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the parenthesised command name, which may hold spaces.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            let fields: Vec<&str> = after.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
        })
        .sum();
    ticks as f64 / 100.0
}

/// A process and its children (nginx's master and workers).
pub fn with_children(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}

/// wrk with `connections` connections for `seconds`, the script from [`count_stalls`].
pub fn back_to_back(
    base: &str,
    script: &Path,
    connections: u32,
    seconds: u32,
    pids: Vec<u32>,
) -> BackToBack {
    let sampler = Sampler::start(pids);
    let mut command = std::process::Command::new("wrk");
    let output = command
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["--timeout", "10s", "--latency", "-s"])
        .arg(script)
        .arg(base)
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let memory = sampler.finish();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    let stalled = text
        .lines()
        .find_map(|line| line.strip_prefix("stalled "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stall count in {text}"));
    BackToBack {
        load: parse_wrk(&text),
        stalled,
        memory,
    }
}

/// Viewers paced like players, over one or more runs.
#[derive(Debug, Default)]
pub struct Paced {
    /// Latencies of requests on a kept-alive connection: a player's steady state.
    pub kept_alive_ms: Vec<f64>,
    /// Latencies of each viewer's first request, which also opens its connection.
    pub first_ms: Vec<f64>,
    /// Requests that got no complete 200 even on a fresh connection.
    pub errors: u64,
    /// Times a viewer found its kept-alive connection closed and had to open another.
    pub reconnects: u64,
    /// Connection attempts the kernel dropped (accept queue full) while the runs lasted; each
    /// costs its viewer a SYN retransmitted a second or more later.
    pub listen_overflows: u64,
    /// CPU time the server's processes used while the runs lasted.
    pub cpu_s: f64,
    pub memory: Memory,
}

impl Paced {
    /// Adds another run's requests; memory at its peak over the runs.
    pub fn add(&mut self, run: Paced) {
        self.kept_alive_ms.extend(run.kept_alive_ms);
        self.first_ms.extend(run.first_ms);
        self.errors += run.errors;
        self.reconnects += run.reconnects;
        self.listen_overflows += run.listen_overflows;
        self.cpu_s += run.cpu_s;
        self.memory.rss_anon_mb = self.memory.rss_anon_mb.max(run.memory.rss_anon_mb);
        self.memory.rss_mb = self.memory.rss_mb.max(run.memory.rss_mb);
    }

    pub fn requests(&self) -> usize {
        self.kept_alive_ms.len() + self.first_ms.len()
    }
}

/// One paced run's latency tails, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Tails {
    pub kept_alive_p50: f64,
    pub kept_alive_p99: f64,
    pub first_p50: f64,
    pub first_p99: f64,
    /// Over every request, first ones included.
    pub all_p99: f64,
}

impl Tails {
    pub fn of(run: &Paced) -> Self {
        let mut kept_alive = run.kept_alive_ms.clone();
        let mut first = run.first_ms.clone();
        let mut all = [kept_alive.as_slice(), first.as_slice()].concat();
        Self {
            kept_alive_p50: quantile(&mut kept_alive, 0.5),
            kept_alive_p99: quantile(&mut kept_alive, 0.99),
            first_p50: quantile(&mut first, 0.5),
            first_p99: quantile(&mut first, 0.99),
            all_p99: quantile(&mut all, 0.99),
        }
    }
}

/// The `q` quantile of `latencies` (sorted in place), NaN when there are none.
pub fn quantile(latencies: &mut [f64], q: f64) -> f64 {
    latencies.sort_by(f64::total_cmp);
    let at = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
    latencies.get(at).copied().unwrap_or(f64::NAN)
}

/// `viewers` connections to `port`, each asking for the next of `paths` every `every`
/// (starts spread evenly over the first period) until `duration` has passed.
pub fn paced_viewers(
    port: u16,
    paths: &[String],
    viewers: usize,
    every: Duration,
    duration: Duration,
    pids: Vec<u32>,
) -> Paced {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sampler = Sampler::start(pids.clone());
    let overflows_before = listen_overflows();
    let cpu_before = cpu_seconds(&pids);
    let paths = Arc::new(paths.to_vec());
    let start = tokio::time::Instant::now();
    let results: Vec<Viewer> = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for viewer in 0..viewers {
            let paths = paths.clone();
            let first = start + every.mul_f64(viewer as f64 / viewers as f64);
            tasks.spawn(watch(port, paths, viewer, first, every, start + duration));
        }
        tasks.join_all().await
    });
    let memory = sampler.finish();
    let mut paced = Paced {
        listen_overflows: listen_overflows() - overflows_before,
        cpu_s: cpu_seconds(&pids) - cpu_before,
        memory,
        ..Paced::default()
    };
    for viewer in results {
        let mut latencies = viewer.latencies_ms.into_iter();
        paced.first_ms.extend(latencies.next());
        paced.kept_alive_ms.extend(latencies);
        paced.errors += viewer.errors;
        paced.reconnects += viewer.reconnects;
    }
    paced
}

/// The kernel's count of connections dropped because a listener's accept queue was full.
fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .map(|(_, value)| value.parse().unwrap())
        .unwrap()
}

#[derive(Default)]
struct Viewer {
    latencies_ms: Vec<f64>,
    errors: u64,
    reconnects: u64,
}

async fn watch(
    port: u16,
    paths: Arc<Vec<String>>,
    viewer: usize,
    first: tokio::time::Instant,
    every: Duration,
    end: tokio::time::Instant,
) -> Viewer {
    let mut seen = Viewer::default();
    let mut connection = None;
    let mut opened: u64 = 0;
    let mut next = first;
    let mut n = viewer;
    while next < end {
        tokio::time::sleep_until(next).await;
        let path = &paths[n % paths.len()];
        n += 1;
        let began = Instant::now();
        let mut fetched = false;
        // A connection the server closed meanwhile is replaced, as a player would; a failure
        // on a fresh connection too is an error.
        for _ in 0..2 {
            let stream = match connection.take() {
                Some(stream) => stream,
                None => match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(stream) => {
                        opened += 1;
                        stream
                    }
                    Err(_) => continue,
                },
            };
            if let Ok((stream, keep)) = get(stream, path).await {
                connection = keep.then_some(stream);
                fetched = true;
                break;
            }
        }
        if fetched {
            seen.latencies_ms.push(began.elapsed().as_secs_f64() * 1e3);
        } else {
            seen.errors += 1;
        }
        next += every;
    }
    // The first connection is not a reconnect.
    seen.reconnects = opened.saturating_sub(1);
    seen
}

/// One GET on `stream`, its body read and dropped; the stream back and whether it stays open.
async fn get(
    mut stream: tokio::net::TcpStream,
    path: &str,
) -> std::io::Result<(tokio::net::TcpStream, bool)> {
    let broken =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
        .await?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let head_end = loop {
        let read = stream.read(&mut buffer[filled..]).await?;
        if read == 0 {
            return Err(broken("closed before a response"));
        }
        filled += read;
        if let Some(end) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if filled == buffer.len() {
            return Err(broken("head too long"));
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(broken(head.lines().next().unwrap_or("")));
    }
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| broken("no content-length"))?;
    let mut remaining = length.saturating_sub(filled - head_end);
    while remaining > 0 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err(broken("closed mid-body"));
        }
        remaining = remaining.saturating_sub(read);
    }
    Ok((stream, !head.contains("connection: close")))
}
