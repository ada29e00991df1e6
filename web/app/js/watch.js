// The watch page: hls.js (adaptive bitrate, a quality menu) or the browser's own HLS (Safari).
// Gated media: the page fetches the master playlist with the wallet session; the playback
// token the server puts in its URIs is then used for the player and the poster, so the person
// never handles it. Without a session, or without the token, the page says why.

import { api, ApiError, bearer, getSession } from './api.js';
import { signInButton } from './main.js';
import { duration, h, notice, page, shortAddress, toast, when } from './ui.js';

let hlsModule;
async function loadHls() {
  hlsModule ??= import('/app/vendor/hls.min.mjs');
  return (await hlsModule).default;
}

/** The playback token of a gated item, from the master playlist served to our session. */
async function playbackToken(media) {
  const token = bearer();
  const response = await fetch(media.hls_url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  const text = await response.text();
  if (!response.ok) {
    let data = {};
    try { data = JSON.parse(text); } catch { /* not JSON */ }
    throw new ApiError(response.status, data.code || `http_${response.status}`, data.message || response.statusText);
  }
  const match = /[?&]token=([^&\s"]+)/.exec(text);
  return match ? decodeURIComponent(match[1]) : null;
}

function withToken(url, token) {
  return token ? `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}` : url;
}

function gateTerms(gate) {
  if (!gate) return 'a token from the collection the owner chose';
  const id = gate.token_id ? ` #${gate.token_id}` : '';
  const count = gate.min_balance > 1 ? `${gate.min_balance} tokens` : 'a token';
  return `${count}${id} of the ${gate.standard.toUpperCase()} contract ${gate.contract} on chain ${gate.chain_id}`;
}

function explainGate(media, gate, error) {
  const session = getSession();
  const terms = gateTerms(gate);
  if (!session) {
    return notice(`This video is only for holders of ${terms}. Sign in with your wallet so we can check that you hold it.`,
      'gate', signInButton('Sign in to watch'));
  }
  if (error?.code === 'gate_not_passed') {
    return notice(`Your wallet ${shortAddress(session.address)} does not hold ${terms}, so this video cannot play for you. Holders can watch it after signing in.`, 'gate');
  }
  return notice(`This video is gated and could not be unlocked: ${error?.message || 'unknown reason'}`, 'error');
}

export async function show(id) {
  page('Loading…');
  let media;
  try {
    media = await api(`/media/${encodeURIComponent(id)}`, { auth: false });
  } catch (error) {
    page('Video not found', notice(error.code === 'media_not_found' ? 'There is no video with this link.' : `Could not load the video: ${error.message}`, 'error'));
    return undefined;
  }
  const title = media.title || media.filename || 'Untitled';
  const stage = h('div', { class: 'stage' });
  const controls = h('div', { class: 'player-controls' });
  const shareUrl = `${location.origin}/watch/${media.id}`;
  const shareInput = h('input', { id: 'share', type: 'text', readonly: true, value: shareUrl });
  const details = h('section', { class: 'details', 'aria-label': 'About this video' },
    h('p', { class: 'meta' }, `by ${shortAddress(media.owner)} · ${duration(media.duration_s)} · ${when(media.created_at)}`,
      media.gated ? h('span', { class: 'badge gated' }, 'Gated') : null),
    media.description ? h('p', { class: 'description' }, media.description) : null,
    media.tags?.length ? h('ul', { class: 'tags', 'aria-label': 'Tags' }, media.tags.map((tag) => h('li', {}, h('a', { href: `/?tag=${encodeURIComponent(tag)}` }, `#${tag}`)))) : null,
    h('div', { class: 'field share' }, h('label', { for: 'share' }, 'Share link'), h('div', { class: 'row' }, shareInput,
      h('button', { type: 'button', onclick: async () => {
        shareInput.select();
        try { await navigator.clipboard.writeText(shareUrl); toast('Link copied'); } catch { toast('Select the link and copy it'); }
      } }, 'Copy link'))));
  page(title, stage, controls, details);

  if (media.state !== 'ready' && !media.playable) {
    const waiting = media.state === 'failed'
      ? notice(`Processing this video failed: ${media.failure || 'unknown error'}`, 'error')
      : notice(`This video is still being processed (${media.state}). This page refreshes when it is ready.`);
    stage.replaceChildren(waiting);
    if (media.state === 'failed') return undefined;
    const timer = setInterval(async () => {
      try {
        const now = await api(`/media/${media.id}`, { auth: false });
        if (now.state !== media.state || now.playable) { clearInterval(timer); show(id); }
      } catch { /* keep waiting */ }
    }, 2000);
    return () => clearInterval(timer);
  }

  let token = null;
  if (media.gated) {
    let gate = null;
    try { gate = (await api(`/media/${media.id}/gate`, { auth: false })).gate; } catch { /* explained without terms */ }
    if (!getSession() && !bearer()) {
      stage.replaceChildren(explainGate(media, gate));
      return undefined;
    }
    try {
      token = await playbackToken(media);
    } catch (error) {
      stage.replaceChildren(explainGate(media, gate, error));
      return undefined;
    }
  }

  const video = h('video', {
    // Someone who opened a video wants it to play; a browser that refuses autoplay shows play.
    controls: true, autoplay: true, playsinline: true, 'aria-label': title,
    poster: withToken(media.thumbnail_url, token),
  });
  stage.replaceChildren(video);
  const source = withToken(media.hls_url, token);
  const Hls = await loadHls().catch(() => null);
  if (Hls?.isSupported()) {
    // From the start, also while the video is still being encoded (a growing EVENT playlist).
    const hls = new Hls({ enableWorker: false, startPosition: 0 });
    const select = h('select', { id: 'quality' }, h('option', { value: '-1' }, 'Auto'));
    const qualitySlot = h('div');
    const captionSlot = h('div');
    controls.replaceChildren(qualitySlot, captionSlot);
    select.addEventListener('change', () => { hls.currentLevel = Number(select.value); });
    hls.on(Hls.Events.MANIFEST_PARSED, (_, data) => {
      const options = data.levels
        .map((level, index) => ({ index, height: level.height, kbps: Math.round(level.bitrate / 1000) }))
        .sort((a, b) => b.height - a.height)
        .map((level) => h('option', { value: String(level.index) }, `${level.height}p (${level.kbps} kbps)`));
      // Parsed again after a reload: the menu is rebuilt, not extended.
      select.replaceChildren(h('option', { value: '-1' }, 'Auto'), ...options);
      qualitySlot.replaceChildren(h('div', { class: 'field inline' }, h('label', { for: 'quality' }, 'Quality'), select));
    });
    hls.on(Hls.Events.SUBTITLE_TRACKS_UPDATED, (_, data) => {
      if (!data.subtitleTracks.length) return;
      const captions = h('select', { id: 'captions' }, h('option', { value: '-1' }, 'Off'),
        ...data.subtitleTracks.map((track, index) => h('option', { value: String(index) }, track.name || track.lang)));
      captions.addEventListener('change', () => {
        hls.subtitleTrack = Number(captions.value);
        hls.subtitleDisplay = hls.subtitleTrack >= 0;
      });
      captionSlot.replaceChildren(h('div', { class: 'field inline' }, h('label', { for: 'captions' }, 'Captions'), captions));
    });
    let recovered = false;
    let current = source;
    // Loads again from where playback stands: after a fresh token or a network failure.
    const reload = () => {
      hls.loadSource(current);
      hls.startLoad(video.currentTime);
    };
    let problem = null;
    const report = (element) => {
      problem?.remove();
      problem = element;
      stage.append(element);
    };
    const retry = () => {
      problem?.remove();
      problem = null;
      reload();
    };
    let waitingForNetwork = null;
    hls.on(Hls.Events.ERROR, async (_, data) => {
      if (!data.fatal) return;
      const status = data.response?.code;
      // An expired playback token: fetch a fresh one and carry on where we were.
      if (media.gated && (status === 401 || status === 403) && !recovered) {
        recovered = true;
        try {
          token = await playbackToken(media);
          current = withToken(media.hls_url, token);
          reload();
          return;
        } catch { /* reported below */ }
      }
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR && !recovered) {
        recovered = true;
        hls.recoverMediaError();
        return;
      }
      if (data.type === Hls.ErrorTypes.NETWORK_ERROR && !navigator.onLine) {
        report(notice('You are offline. Playback goes on by itself when the connection is back.'));
        waitingForNetwork = retry;
        window.addEventListener('online', retry, { once: true });
        return;
      }
      if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
        const again = h('button', { type: 'button', onclick: retry }, 'Try again');
        report(notice(`Playback stopped: the video could not be loaded (${data.details}).`, 'error', again));
        return;
      }
      report(notice(`Playback failed (${data.details}).`, 'error'));
    });
    hls.loadSource(source);
    hls.attachMedia(video);
    return () => {
      if (waitingForNetwork) window.removeEventListener('online', waitingForNetwork);
      hls.destroy();
    };
  }
  if (video.canPlayType('application/vnd.apple.mpegurl')) {
    video.src = source;
    return () => video.removeAttribute('src');
  }
  stage.append(notice('This browser cannot play HLS video.', 'error'));
  return undefined;
}
