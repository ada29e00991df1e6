//! One job run, off the actor's context: ffmpeg on the blocking pool, blob writes on the async
//! runtime. The actor owns the job's state; a worker only reports progress and its outcome.
//!
//! Invariant: output is built in the job's own work directory. A media that never played is
//! published while ffmpeg writes it (see `progressive`): a playlist only ever lists durable
//! segments. A ready media's rerun publishes only after ffmpeg succeeded: the old output is
//! deleted, every new file is written, playlists and the manifest last, then the record turns
//! `ready`; a failure after the old output was deleted marks the media `failed` at once, so a
//! half-published ladder is never served.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tracing::Instrument;

use actix::Addr;
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

use super::{
    cleanup::Cleanup,
    dash,
    ffmpeg::{self, KillSwitch, RunFailure, SourceLimits},
    progressive::{self, Publisher},
    JobProgressed, TranscodeActor,
};
use crate::{
    blobs::BlobStore,
    config::TranscodeConfig,
    error::{DomainError, ErrorKind},
    metadata::{GetMedia, MarkPlayable, MarkRepublishing, MetadataActor, RecordTranscode},
    model::{Job, JobId, JobKind, Media, MediaState, Probe, Rendition},
    sniff::{sniff_container, Container, SNIFF_BYTES},
    store::SharedRepo,
};

/// Output files of one tier written at once when a run publishes.
const PUBLISH_CONCURRENCY: usize = 8;

/// How often a run that publishes as it encodes looks for closed segments.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// What a successful run reports back.
#[derive(Debug, Default)]
pub(super) struct RunReport {
    pub summary: Option<String>,
    /// Media seconds encoded per wall second.
    pub speed: Option<f64>,
}

pub(super) struct Worker {
    pub config: TranscodeConfig,
    pub repo: SharedRepo,
    pub blobs: BlobStore,
    pub metadata: Addr<MetadataActor>,
    /// Root of every job's work directory.
    pub work_root: PathBuf,
    /// Jobs running alongside this one (a cleanup leaves their work directories alone).
    pub running: HashSet<JobId>,
    pub progress_to: Addr<TranscodeActor>,
    pub kill_switch: KillSwitch,
}

