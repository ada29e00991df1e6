//! ffmpeg and ffprobe: probing a source, building the one-decode HLS ladder command, running it
//! with progress, and killing it on demand. Everything here blocks; callers run it on the
//! blocking pool, never on an actor's context.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use ffmpeg_sidecar::{
    command::FfmpegCommand,
    event::{FfmpegEvent, LogLevel},
};
use serde::Deserialize;

use crate::{
    config::{Rung, TranscodeConfig},
    model::{MediaFailure, Probe, Rendition},
    sniff::Container,
};

/// What kind of failure ended a run; it decides whether the job is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// ffprobe/ffmpeg cannot read the input as video, or it breaks a limit: retrying cannot help.
    Undecodable,
    /// The media item the job is for no longer exists.
    Gone,
    /// ffmpeg ran and failed (e.g. its output could not be written): may pass on a retry.
    FfmpegFailed,
    /// I/O or another component failed: may pass on a retry.
    Transient,
    /// The kill switch stopped the run (cancel or shutdown).
    Killed,
}

/// Why a run failed. Permanent failures (an input ffmpeg cannot decode) are not retried.
///
/// Invariant: `code` and `message` are what clients see (job `last_error`, media `failure`);
/// they never hold a path or ffmpeg's output, which go to `detail`, for the log only.
#[derive(Debug, Clone)]
pub struct RunFailure {
    pub cause: Cause,
    /// Stable snake_case code.
    pub code: &'static str,
    pub message: String,
    pub detail: String,
}

impl RunFailure {
    pub fn new(cause: Cause, code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            detail: message.clone(),
            cause,
            code,
            message,
        }
    }
    /// Adds what happened in full, for the log.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
    /// The input is not a video we can read, or breaks a limit: `code` says which.
    pub fn rejected(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Cause::Undecodable, code, message)
    }
    pub fn undecodable(detail: impl Into<String>) -> Self {
        Self::rejected(
            "undecodable",
            "the file is not a video this server can decode",
        )
        .with_detail(detail)
    }
    /// A server-side problem (storage, a busy actor); the detail goes to the log only.
    pub fn transient(detail: impl Into<String>) -> Self {
        Self::new(
            Cause::Transient,
            "temporarily_unavailable",
            "a server component was temporarily unavailable",
        )
        .with_detail(detail)
    }
    pub fn ffmpeg_failed(detail: impl Into<String>) -> Self {
        Self::new(
            Cause::FfmpegFailed,
            "transcode_failed",
            "ffmpeg could not transcode the file",
        )
        .with_detail(detail)
    }
    pub fn gone(detail: impl Into<String>) -> Self {
        Self::new(Cause::Gone, "media_gone", "the media no longer exists").with_detail(detail)
    }
    pub fn killed() -> Self {
        Self::new(Cause::Killed, "cancelled", "cancelled")
    }
    pub fn is_permanent(&self) -> bool {
        matches!(self.cause, Cause::Undecodable | Cause::Gone)
    }
    /// What the media record keeps of this failure.
    pub fn media_failure(&self) -> MediaFailure {
        MediaFailure {
            code: self.code.to_string(),
            message: self.message.clone(),
        }
    }
    /// The `reason` label of the ffmpeg failure counter, when ffmpeg or ffprobe is to blame.
    pub fn ffmpeg_reason(&self) -> Option<&'static str> {
        match self.cause {
            Cause::Undecodable => Some("undecodable"),
            Cause::FfmpegFailed => Some("run_failed"),
            _ => None,
        }
    }
}

/// Lets another thread kill the ffmpeg process a worker is running.
#[derive(Debug, Clone, Default)]
pub struct KillSwitch {
    pid: Arc<Mutex<Option<u32>>>,
    killed: Arc<AtomicBool>,
}

impl KillSwitch {
    fn attach(&self, pid: u32) -> bool {
        if let Ok(mut slot) = self.pid.lock() {
            *slot = Some(pid);
        }
        !self.killed.load(Ordering::SeqCst)
    }

