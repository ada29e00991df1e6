// Upload: a file (drag and drop or the picker) plus title, description and tags, sent over tus
// with tus-js-client (pause, resume, and after a reload it continues where it stopped: the
// client remembers each upload's URL by the file's fingerprint). Then the transcode's progress.

import { api, bearer } from './api.js';
import { signInButton } from './main.js';
import { bytes, duration, field, h, notice, page, progress } from './ui.js';

const CHUNK = 4 * 1024 * 1024;
// Retries span a minute: while another connection (a second tab, another node) is still sending
// to the upload, the server answers 423. A connection that died silently is taken over after 5 s.
const RETRY_DELAYS = [0, 1000, 2000, 3000, 5000, 5000, 5000, 10000, 10000, 10000, 10000];

let tusModule;
async function loadTus() {
  tusModule ??= import('/app/vendor/tus.min.js');
  await tusModule;
  return window.tus;
}

export async function show() {
  if (!bearer()) {
    page('Upload', notice('Sign in with your wallet to upload videos.', 'info', signInButton()));
    return undefined;
  }
  const tus = await loadTus();
  let upload = null;
  let stopped = false;
  let timer = null;
  let waitingForNetwork = null;
  let retrying = false;

  const [titleField, title] = field('Title', { name: 'title', maxlength: 200, required: true });
  const [descField, description] = field('Description', { name: 'description', rows: 3 }, 'textarea');
  const [tagsField, tags] = field('Tags', { name: 'tags', 'data-hint': 'Comma separated, e.g. music, live' });
  const file = h('input', { type: 'file', id: 'file', name: 'file', accept: 'video/*', required: true, class: 'visually-hidden' });
  const chosen = h('p', { class: 'chosen', id: 'chosen' }, 'No file chosen');
  const drop = h('div', { class: 'drop' },
    h('label', { for: 'file' }, h('strong', {}, 'Choose a video'), ' or drop it here'), file, chosen);
  const start = h('button', { type: 'submit', class: 'primary' }, 'Upload');
  const pause = h('button', { type: 'button', hidden: true }, 'Pause');
  const resume = h('button', { type: 'button', hidden: true }, 'Resume');
  const bar = progress('Upload progress');
  const figures = h('p', { class: 'figures', id: 'upload-figures', 'aria-live': 'off' });
  const status = h('div', { class: 'upload-status', role: 'status', 'aria-live': 'polite' });
  const progressBox = h('div', { class: 'upload-progress', hidden: true }, bar, figures, h('div', { class: 'row' }, pause, resume));

  function picked() {
    const f = file.files[0];
    chosen.textContent = f ? `${f.name} (${bytes(f.size)})` : 'No file chosen';
    if (f && !title.value) title.value = f.name.replace(/\.[^.]+$/, '');
  }
  file.addEventListener('change', picked);
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    if (event.dataTransfer?.files?.length) {
      file.files = event.dataTransfer.files;
      picked();
    }
  });

  const form = h('form', { class: 'upload-form', onsubmit: (event) => { event.preventDefault(); begin(); } },
    drop, titleField, descField, tagsField, h('div', { class: 'row' }, start));

  // Uploads a reload interrupted: the same file picks up where it stopped.
  const unfinished = h('div', { class: 'unfinished' });
  try {
    const previous = await tus.defaultOptions.urlStorage.findAllUploads();
    if (previous.length) {
      unfinished.append(notice(`Unfinished upload${previous.length > 1 ? 's' : ''}: ${previous.map((p) => p.metadata?.filename || 'a file').join(', ')}. Choose the same file again to continue where it stopped.`));
    }
  } catch { /* nothing remembered */ }

  page('Upload', unfinished, form, progressBox, status);

  // Speed counts from the first progress report of this run (a resumed upload starts midway).
  let sentAtStart = null;
  let startedAt = 0;
  function showProgress(sent, total) {
    if (sentAtStart === null) {
      sentAtStart = sent;
      startedAt = performance.now();
    }
    const percent = total ? Math.floor((sent / total) * 100) : 0;
    bar.value = percent;
    const elapsed = (performance.now() - startedAt) / 1000;
    const speed = elapsed > 0.2 ? (sent - sentAtStart) / elapsed : 0;
    const left = speed > 0 ? (total - sent) / speed : null;
    figures.textContent = `${percent}% · ${bytes(sent)} of ${bytes(total)}`
      + (speed ? ` · ${bytes(speed)}/s` : '') + (left !== null && sent < total ? ` · ${duration(left)} left` : '');
    figures.dataset.percent = String(percent);
  }

  function run(resuming) {
    stopped = false;
    forgetNetwork();
    sentAtStart = null;
    pause.hidden = false;
    resume.hidden = true;
    status.replaceChildren(h('p', {}, resuming ? 'Resuming…' : 'Uploading…'));
    upload.start();
  }

  // Offline, the client does not retry; it goes on by itself once the browser is back online.
  function resumeWhenOnline() {
    forgetNetwork();
    waitingForNetwork = () => { if (!stopped) run(true); };
    window.addEventListener('online', waitingForNetwork, { once: true });
  }
  function forgetNetwork() {
    if (waitingForNetwork) window.removeEventListener('online', waitingForNetwork);
    waitingForNetwork = null;
  }

  // tus-js-client's own rule (network errors, 5xx, 409 and 423 while online), saying so.
  function shouldRetry(error, attempt) {
    const code = error.originalResponse?.getStatus?.() ?? 0;
    const retry = navigator.onLine && (code < 400 || code >= 500 || code === 409 || code === 423);
    if (retry && !stopped) {
      retrying = true;
      const wait = RETRY_DELAYS[attempt] / 1000;
      const why = code === 423 ? 'Another connection is still sending this upload' : 'The connection was interrupted';
      status.replaceChildren(h('p', {}, `${why}; retrying${wait ? ` in ${wait} s` : ''}…`));
    }
    return retry;
  }

  pause.addEventListener('click', async () => {
    stopped = true;
    forgetNetwork();
    await upload.abort();
    pause.hidden = true;
    resume.hidden = false;
    status.replaceChildren(h('p', {}, 'Paused. Resume here, or reload the page and choose the same file later.'));
    resume.focus();
  });
  resume.addEventListener('click', () => { run(true); pause.focus(); });

  async function begin() {
    const f = file.files[0];
    if (!f) {
      status.replaceChildren(notice('Choose a video file first.', 'error'));
      return;
    }
    form.querySelectorAll('input, textarea, button').forEach((element) => { element.disabled = true; });
    progressBox.hidden = false;
    upload = new tus.Upload(f, {
      endpoint: '/api/v1/uploads',
      chunkSize: CHUNK,
      retryDelays: RETRY_DELAYS,
      onShouldRetry: shouldRetry,
      headers: { authorization: `Bearer ${bearer()}` },
      metadata: { filename: f.name, filetype: f.type, title: title.value.trim(), description: description.value.trim(), tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean).join(',') },
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      onProgress: showProgress,
      onChunkComplete: () => {
        if (!retrying) return;
        retrying = false;
        status.replaceChildren(h('p', {}, 'Uploading…'));
      },
      onError: (error) => {
        if (stopped) return;
        pause.hidden = true;
        resume.hidden = false;
        if (!navigator.onLine) {
          status.replaceChildren(notice('You are offline. The upload goes on by itself when the connection is back.', 'info'));
          resumeWhenOnline();
          return;
        }
        const body = error.originalResponse?.getBody?.();
        let message = error.message;
        try { message = JSON.parse(body).message || message; } catch { /* not JSON */ }
        status.replaceChildren(notice(`The upload failed: ${message}`, 'error'));
      },
      onSuccess: () => finished(),
    });
    const previous = await upload.findPreviousUploads();
    if (previous.length) {
      upload.resumeFromPreviousUpload(previous[0]);
      unfinished.replaceChildren();
      run(true);
    } else {
      run(false);
    }
  }

  async function finished() {
    pause.hidden = true;
    resume.hidden = true;
    showProgress(1, 1);
    const uploadId = upload.url.split('/').pop();
    let mediaId;
    try {
      mediaId = (await api(`/uploads/${uploadId}`)).media_id;
    } catch (error) {
      status.replaceChildren(notice(`Uploaded, but its status could not be read: ${error.message}`, 'error'));
      return;
    }
    const jobBar = progress('Processing progress');
    const jobText = h('p', { id: 'job-status' }, 'Queued for processing…');
    status.replaceChildren(h('p', {}, 'Upload complete.'), h('h2', {}, 'Processing'), jobBar, jobText);
    const poll = async () => {
      try {
        const media = await api(`/media/${mediaId}`, { auth: false });
        if (media.state === 'ready') {
          jobBar.value = 100;
          jobText.textContent = 'Ready.';
          document.getElementById('watch-early-link')?.parentElement?.remove();
          status.append(h('p', {}, h('a', { href: `/watch/${mediaId}`, class: 'button primary', id: 'watch-link' }, `Watch “${media.title || 'your video'}”`)));
          return;
        }
        // Published while it encodes: it plays from the start already.
        if (media.playable && !document.getElementById('watch-early-link')) {
          status.append(h('p', {}, h('a', { href: `/watch/${mediaId}`, class: 'button', id: 'watch-early-link' }, 'Watch now (still processing)')));
        }
        if (media.state === 'failed') {
          jobText.replaceWith(notice(`Processing failed: ${media.failure || 'unknown error'}`, 'error'));
          return;
        }
        const jobs = await api(`/jobs?media_id=${mediaId}&limit=5`);
        const job = jobs.items.find((j) => j.kind === 'transcode') || jobs.items[0];
        if (job) {
          jobBar.value = job.progress;
          jobText.textContent = `Transcoding: ${job.state}, ${job.progress}%`;
        }
      } catch { /* keep polling */ }
      timer = setTimeout(poll, 1000);
    };
    poll();
  }

  return () => {
    clearTimeout(timer);
    forgetNetwork();
    if (upload && !stopped) {
      stopped = true;
      upload.abort();
    }
  };
}
