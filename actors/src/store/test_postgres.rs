//! A throwaway PostgreSQL server for tests: Debian's binaries, a cluster in a temporary
//! directory, run as an unprivileged user (`nobody` when we are root, as `initdb` refuses root),
//! listening only on a unix socket in that directory. One per test process; each test gets its
//! own database. A missing tool is an error, never a skip.
//!
//! The server is stopped and its directory removed by a keeper shell that waits for its stdin to
//! close, which happens when the test process exits, however it exits.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, OnceLock,
    },
};

/// Starts the cluster, waits until it accepts connections, prints `ready`, then holds it until
/// stdin closes. `$3` is the command prefix that drops privileges (empty when not root).
const KEEPER: &str = r#"
set -e
dir="$1"; bin="$2"; run_as="$3"
mkdir -p "$dir/data" "$dir/sock"
if [ -n "$run_as" ]; then chown -R nobody:nogroup "$dir"; fi
if ! $run_as "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync \
    >"$dir/initdb.log" 2>&1; then
  cat "$dir/initdb.log" >&2; exit 1
fi
if ! $run_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 120 \
    -o "-k '$dir/sock' -c listen_addresses='' -c fsync=off -c full_page_writes=off" \
    start >/dev/null 2>&1; then
  cat "$dir/server.log" >&2; exit 1
fi
echo ready
read -r _ || true
$run_as "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
rm -rf "$dir"
"#;

/// Stops (`$4` = stop) or starts again (`$4` = start) a cluster the keeper made.
const PG_CTL: &str = r#"
dir="$1"; bin="$2"; run_as="$3"
if [ "$4" = stop ]; then
  exec $run_as "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop
fi
exec $run_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 120 \
    -o "-k '$dir/sock' -c listen_addresses='' -c fsync=off -c full_page_writes=off" start
"#;

pub struct TestPostgres {
    socket_dir: PathBuf,
    dir: PathBuf,
    bin: PathBuf,
    run_as: &'static str,
    /// Held, never written: the keeper stops the server when this closes at process exit.
    _keeper: Mutex<(Child, ChildStdin)>,
    next_database: AtomicU32,
}

static SHARED: OnceLock<Result<TestPostgres, String>> = OnceLock::new();

/// The process's test server, started on first use.
pub fn shared() -> Result<&'static TestPostgres, String> {
    SHARED
        .get_or_init(TestPostgres::start)
        .as_ref()
        .map_err(Clone::clone)
}

/// A fresh, empty database on the process's test server: its connection URL.
pub fn fresh_database() -> Result<String, String> {
    off_runtime(|| shared()?.create_database())
}

/// Runs `work` on its own thread: the sync client must not block a thread driving async tasks
/// (an async test's).
fn off_runtime<T: Send>(work: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    std::thread::scope(|scope| scope.spawn(work).join())
        .map_err(|_| "the test PostgreSQL helper panicked".to_string())?
}

/// Drops the database `url` names, cutting off its open connections: to its clients the
/// database is gone, as if the server were unreachable.
pub fn drop_database(url: &str) -> Result<(), String> {
    off_runtime(|| drop_database_now(url))
}

fn drop_database_now(url: &str) -> Result<(), String> {
    let config: postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let name = config.get_dbname().ok_or("the URL names no database")?;
    let server = shared()?;
    let mut admin = postgres::Client::connect(&server.url("postgres"), postgres::NoTls)
        .map_err(|e| format!("cannot connect to the test PostgreSQL: {e}"))?;
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .map_err(|e| format!("cannot drop database {name}: {e}"))
}

fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("STREAMGATE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql: \
         install Debian's `postgresql` package (.ci/lib.sh does)"
            .to_string()
    })
}

impl TestPostgres {
    /// A server of the caller's own, apart from the shared one: for a test that stops and
    /// starts it ([`Self::stop`], [`Self::start_again`]).
    pub fn start_own() -> Result<Self, String> {
        off_runtime(Self::start)
    }

    /// Stops the server at once (as a crash would): clients lose their connections.
    pub fn stop(&self) -> Result<(), String> {
        self.pg_ctl("stop")
    }

    /// Starts the stopped server again on the same data and socket.
    pub fn start_again(&self) -> Result<(), String> {
        self.pg_ctl("start")
    }

    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let output = Command::new("sh")
            .arg("-c")
            .arg(PG_CTL)
            .arg("sh")
            .arg(&self.dir)
            .arg(&self.bin)
            .arg(self.run_as)
            .arg(action)
            .output()
            .map_err(|e| format!("cannot run pg_ctl {action}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {action} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// A fresh, empty database on this server: its connection URL.
    pub fn fresh_database(&self) -> Result<String, String> {
        off_runtime(|| self.create_database())
    }

    fn start() -> Result<Self, String> {
        let bin = bin_dir()?;
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "streamgate-pg-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let run_as = if rustix::process::geteuid().is_root() {
            "setpriv --reuid=nobody --regid=nogroup --clear-groups"
        } else {
            ""
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(KEEPER)
            .arg("sh")
            .arg(&dir)
            .arg(&bin)
            .arg(run_as)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run sh to start PostgreSQL: {e}"))?;
        let stdout = child.stdout.take().ok_or("keeper has no stdout")?;
        let mut line = String::new();
        // Blocks until the cluster answers or the keeper gave up.
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim() != "ready" {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "test PostgreSQL did not start (binaries in {}): {stderr}",
                bin.display()
            ));
        }
        let stdin = child.stdin.take().ok_or("keeper has no stdin")?;
        Ok(Self {
            socket_dir: dir.join("sock"),
            dir,
            bin,
            run_as,
            _keeper: Mutex::new((child, stdin)),
            next_database: AtomicU32::new(0),
        })
    }

    fn url(&self, database: &str) -> String {
        format!(
            "postgresql:///{database}?user=postgres&host={}",
            self.socket_dir.display()
        )
    }

    pub fn create_database(&self) -> Result<String, String> {
        let name = format!(
            "test_{}",
            self.next_database.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| format!("cannot connect to the test PostgreSQL: {e}"))?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| format!("cannot create database {name}: {e}"))?;
        Ok(self.url(&name))
    }
}