    fn detach(&self) {
        if let Ok(mut slot) = self.pid.lock() {
            *slot = None;
        }
    }

    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Kills the running process, if any, and every process started after this call.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let pid = self.pid.lock().ok().and_then(|slot| *slot);
        if let Some(pid) = pid.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

#[derive(Deserialize)]
struct ProbeOutput {
    #[serde(default)]
    streams: Vec<ProbeStream>,
    format: Option<ProbeFormat>,
}

#[derive(Deserialize)]
struct ProbeStream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
}

#[derive(Deserialize)]
struct ProbeFormat {
    format_name: Option<String>,
    duration: Option<String>,
}

/// The only protocol ffmpeg may open for input: the one local file it is handed.
const INPUT_PROTOCOLS: &str = "file";

/// Input options that confine ffprobe and ffmpeg to the one file at `input`, read with
/// `demuxer` only: no other demuxer (a playlist, manifest or concat script inside cannot be
/// followed), no protocol but `file`, and for QuickTime no external data references.
pub fn input_arguments(demuxer: &str, input: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["-f", demuxer, "-format_whitelist", demuxer]
        .map(String::from)
        .to_vec();
    args.extend(["-protocol_whitelist".into(), INPUT_PROTOCOLS.into()]);
    if demuxer == "mov" {
        args.extend(["-enable_drefs", "0", "-use_absolute_path", "0"].map(String::from));
    }
    args.extend(["-i".into(), input.display().to_string()]);
    args
}

/// What a source may be: the transcoder limits of `transcode.*`.
#[derive(Debug, Clone, Copy)]
pub struct SourceLimits {
    pub max_duration_s: f64,
    pub max_frame_pixels: u64,
    pub max_streams: usize,
    pub max_frame_rate: f64,
}

impl From<&TranscodeConfig> for SourceLimits {
    fn from(config: &TranscodeConfig) -> Self {
        Self {
            max_duration_s: config.max_duration_s,
            max_frame_pixels: config.max_frame_pixels,
            max_streams: config.max_streams,
            max_frame_rate: config.max_frame_rate,
        }
    }
}

/// Reads duration, size and codecs with ffprobe, under `timeout` and the kill switch.
///
/// ffprobe picks the format itself here, but only among the containers we accept: its choice
/// must be `expected`'s demuxer, so a file whose contents are not the container its first bytes
/// claim is refused (`format_mismatch`). A file ffprobe cannot read, or one over a limit, is a
/// permanent failure with a code that says which.
pub fn probe(
    ffprobe_path: &str,
    input: &Path,
    expected: Container,
    limits: &SourceLimits,
    timeout: Duration,
    kill_switch: &KillSwitch,
) -> Result<Probe, RunFailure> {
    // A missing or unreadable source is a storage problem, not bad input: ffprobe would report
    // both the same way, so look first.
    std::fs::File::open(input)
        .map_err(|e| RunFailure::transient(format!("cannot read the source file: {e}")))?;
    let accepted: Vec<&str> = Container::ALL.iter().map(|c| c.demuxer()).collect();
    let mut command = Command::new(ffprobe_path);
    command
        .args(["-v", "warning", "-print_format", "json", "-show_format"])
        .args(["-show_streams", "-format_whitelist", &accepted.join(",")])
        .args(["-protocol_whitelist", INPUT_PROTOCOLS])
        .args(["-enable_drefs", "0", "-use_absolute_path", "0"])
        .arg(input);
    let output = run_with_deadline(command, timeout, kill_switch)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("Format not on whitelist") {
        return Err(format_mismatch(expected).with_detail(stderr.into_owned()));
    }
    if stderr.contains("external track") {
        return Err(RunFailure::rejected(
            "external_reference",
            "the file refers to data in other files, which this server does not read",
        )
        .with_detail(stderr.into_owned()));
    }
    if !output.status.success() {
        return Err(RunFailure::undecodable(format!(
            "ffprobe failed: {}",
            first_line(&stderr).unwrap_or("no message")
        )));
    }
    let parsed: ProbeOutput = serde_json::from_slice(&output.stdout)
        .map_err(|e| RunFailure::undecodable(format!("unreadable ffprobe output: {e}")))?;
    let format = parsed.format.as_ref();
    let format_name = format.and_then(|f| f.format_name.as_deref()).unwrap_or("");
    if !format_name
        .split(',')
        .any(|name| name == expected.demuxer())
    {
        return Err(format_mismatch(expected).with_detail(format!("ffprobe read {format_name}")));
    }
    check_limits(&parsed, limits)
}