impl Worker {
    pub async fn run(self, job: Job) -> Result<RunReport, RunFailure> {
        // Every log line of the run (ffmpeg failures included) carries the trace of the request
        // that queued the job.
        let span = tracing::info_span!(
            "job",
            job_id = %job.id,
            kind = job.kind.as_str(),
            trace_id = job.trace_id.as_deref().unwrap_or_default()
        );
        async move {
            tracing::info!(attempt = job.attempts, "job run started");
            let work_dir = self.work_root.join(job.id.to_string());
            let result = match job.kind {
                JobKind::Transcode => self.transcode(&job, &work_dir).await,
                JobKind::Thumbnail => self.thumbnail(&job, &work_dir).await,
                JobKind::Cleanup => self.cleanup().await,
            };
            let _ = tokio::fs::remove_dir_all(&work_dir).await;
            match &result {
                Ok(_) => tracing::info!("job run succeeded"),
                Err(failure) => tracing::warn!(
                    code = failure.code,
                    reason = %failure.detail,
                    "job run failed"
                ),
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn media(&self, job: &Job) -> Result<Media, RunFailure> {
        let media_id = job
            .media_id
            .clone()
            .ok_or_else(|| RunFailure::gone("the job names no media"))?;
        self.metadata
            .send(GetMedia {
                media_id: media_id.clone(),
            })
            .await
            .map_err(|e| RunFailure::transient(format!("metadata actor unavailable: {e}")))?
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => {
                    RunFailure::gone(format!("media {media_id} no longer exists"))
                }
                _ => RunFailure::transient(e.to_string()),
            })
    }

    /// A fresh, empty output directory: whatever an earlier attempt left is gone.
    async fn fresh_output(work_dir: &Path) -> Result<PathBuf, RunFailure> {
        let _ = tokio::fs::remove_dir_all(work_dir).await;
        let out_dir = work_dir.join("out");
        tokio::fs::create_dir_all(&out_dir)
            .await
            .map_err(|e| RunFailure::transient(format!("cannot create work dir: {e}")))?;
        Ok(out_dir)
    }

    async fn transcode(&self, job: &Job, work_dir: &Path) -> Result<RunReport, RunFailure> {
        let media = self.media(job).await?;
        let out_dir = Self::fresh_output(work_dir).await?;
        let (input, container) = self.private_source(&media, work_dir).await?;

        let started = Instant::now();
        // A media that never played is published as ffmpeg writes it; a ready one keeps its
        // old ladder until the new one is complete.
        let mut publisher = match media.state {
            MediaState::Ready => None,
            _ => {
                Some(Publisher::resume(self.blobs.clone(), media.id.clone(), out_dir.clone()).await)
            }
        };
        if media.state == MediaState::Failed {
            // Run again (a new job after a cancel or a failure): processing, not failed.
            self.metadata
                .send(MarkRepublishing {
                    media_id: media.id.clone(),
                })
                .await
                .map_err(|e| RunFailure::transient(format!("metadata actor unavailable: {e}")))?
                .map_err(|e| RunFailure::transient(e.to_string()))?;
        }
        let encode = self.encode(job, &input, container, &out_dir);
        let (probe, renditions) = match publisher.as_mut() {
            None => encode.await?,
            Some(publisher) => self.encode_publishing(encode, publisher, &media).await?,
        };
        let speed = probe.duration_s / started.elapsed().as_secs_f64().max(1e-3);
        if self.kill_switch.was_killed() {
            return Err(RunFailure::killed());
        }

        let published = match &publisher {
            None => self.publish(&media, &out_dir).await,
            Some(publisher) => self.publish_rest(&media, &out_dir, publisher).await,
        };
        if let Err(failure) = &published {
            // The old output may be gone already: make sure nothing half-written is served.
            let _ = self
                .metadata
                .send(RecordTranscode {
                    media_id: media.id.clone(),
                    outcome: Err(failure.media_failure()),
                })
                .await;
        }
        published?;
        let names: Vec<&str> = renditions.iter().map(|r| r.name.as_str()).collect();
        let summary = format!("renditions {}", names.join(", "));
        self.metadata
            .send(RecordTranscode {
                media_id: media.id.clone(),
                outcome: Ok((probe, renditions)),
            })
            .await
            .map_err(|e| RunFailure::transient(format!("metadata actor unavailable: {e}")))?
            .map_err(|e| RunFailure::transient(e.to_string()))?;
        Ok(RunReport {
            summary: Some(summary),
            speed: Some(speed),
        })
    }

    /// Replaces the media's output with the files under `out_dir`.
    async fn publish(&self, media: &Media, out_dir: &Path) -> Result<(), RunFailure> {
        let prefix = BlobStore::media_prefix(&media.id);
        let mut files =
            ffmpeg::files_under(out_dir).map_err(|e| RunFailure::transient(e.to_string()))?;
        // Segments first, the files that point at them last.
        files.sort_by_key(|file| {
            let name = file.to_string_lossy();
            (
                name.ends_with(".m3u8") || name.ends_with(".mpd"),
                name == "master.m3u8",
            )
        });
        // Ready media stops being served before its old output goes, so a player never follows
        // a playlist into a half-replaced ladder (nor does a crash in between leave one).
        self.metadata
            .send(MarkRepublishing {
                media_id: media.id.clone(),
            })
            .await
            .map_err(|e| RunFailure::transient(format!("metadata actor unavailable: {e}")))?
            .map_err(|e| RunFailure::transient(e.to_string()))?;
        self.blobs
            .delete_prefix(&prefix)
            .await
            .map_err(|e| RunFailure::transient(e.to_string()))?;
        // Each tier goes up as a whole before the next: segments, then what points at them.
        // Within a tier the files go up concurrently: on S3 each put is a round trip, and
        // locally each ends in an fsync, which concurrent puts share (the journal commits them
        // together). For a 4 s clip on the local disk the difference is within the noise.
        let tier = |file: &PathBuf| {
            let name = file.to_string_lossy();
            (
                name.ends_with(".m3u8") || name.ends_with(".mpd"),
                name == "master.m3u8",
            )
        };
        let mut start = 0;
        while start < files.len() {
            let end = files[start..]
                .iter()
                .position(|file| tier(file) != tier(&files[start]))
                .map_or(files.len(), |offset| start + offset);
            futures_util::stream::iter(&files[start..end])
                .map(|relative| self.publish_file(media, &prefix, out_dir, relative))
                .buffer_unordered(PUBLISH_CONCURRENCY)
                .try_collect::<()>()
                .await?;
            start = end;
        }
        Ok(())
    }

    /// Runs `encode` while publishing what ffmpeg finishes, a pass every half second.
    async fn encode_publishing(
        &self,
        encode: impl std::future::Future<Output = Result<(Probe, Vec<Rendition>), RunFailure>>,
        publisher: &mut Publisher,
        media: &Media,
    ) -> Result<(Probe, Vec<Rendition>), RunFailure> {
        tokio::pin!(encode);
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                result = &mut encode => return result,
                _ = tick.tick() => {}
            }
            match publisher.step().await {
                Ok(pass) if pass.became_playable => {
                    let marked = self
                        .metadata
                        .send(MarkPlayable {
                            media_id: media.id.clone(),
                        })
                        .await;
                    if !matches!(marked, Ok(Ok(()))) {
                        tracing::warn!(media_id = %media.id, "cannot mark the media playable");
                    }
                }
                Ok(_) => {}
                // The final publish puts everything again and fails the run if it still can't.
                Err(failure) => {
                    tracing::warn!(media_id = %media.id, error = ?failure, "early publish failed")
                }
            }
        }
    }

    /// The end of a run published while it encoded: segments not yet out, then the finished
    /// (VOD) playlists, the DASH manifest and the thumbnail, the master last. Nothing is deleted:
    /// players may be following the growing playlists.
    async fn publish_rest(
        &self,
        media: &Media,
        out_dir: &Path,
        publisher: &Publisher,
    ) -> Result<(), RunFailure> {
        let prefix = BlobStore::media_prefix(&media.id);
        let files =
            ffmpeg::files_under(out_dir).map_err(|e| RunFailure::transient(e.to_string()))?;
        let name = |file: &PathBuf| file.to_string_lossy().replace('\\', "/");
        let (mut segments, mut pointers): (Vec<&PathBuf>, Vec<&PathBuf>) = files
            .iter()
            .filter(|file| !publisher.is_published(&name(file)))
            .partition(|file| {
                let name = name(file);
                !(name.ends_with(".m3u8") || name.ends_with(".mpd"))
            });
        segments.sort();
        pointers.sort_by_key(|file| name(file) == progressive::MASTER);
        futures_util::stream::iter(segments)
            .map(|relative| self.publish_file(media, &prefix, out_dir, relative))
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        for relative in pointers {
            self.publish_file(media, &prefix, out_dir, relative).await?;
        }
        Ok(())
    }

    /// Puts one output file under its key.
    async fn publish_file(
        &self,
        media: &Media,
        prefix: &str,
        out_dir: &Path,
        relative: &Path,
    ) -> Result<(), RunFailure> {
        let name = relative.to_string_lossy().replace('\\', "/");
        let key = match name.as_str() {
            "thumbnail.jpg" => format!("{prefix}/thumbnail.jpg"),
            dash::MANIFEST_FILE => dash::manifest_key(&media.id),
            _ => BlobStore::hls_key(&media.id, &name),
        };
        self.blobs
            .put_file(&key, &out_dir.join(relative))
            .await
            .map_err(|e| RunFailure::transient(format!("cannot publish {name}: {e}")))
    }

    async fn thumbnail(&self, job: &Job, work_dir: &Path) -> Result<RunReport, RunFailure> {
        let media = self.media(job).await?;
        let out_dir = Self::fresh_output(work_dir).await?;
        let (input, container) = self.private_source(&media, work_dir).await?;
        let output = out_dir.join("thumbnail.jpg");
        let (config, kill_switch, target) = (
            self.config.clone(),
            self.kill_switch.clone(),
            output.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let probe = probe_source(&config, &input, container, &kill_switch)?;
            let args = ffmpeg::thumbnail_arguments(container.demuxer(), &input, &target, &probe);
            ffmpeg::run_ffmpeg(
                &config.ffmpeg_path,
                &args,
                probe.duration_s,
                &kill_switch,
                |_| {},
            )
        })
        .await
        .map_err(|e| RunFailure::transient(format!("worker thread failed: {e}")))??;
        let key = format!("{}/thumbnail.jpg", BlobStore::media_prefix(&media.id));
        self.blobs
            .put_file(&key, &output)
            .await
            .map_err(|e| RunFailure::transient(e.to_string()))?;
        Ok(RunReport::default())
    }

    async fn cleanup(&self) -> Result<RunReport, RunFailure> {
        let report = Cleanup {
            repo: self.repo.clone(),
            blobs: self.blobs.clone(),
            work_dir: self.work_root.clone(),
            running: self.running.clone(),
            min_age: Duration::from_secs(self.config.cleanup_min_age_s),
        }
        .run()
        .await?;
        Ok(RunReport {
            summary: Some(report.to_string()),
            speed: None,
        })
    }

    /// The source as a file of the job's own, and the container its first bytes are.
    ///
    /// ffmpeg never gets a path inside the blob root: on the local backend the blob is hard
    /// linked (copied across file systems) into the work directory, else downloaded there. So
    /// a reference inside the file that ffmpeg might follow, relative or not, finds no media.
    /// The container must be the one sniffed at upload.
    async fn private_source(
        &self,
        media: &Media,
        work_dir: &Path,
    ) -> Result<(PathBuf, Container), RunFailure> {
        let dir = work_dir.join("input");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| RunFailure::transient(format!("cannot create input dir: {e}")))?;
        // No extension: nothing may guess a format from the name.
        let path = dir.join("source");
        if let Some(blob) = self.blobs.local_path(&media.source_key) {
            let target = path.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::hard_link(&blob, &target)
                    .or_else(|_| std::fs::copy(&blob, &target).map(|_| ()))
            })
            .await
            .map_err(|e| RunFailure::transient(format!("worker thread failed: {e}")))?
            .map_err(|e| RunFailure::transient(format!("cannot copy the source: {e}")))?;
        } else {
            // Streamed to disk: sources can be many gigabytes.
            self.blobs
                .download_to(&media.source_key, &path)
                .await
                .map_err(|e| RunFailure::transient(e.to_string()))?;
        }
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        tokio::fs::File::open(&path)
            .await
            .map_err(|e| RunFailure::transient(format!("cannot open the source: {e}")))?
            .take(SNIFF_BYTES as u64)
            .read_to_end(&mut head)
            .await
            .map_err(|e| RunFailure::transient(format!("cannot read the source: {e}")))?;
        let sniffed = sniff_container(&head).ok_or_else(|| {
            RunFailure::rejected("unsupported_container", "not a video container we accept")
        })?;
        match media.container.as_deref() {
            Some(stored) if Container::parse(stored) != Some(sniffed) => Err(RunFailure::rejected(
                "format_mismatch",
                "the source no longer matches the container sniffed at upload",
            )
            .with_detail(format!("stored {stored}, sniffed {}", sniffed.as_str()))),
            _ => Ok((path, sniffed)),
        }
    }

    /// Probe, the one-decode ladder, the DASH manifest and the thumbnail, on the blocking pool.
    async fn encode(
        &self,
        job: &Job,
        input: &Path,
        container: Container,
        out_dir: &Path,
    ) -> Result<(Probe, Vec<Rendition>), RunFailure> {
        let config = self.config.clone();
        let input = input.to_path_buf();
        let out_dir = out_dir.to_path_buf();
        let kill_switch = self.kill_switch.clone();
        let progress_to = self.progress_to.clone();
        let job_id = job.id.clone();
        let profiles = job.profiles.clone();
        tokio::task::spawn_blocking(move || {
            let probe = probe_source(&config, &input, container, &kill_switch)?;
            let rungs = ffmpeg::plan_ladder(&config.ladder, &profiles, probe.height);
            let demuxer = container.demuxer();
            let args = ffmpeg::hls_arguments(&config, demuxer, &input, &out_dir, &probe, &rungs);
            let mut last = None;
            ffmpeg::run_ffmpeg(
                &config.ffmpeg_path,
                &args,
                probe.duration_s,
                &kill_switch,
                |progress| {
                    if last != Some(progress) {
                        last = Some(progress);
                        progress_to.do_send(JobProgressed {
                            job_id: job_id.clone(),
                            progress,
                        });
                    }
                },
            )?;
            // ffmpeg's playlists grew as EVENT playlists; finished, they are VOD.
            for rung in &rungs {
                let path = out_dir.join(&rung.name).join("index.m3u8");
                let finished = std::fs::read_to_string(&path)
                    .map_err(|e| RunFailure::transient(format!("cannot read a playlist: {e}")))?;
                std::fs::write(&path, progressive::as_vod(&finished))
                    .map_err(|e| RunFailure::transient(format!("cannot write a playlist: {e}")))?;
            }
            let manifest = dash::manifest_from_hls(&out_dir).map_err(|e| {
                RunFailure::transient(format!("cannot build the DASH manifest: {e}"))
            })?;
            std::fs::write(out_dir.join(dash::MANIFEST_FILE), manifest)
                .map_err(|e| RunFailure::transient(format!("cannot write manifest.mpd: {e}")))?;
            let thumbnail = ffmpeg::thumbnail_arguments(
                demuxer,
                &input,
                &out_dir.join("thumbnail.jpg"),
                &probe,
            );
            ffmpeg::run_ffmpeg(
                &config.ffmpeg_path,
                &thumbnail,
                probe.duration_s,
                &kill_switch,
                |_| {},
            )?;
            let renditions = ffmpeg::renditions(&probe, &rungs);
            Ok((probe, renditions))
        })
        .await
        .map_err(|e| RunFailure::transient(format!("worker thread failed: {e}")))?
    }
}

/// ffprobe on the private source, pinned to the accepted containers, under the probe deadline
/// and the job's kill switch.
fn probe_source(
    config: &TranscodeConfig,
    input: &Path,
    container: Container,
    kill_switch: &KillSwitch,
) -> Result<Probe, RunFailure> {
    ffmpeg::probe(
        &config.ffprobe_path,
        input,
        container,
        &SourceLimits::from(config),
        Duration::from_secs(config.probe_timeout_s),
        kill_switch,
    )
}
