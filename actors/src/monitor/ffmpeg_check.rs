//! Whether ffmpeg can run, for `/health`. Running `ffmpeg -version` loads every codec library
//! (tens of milliseconds of CPU), so it runs only at start, when the binary on disk changed
//! (installed, removed, upgraded), and every [`REVERIFY`] for what a stat cannot see (a broken
//! library); between runs a stat of the binary is enough.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How often `ffmpeg -version` runs although the binary looks unchanged.
const REVERIFY: Duration = Duration::from_secs(600);

/// What identifies the file a binary name resolves to: it changes when the file is replaced,
/// rewritten or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    path: PathBuf,
    device: u64,
    inode: u64,
    len: u64,
    modified_ns: i128,
}

/// The file `program` runs: a path as given, or a bare name looked up in `PATH` as a shell
/// would; `None` when there is no such executable file.
pub fn identity(program: &str) -> Option<Identity> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|dirs| {
                std::env::split_paths(&dirs)
                    .map(|dir| dir.join(program))
                    .collect()
            })
            .unwrap_or_default()
    };
    candidates.into_iter().find_map(|path| of_file(&path))
}

fn of_file(path: &Path) -> Option<Identity> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return None;
    }
    Some(Identity {
        path: path.to_path_buf(),
        device: meta.dev(),
        inode: meta.ino(),
        len: meta.len(),
        modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

/// When the last `-version` run happened and on which file.
#[derive(Debug, Default)]
pub struct Checked {
    at: Option<Instant>,
    identity: Option<Identity>,
}

impl Checked {
    /// Whether `-version` must run again now, the binary being `identity`; if so, remembers
    /// this run.
    pub fn due(&mut self, now: Instant, identity: Option<Identity>) -> bool {
        let due = self.at.is_none_or(|at| now.duration_since(at) >= REVERIFY)
            || identity != self.identity;
        if due {
            self.at = Some(now);
            self.identity = identity;
        }
        due
    }
}

/// Runs `ffmpeg -version`: its first line, or why it could not run.
pub async fn run(ffmpeg_path: &str) -> Result<String, String> {
    let output = tokio::process::Command::new(ffmpeg_path)
        .arg("-version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {ffmpeg_path}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{ffmpeg_path} -version exited with {}",
            output.status
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or("ffmpeg").to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn executable(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_run_is_due_at_first_and_when_the_binary_changes_or_goes() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("ffmpeg");
        executable(&binary, "#!/bin/sh\necho one\n");
        let program = binary.to_str().unwrap();
        let mut checked = Checked::default();
        let now = Instant::now();

        assert!(checked.due(now, identity(program)), "never run yet");
        assert!(!checked.due(now, identity(program)), "unchanged");

        // Replaced by a new file (an upgrade writes a new inode).
        std::fs::remove_file(&binary).unwrap();
        executable(&binary, "#!/bin/sh\necho two, longer\n");
        assert!(checked.due(now, identity(program)), "replaced");
        assert!(!checked.due(now, identity(program)));

        std::fs::remove_file(&binary).unwrap();
        assert_eq!(identity(program), None);
        assert!(checked.due(now, identity(program)), "removed");
        assert!(!checked.due(now, identity(program)), "still gone");

        executable(&binary, "#!/bin/sh\necho three\n");
        assert!(checked.due(now, identity(program)), "back");
        assert!(
            checked.due(now + REVERIFY, identity(program)),
            "reverified in time"
        );
    }

    #[test]
    fn a_file_without_execute_permission_is_no_binary() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ffmpeg");
        std::fs::write(&file, "not a program").unwrap();
        assert_eq!(identity(file.to_str().unwrap()), None);
    }

    #[test]
    fn a_bare_name_resolves_through_path() {
        let found = identity("sh").expect("sh is on PATH");
        assert!(found.path.is_absolute(), "{found:?}");
    }
}