fn format_mismatch(expected: Container) -> RunFailure {
    RunFailure::rejected(
        "format_mismatch",
        format!(
            "the file's contents are not the {} container its first bytes claim",
            expected.as_str()
        ),
    )
}

/// The probe's facts, once every limit holds.
fn check_limits(parsed: &ProbeOutput, limits: &SourceLimits) -> Result<Probe, RunFailure> {
    if parsed.streams.len() > limits.max_streams {
        return Err(RunFailure::rejected(
            "too_many_streams",
            format!(
                "the file has {} streams; at most {} are accepted",
                parsed.streams.len(),
                limits.max_streams
            ),
        ));
    }
    let video = parsed
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("video"))
        .ok_or_else(|| RunFailure::rejected("no_video_stream", "the file has no video stream"))?;
    let (width, height) = match (video.width, video.height) {
        (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
        _ => return Err(RunFailure::undecodable("no frame size")),
    };
    if u64::from(width) * u64::from(height) > limits.max_frame_pixels {
        return Err(RunFailure::rejected(
            "resolution_too_large",
            format!(
                "{width}x{height} is over the limit of {} pixels per frame",
                limits.max_frame_pixels
            ),
        ));
    }
    let frame_rate = [&video.avg_frame_rate, &video.r_frame_rate]
        .into_iter()
        .filter_map(|rate| rate.as_deref().and_then(parse_rate))
        .next();
    if let Some(rate) = frame_rate.filter(|rate| *rate > limits.max_frame_rate) {
        return Err(RunFailure::rejected(
            "frame_rate_too_high",
            format!(
                "{rate:.2} frames per second is over the limit of {}",
                limits.max_frame_rate
            ),
        ));
    }
    let duration_s = parsed
        .format
        .as_ref()
        .and_then(|f| f.duration.as_deref())
        .and_then(|d| d.parse::<f64>().ok())
        .filter(|d| d.is_finite() && *d > 0.0)
        .ok_or_else(|| RunFailure::undecodable("unknown duration"))?;
    if duration_s > limits.max_duration_s {
        return Err(RunFailure::rejected(
            "video_too_long",
            format!(
                "the video lasts {duration_s:.0} s; at most {} s are accepted",
                limits.max_duration_s
            ),
        ));
    }
    Ok(Probe {
        duration_s,
        width,
        height,
        video_codec: video.codec_name.clone().unwrap_or_default(),
        has_audio: parsed
            .streams
            .iter()
            .any(|s| s.codec_type.as_deref() == Some("audio")),
    })
}

/// `30000/1001` → 29.97; `0/0` (unknown) → `None`.
fn parse_rate(text: &str) -> Option<f64> {
    let (num, den) = text.split_once('/')?;
    let (num, den) = (num.parse::<f64>().ok()?, den.parse::<f64>().ok()?);
    (den > 0.0 && num > 0.0).then(|| num / den)
}

