//! Plumbing every test shares: a free port, a child process that dies with its test, and
//! polling a condition up to a deadline (the tests never sleep to synchronise).

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process with its output discarded; killed and reaped on drop, so no test leaves a
/// server, node or zombie behind.
pub struct ChildProcess {
    child: Option<Child>,
    pid: u32,
}

impl ChildProcess {
    /// Spawns `command` with null stdio; `hint` tells the reader how to install a missing tool.
    pub fn spawn(command: &mut Command, hint: &str) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {command:?} ({error}); {hint}"));
        Self {
            pid: child.id(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGKILL and reaps the process; a no-op once it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. "TERM") with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }

    /// Waits for the process to exit by itself, failing after `deadline`.
    pub async fn exited(&mut self, deadline: Duration, what: &str) -> ExitStatus {
        let child = self.child.as_mut().expect("the process is still ours");
        let status = poll(deadline, what, async || child.try_wait().unwrap()).await;
        self.child = None;
        status
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a poll check returns: `true`/`Some(value)` end the wait, `Err(last)` is "not yet" with
/// a description of what was seen, for the timeout message.
pub trait Found {
    type Value;
    fn found(self) -> Result<Self::Value, Option<String>>;
}

impl Found for bool {
    type Value = ();
    fn found(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Found for Option<T> {
    type Value = T;
    fn found(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T> Found for Result<T, String> {
    type Value = T;
    fn found(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Starts nginx on `conf` (prefix and error log in `dir`, then the `extra` arguments) and waits
/// until it listens on `port`.
pub async fn start_nginx(dir: &Path, conf: &Path, extra: &[&str], port: u16) -> ChildProcess {
    let nginx = ChildProcess::spawn(
        Command::new("nginx")
            .args(["-e", &format!("{}/error.log", dir.display()), "-p"])
            .arg(dir)
            .arg("-c")
            .arg(conf)
            .args(extra),
        "apt-get install nginx-light",
    );
    poll(Duration::from_secs(30), "nginx to listen", async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    nginx
}

/// Runs `check` every 100 ms until it finds what it waits for and returns that, failing after
/// `deadline` with `what` (and the last thing seen, if `check` says).
pub async fn poll<R: Found>(
    deadline: Duration,
    what: &str,
    check: impl AsyncFnMut() -> R,
) -> R::Value {
    poll_every(Duration::from_millis(100), deadline, what, check).await
}

/// [`poll`] at another pace; late ticks are not made up in a burst.
pub async fn poll_every<R: Found>(
    every: Duration,
    deadline: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> R,
) -> R::Value {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let last = match check().await.found() {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}{}",
            last.map(|l| format!("; last seen: {l}"))
                .unwrap_or_default()
        );
    }
}