/// Runs `command` to its end, killed by `kill_switch` or once `timeout` has passed; its output is
/// read on threads of its own, so a full pipe never stalls it.
fn run_with_deadline(
    mut command: Command,
    timeout: Duration,
    kill_switch: &KillSwitch,
) -> Result<std::process::Output, RunFailure> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RunFailure::transient(format!("cannot run {program}: {e}")))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                // At most 16 MiB: a probe's JSON is far smaller; more is a hostile file.
                let _ = pipe.by_ref().take(16 << 20).read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let attached = kill_switch.attach(child.id());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if !attached || kill_switch.was_killed() {
            let _ = child.kill();
        } else if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
        }
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => break Err(e),
        }
    };
    kill_switch.detach();
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    if kill_switch.was_killed() {
        return Err(RunFailure::killed());
    }
    if timed_out {
        return Err(RunFailure::rejected(
            "probe_timeout",
            format!("reading the file took longer than {} s", timeout.as_secs()),
        ));
    }
    let status =
        status.map_err(|e| RunFailure::transient(format!("{program} wait failed: {e}")))?;
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|line| !line.is_empty())
}

/// The rungs to produce for a source: those of `profiles` (every rung when empty) not above its
/// height. A source smaller than every such rung gets the smallest of them at its own (even)
/// height, so there is always one rendition.
pub fn plan_ladder(ladder: &[Rung], profiles: &[String], source_height: u32) -> Vec<Rung> {
    let ladder: Vec<&Rung> = ladder
        .iter()
        .filter(|rung| profiles.is_empty() || profiles.contains(&rung.name))
        .collect();
    let mut rungs: Vec<Rung> = ladder
        .iter()
        .filter(|rung| rung.height <= source_height)
        .map(|rung| (*rung).clone())
        .collect();
    if rungs.is_empty() {
        if let Some(smallest) = ladder.iter().min_by_key(|rung| rung.height) {
            rungs.push(Rung {
                height: (source_height.max(2)) & !1,
                ..(*smallest).clone()
            });
        }
    }
    rungs.sort_by_key(|rung| std::cmp::Reverse(rung.height));
    rungs
}

/// Width for `height` keeping the source aspect ratio, rounded to even (as `scale=-2:h` does).
fn scaled_width(probe: &Probe, height: u32) -> u32 {
    let width = (u64::from(probe.width) * u64::from(height) + u64::from(probe.height) / 2)
        / u64::from(probe.height.max(1));
    let width = u32::try_from(width).unwrap_or(u32::MAX);
    (width + 1) & !1
}

/// ffmpeg arguments that decode `input` once and write every rung as CMAF (fMP4) HLS into
/// `out_dir`: `master.m3u8` plus `{rung}/index.m3u8`, `{rung}/init_N.mp4`, `{rung}/seg_NNNNN.m4s`.
pub fn hls_arguments(
    config: &TranscodeConfig,
    demuxer: &str,
    input: &Path,
    out_dir: &Path,
    probe: &Probe,
    rungs: &[Rung],
) -> Vec<String> {
    let mut args: Vec<String> = vec!["-hide_banner".into(), "-y".into()];
    args.extend(input_arguments(demuxer, input));
    let mut filter = format!("[0:v]split={}", rungs.len());
    for index in 0..rungs.len() {
        filter.push_str(&format!("[s{index}]"));
    }
    for (index, rung) in rungs.iter().enumerate() {
        filter.push_str(&format!(";[s{index}]scale=-2:{}[v{index}]", rung.height));
    }
    args.extend(["-filter_complex".into(), filter]);
    let mut stream_map = Vec::new();
    for (index, rung) in rungs.iter().enumerate() {
        args.extend(["-map".into(), format!("[v{index}]")]);
        if probe.has_audio {
            args.extend(["-map".into(), "0:a:0".into()]);
            stream_map.push(format!("v:{index},a:{index},name:{}", rung.name));
        } else {
            stream_map.push(format!("v:{index},name:{}", rung.name));
        }
        args.extend([
            format!("-b:v:{index}"),
            format!("{}k", rung.video_bitrate_kbps),
            format!("-maxrate:v:{index}"),
            format!("{}k", rung.video_bitrate_kbps * 107 / 100),
            format!("-bufsize:v:{index}"),
            format!("{}k", rung.video_bitrate_kbps * 3 / 2),
        ]);
    }
    let segment = config.segment_seconds;
    args.extend(
        [
            "-c:v",
            "libx264",
            "-preset",
            &config.x264_preset,
            "-profile:v",
            "high",
            "-pix_fmt",
            "yuv420p",
            "-sc_threshold",
            "0",
            // Keyframes exactly on segment boundaries, so every rung cuts at the same times.
            "-force_key_frames",
            &format!("expr:gte(t,n_forced*{segment})"),
        ]
        .map(String::from),
    );
    if probe.has_audio {
        args.extend(
            [
                "-c:a",
                "aac",
                "-b:a",
                &format!("{}k", config.audio_bitrate_kbps),
                "-ac",
                "2",
            ]
            .map(String::from),
        );
    }
    let out = |name: &str| out_dir.join(name).display().to_string();
    args.extend(
        [
            "-f",
            "hls",
            "-hls_time",
            &segment.to_string(),
            // EVENT playlists, each renamed into place only once the segments it lists are
            // closed: the ladder can be published while it is being written.
            "-hls_playlist_type",
            "event",
            "-hls_segment_type",
            "fmp4",
            "-hls_flags",
            "independent_segments+temp_file",
            "-hls_fmp4_init_filename",
            "init.mp4",
            "-hls_segment_filename",
            &out("%v/seg_%05d.m4s"),
            "-master_pl_name",
            "master.m3u8",
            "-var_stream_map",
            &stream_map.join(" "),
            &out("%v/index.m3u8"),
        ]
        .map(String::from),
    );
    args
}

/// Renditions as they will be written for `rungs`.
pub fn renditions(probe: &Probe, rungs: &[Rung]) -> Vec<Rendition> {
    rungs
        .iter()
        .map(|rung| Rendition {
            name: rung.name.clone(),
            width: scaled_width(probe, rung.height),
            height: rung.height,
            video_bitrate_kbps: rung.video_bitrate_kbps,
        })
        .collect()
}

/// Runs ffmpeg with `args`, reporting progress (0–100) against `duration_s`.
pub fn run_ffmpeg(
    ffmpeg_path: &str,
    args: &[String],
    duration_s: f64,
    kill_switch: &KillSwitch,
    mut on_progress: impl FnMut(u8),
) -> Result<(), RunFailure> {
    let mut child = FfmpegCommand::new_with_path(ffmpeg_path)
        .args(args)
        .spawn()
        .map_err(|e| RunFailure::transient(format!("cannot start {ffmpeg_path}: {e}")))?;
    if !kill_switch.attach(child.as_inner().id()) {
        let _ = child.kill();
        let _ = child.wait();
        kill_switch.detach();
        return Err(RunFailure::killed());
    }
    let mut errors: Vec<String> = Vec::new();
    let events = child
        .iter()
        .map_err(|e| RunFailure::transient(format!("cannot read ffmpeg output: {e}")))?;
    for event in events {
        match event {
            FfmpegEvent::Progress(progress) => {
                if let Some(seconds) = parse_clock(&progress.time) {
                    let percent = (seconds / duration_s * 100.0).clamp(0.0, 99.0);
                    on_progress(percent as u8);
                }
            }
            FfmpegEvent::Log(LogLevel::Error | LogLevel::Fatal, line)
            | FfmpegEvent::Error(line)
                if errors.len() < 5 =>
            {
                errors.push(line);
            }
            _ => {}
        }
    }
    let status = child.wait();
    kill_switch.detach();
    if kill_switch.was_killed() {
        return Err(RunFailure::killed());
    }
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(RunFailure::ffmpeg_failed(format!(
            "ffmpeg exited with {status}: {}",
            errors.join("; ")
        ))),
        Err(e) => Err(RunFailure::transient(format!("ffmpeg wait failed: {e}"))),
    }
}

/// A single JPEG frame from about a tenth into the video.
pub fn thumbnail_arguments(
    demuxer: &str,
    input: &Path,
    output: &Path,
    probe: &Probe,
) -> Vec<String> {
    let at = (probe.duration_s / 10.0).min(5.0);
    let mut args: Vec<String> = ["-hide_banner", "-y", "-ss", &format!("{at:.3}")]
        .map(String::from)
        .to_vec();
    args.extend(input_arguments(demuxer, input));
    args.extend(
        [
            "-frames:v",
            "1",
            "-vf",
            "scale=-2:360",
            "-q:v",
            "4",
            &output.display().to_string(),
        ]
        .map(String::from),
    );
    args
}

/// `HH:MM:SS.ss` → seconds.
fn parse_clock(clock: &str) -> Option<f64> {
    let mut seconds = 0.0;
    for part in clock.trim().split(':') {
        seconds = seconds * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(seconds)
}

/// Kills ffmpeg processes left writing under `work_dir` by an earlier run of this server that
/// was killed (`kill -9` gives it no chance to stop them). Called at start-up, before any job
/// of ours runs, so every match is a stray; waits until they are gone, so a rerun never shares
/// its work directory with one. Linux only (`/proc`); elsewhere it finds nothing.
pub fn kill_strays(work_dir: &Path) -> usize {
    let marker = format!("{}/", work_dir.display());
    let strays: Vec<rustix::process::Pid> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mut args = cmdline
                .split(|byte| *byte == 0)
                .map(String::from_utf8_lossy);
            let program = args.next()?;
            let is_ffmpeg = Path::new(program.as_ref())
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("ffmpeg"));
            (is_ffmpeg && args.any(|arg| arg.starts_with(&marker)))
                .then(|| rustix::process::Pid::from_raw(pid))
                .flatten()
        })
        .collect();
    for pid in &strays {
        let _ = rustix::process::kill_process(*pid, rustix::process::Signal::KILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && strays
            .iter()
            .any(|pid| is_running(pid.as_raw_nonzero().get()))
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    strays.len()
}

/// Whether a process exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Every file under `dir`, as paths relative to it.
pub fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                found.push(relative.to_path_buf());
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Vec<Rung> {
        [
            ("1080p", 1080, 5000),
            ("720p", 720, 2800),
            ("480p", 480, 1400),
            ("360p", 360, 800),
        ]
        .map(|(name, height, kbps)| Rung {
            name: name.into(),
            height,
            video_bitrate_kbps: kbps,
        })
        .to_vec()
    }

    #[test]
    fn ladder_skips_rungs_above_the_source() {
        let names = |h| {
            plan_ladder(&ladder(), &[], h)
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(720), ["720p", "480p", "360p"]);
        assert_eq!(names(2160), ["1080p", "720p", "480p", "360p"]);
        let tiny = plan_ladder(&ladder(), &[], 241);
        assert_eq!((tiny.len(), tiny[0].height), (1, 240));
        let picked = plan_ladder(&ladder(), &["1080p".into(), "480p".into()], 720);
        assert_eq!(
            picked.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["480p"],
            "profiles narrow the ladder, the source height still caps it"
        );
    }

    #[test]
    fn widths_keep_aspect_and_are_even() {
        let probe = Probe {
            duration_s: 1.0,
            width: 1280,
            height: 720,
            video_codec: "h264".into(),
            has_audio: false,
        };
        let rungs = plan_ladder(&ladder(), &[], 720);
        let widths: Vec<u32> = renditions(&probe, &rungs).iter().map(|r| r.width).collect();
        assert_eq!(widths, [1280, 854, 640]);
    }

    #[test]
    fn clock_parses() {
        assert_eq!(parse_clock("00:01:02.50"), Some(62.5));
        assert_eq!(parse_clock("N/A"), None);
    }
}
