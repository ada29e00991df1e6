// The web app in a real browser: headless Chromium (Debian's package) driven by playwright-core,
// against the real `streamgate` binary with a real anvil chain, real ffmpeg clips and real
// wallet signatures (cast, with anvil's dev keys behind an injected EIP-1193 provider).
//
// Run: node --test tests/browser/ (`.ci/test` installs the tools and builds the binary first).
// Needs: target/debug/streamgate (or STREAMGATE_BIN), chromium (or CHROMIUM), ffmpeg, and
// target/ci-node with playwright-core, axe-core, anvil, cast, @openzeppelin/contracts.
// A missing tool fails the run with the install line; nothing is skipped.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { connect, createServer } from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const NODE_DIR = process.env.STREAMGATE_CI_NODE || path.join(ROOT, 'target/ci-node');
const SHOTS = path.join(ROOT, 'target/browser-screenshots');
const INSTALL = 'bash .ci/test (or: npm install --prefix target/ci-node playwright-core axe-core @foundry-rs/anvil @foundry-rs/cast @openzeppelin/contracts; apt-get install chromium ffmpeg)';

function need(file, what) {
  if (!existsSync(file)) throw new Error(`${what} is missing at ${file}; install with: ${INSTALL}`);
  return file;
}

const require = createRequire(path.join(NODE_DIR, '/'));
let chromium;
try {
  ({ chromium } = require('playwright-core'));
} catch {
  throw new Error(`playwright-core is missing in ${NODE_DIR}; install with: ${INSTALL}`);
}
const AXE = readFileSync(need(path.join(NODE_DIR, 'node_modules/axe-core/axe.min.js'), 'axe-core'), 'utf8');
const CHROMIUM = need(process.env.CHROMIUM || '/usr/bin/chromium', 'chromium');
const BIN = need(process.env.STREAMGATE_BIN || path.join(ROOT, 'target/debug/streamgate'), 'the streamgate binary (cargo build --bin streamgate)');
const arch = process.arch === 'arm64' ? 'arm64' : 'amd64';
const ANVIL = need(path.join(NODE_DIR, `node_modules/@foundry-rs/anvil-linux-${arch}/bin/anvil`), 'anvil');
const CAST = need(path.join(NODE_DIR, `node_modules/@foundry-rs/cast-linux-${arch}/bin/cast`), 'cast');

// anvil's dev accounts: ALICE uploads and owns, BOB holds nothing, CAROL holds the pass.
const ALICE = { key: '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80', address: '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266' };
const BOB = { key: '0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d', address: '0x70997970C51812dc3A010C7d01b50e0d17dc79C8' };
const CAROL = { key: '0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9eb1744bbbb8c', address: '0x83931d56B8E787C83CA7551574E56CeB43CccA19' };
const CHAIN_ID = 31337;
const ADMIN_TOKEN = 'browser-suite-admin-token-0123456789';

const children = [];
let work;
let base;
let rpc;
let browser;
let contract;
let clip;
let bigClip;
const state = {};
const problems = [];

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** Polls `check` until it returns a truthy value or the deadline passes. */
async function until(what, check, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

function start(command, args, name) {
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr = (stderr + chunk).slice(-4000); });
  child.on('exit', (code) => { if (code) problems.push(`${name} exited ${code}: ${stderr}`); });
  children.push(child);
  return child;
}

function cast(...args) {
  return execFileSync(CAST, args, { encoding: 'utf8' }).trim();
}

function makeClip(name, video, seconds, extra = []) {
  const file = path.join(work, name);
  execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'lavfi', '-i', video,
    '-f', 'lavfi', '-i', 'sine=frequency=440', '-t', String(seconds), '-c:v', 'libx264', '-preset', 'ultrafast',
    ...extra, '-c:a', 'aac', '-shortest', file]);
  return file;
}

async function api(pathname, { method = 'GET', token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body) headers['content-type'] = 'application/json';
  const response = await fetch(`${base}${pathname}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** A browser context whose page sees `wallet` as an injected EIP-1193 provider. */
async function walletContext(wallet, { refuse = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  if (wallet) {
    await context.exposeBinding('__walletSign', (_source, hexMessage) => {
      const message = Buffer.from(hexMessage.slice(2), 'hex').toString('utf8');
      return cast('wallet', 'sign', '--private-key', wallet.key, message);
    });
    await context.addInitScript(({ address, chainId, refuseSigning }) => {
      window.ethereum = {
        async request({ method, params }) {
          if (method === 'eth_requestAccounts' || method === 'eth_accounts') return [address];
          if (method === 'eth_chainId') return `0x${chainId.toString(16)}`;
          if (method === 'personal_sign') {
            if (refuseSigning) throw Object.assign(new Error('User rejected the request.'), { code: 4001 });
            return window.__walletSign(params[0]);
          }
          throw Object.assign(new Error(`unsupported ${method}`), { code: 4200 });
        },
      };
    }, { address: wallet.address, chainId: CHAIN_ID, refuseSigning: refuse });
  }
  return context;
}

async function newPage(context) {
  const page = await context.newPage();
  page.on('console', (message) => {
    if (/Content Security Policy|Refused to/i.test(message.text())) problems.push(`CSP: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  return page;
}

/** axe-core on the page as it stands: no serious or critical violations. */
async function accessible(page, name) {
  // Evaluated over the DevTools protocol, so the page's CSP (no inline script) stays on.
  await page.evaluate(AXE);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  });
  assert.deepEqual(violations, [], `axe on ${name}`);
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(page) {
  await page.getByRole('button', { name: 'Sign in with wallet' }).first().click();
  await page.getByText(/^Signed in: /).waitFor();
}

async function uploadThroughPage(page, file, title, tags) {
  await page.goto(`${base}/upload`);
  await page.setInputFiles('#file', file);
  await page.getByLabel('Title').fill(title);
  await page.getByLabel('Tags').fill(tags);
  await page.getByRole('button', { name: 'Upload' }).click();
}

/** Holds the page's second tus PATCH in the browser: `route` resolves to it, for the test to end. */
async function holdSecondChunk(page) {
  let patches = 0;
  let held;
  const heldChunk = new Promise((resolve) => { held = resolve; });
  await page.route('**/api/v1/uploads/*', async (route) => {
    if (route.request().method() === 'PATCH' && ++patches === 2) {
      held(route);
      return;
    }
    await route.continue();
  });
  // Wrapped: an async function's returned promise would be awaited along with it.
  return { route: heldChunk };
}

async function watchToTheEnd(page) {
  const video = page.locator('video');
  await video.waitFor();
  await page.waitForFunction(() => document.querySelector('video')?.readyState >= 2, null, { timeout: 60_000 });
  await page.evaluate(() => document.querySelector('video').play());
  await page.waitForFunction(() => document.querySelector('video').ended, null, { timeout: 60_000 });
  return page.evaluate(() => {
    const v = document.querySelector('video');
    return { currentTime: v.currentTime, duration: v.duration, ended: v.ended };
  });
}

before(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'streamgate-browser-'));
  mkdirSync(SHOTS, { recursive: true });
  clip = makeClip('clip.mp4', 'testsrc2=size=854x480:rate=30', 4);
  // Noise barely compresses, so the file spans three 4 MiB tus chunks and can be paused midway.
  bigClip = makeClip('big.mp4', 'testsrc2=size=640x360:rate=30,noise=alls=40:allf=t', 2, ['-qp', '20']);

  const anvilPort = await freePort();
  rpc = `http://127.0.0.1:${anvilPort}`;
  start(ANVIL, ['--host', '127.0.0.1', '--port', String(anvilPort)], 'anvil');
  await until('anvil', async () => (await fetch(rpc, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_chainId', params: [] }) })).ok);
  const artifact = JSON.parse(readFileSync(need(path.join(NODE_DIR,
    'node_modules/@openzeppelin/contracts/build/contracts/ERC721PresetMinterPauserAutoId.json'), '@openzeppelin/contracts'), 'utf8'));
  const deployed = JSON.parse(cast('send', '--json', '--rpc-url', rpc, '--private-key', ALICE.key, '--create', artifact.bytecode,
    'constructor(string,string,string)', 'Gate Pass', 'PASS', 'https://example.invalid/'));
  contract = deployed.contractAddress;
  cast('send', '--json', '--rpc-url', rpc, '--private-key', ALICE.key, contract, 'mint(address)', CAROL.address);

  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  start(BIN, ['--data-dir', path.join(work, 'data'), '--bind', `127.0.0.1:${port}`,
    '--set', `auth.admin_token="${ADMIN_TOKEN}"`,
    '--set', `auth.allowed_chain_ids=[${CHAIN_ID}]`,
    '--set', `auth.domain="127.0.0.1:${port}"`,
    '--set', `auth.uri="${base}"`,
    '--set', `auth.rpc=[{ chain_id = ${CHAIN_ID}, url = "${rpc}" }]`,
    '--set', 'auth.rpc_timeout_ms=30000',
    '--set', 'transcode.x264_preset="ultrafast"',
    '--set', 'storage.min_free_disk_mb=1'], 'streamgate');
  await until('streamgate to be ready', async () => (await fetch(`${base}/ready`)).ok);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--autoplay-policy=no-user-gesture-required'] });
});

after(async () => {
  await browser?.close();
  for (const child of children) child.kill('SIGTERM');
  if (work) rmSync(work, { recursive: true, force: true });
  assert.deepEqual(problems, [], 'no CSP violations, page errors or crashed processes');
});

test('the app is served at / with a self-only CSP; /api stays JSON', async () => {
  const page = await fetch(`${base}/watch/anything`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type'), /text\/html/);
  const csp = page.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self';/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:/);
  const html = await page.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script');
  assert.equal((await fetch(`${base}/`, { method: 'HEAD' })).status, 200);
  const api = await fetch(`${base}/api/v1/nothing`);
  assert.equal(api.status, 404);
  assert.match(api.headers.get('content-type'), /application\/json/);
  assert.equal((await fetch(`${base}/app/js/nothing.js`)).status, 404);
});

test("the app's own JS, CSS and HTML stay under 150 KB gzipped", async () => {
  const app = path.join(ROOT, 'web/app');
  const own = ['index.html', 'app.css', ...readdirSync(path.join(app, 'js')).map((file) => `js/${file}`)];
  let total = 0;
  for (const file of own) {
    // What the browser loads is what the binary serves.
    const served = Buffer.from(await (await fetch(`${base}/app/${file}`)).arrayBuffer());
    assert.deepEqual(served, readFileSync(path.join(app, file)), file);
    total += gzipSync(served, { level: 9 }).length;
  }
  console.log(`app bundle: ${own.length} files, ${(total / 1024).toFixed(1)} KB gzipped (hls.js and tus-js-client not counted)`);
  assert.ok(total <= 150 * 1024, `${total} bytes gzipped`);
});

test('keyboard: skip link first, then the navigation; a phone gets one column without sideways scrolling', async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await newPage(context);
  await page.goto(base);
  await page.getByRole('heading', { name: 'Library' }).waitFor();
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Library');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Upload' }).waitFor();
  assert.equal(new URL(page.url()).pathname, '/upload');
  await page.goto(base);
  await page.getByRole('heading', { name: 'Library' }).waitFor();
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no sideways scrolling');
  const columns = await page.evaluate(() => getComputedStyle(document.querySelector('.grid')).gridTemplateColumns.split(' ').length);
  assert.equal(columns, 1);
  await accessible(page, 'library-phone');
  await context.close();
});

test('wallet sign-in survives a reload; sign-out ends the session on the server', async () => {
  const context = await walletContext(ALICE);
  const page = await newPage(context);
  await page.goto(base);
  await signIn(page);
  await page.reload();
  await page.getByText(`Signed in: ${ALICE.address.slice(0, 6)}`).waitFor();
  const token = await page.evaluate(() => JSON.parse(localStorage.getItem('streamgate.session')).token);
  assert.equal((await api('/api/v1/auth/verify', { method: 'POST', token })).status, 200);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('button', { name: 'Sign in with wallet' }).waitFor();
  assert.equal((await api('/api/v1/auth/verify', { method: 'POST', token })).status, 401);
  await context.close();
});

test('a refused signature, a wrong chain and a missing wallet are explained', async () => {
  const refusing = await walletContext(BOB, { refuse: true });
  let page = await newPage(refusing);
  await page.goto(base);
  await page.getByRole('button', { name: 'Sign in with wallet' }).click();
  await page.getByRole('alert').filter({ hasText: 'refused to sign' }).waitFor();
  await refusing.close();

  const wrongChain = await browser.newContext();
  await wrongChain.addInitScript(() => {
    window.ethereum = { request: async ({ method }) => (method === 'eth_chainId' ? '0x1' : ['0x70997970C51812dc3A010C7d01b50e0d17dc79C8']) };
  });
  page = await newPage(wrongChain);
  await page.goto(base);
  await page.getByRole('button', { name: 'Sign in with wallet' }).click();
  await page.getByRole('alert').filter({ hasText: 'Wrong network: your wallet is on chain 1' }).waitFor();
  await wrongChain.close();

  const none = await browser.newContext();
  page = await newPage(none);
  await page.goto(base);
  await page.getByRole('button', { name: 'Sign in with wallet' }).click();
  await page.getByRole('alert').filter({ hasText: 'No wallet found' }).waitFor();
  await none.close();
});

test('upload a clip through the page, follow the transcode, watch it to the end', { timeout: 240_000 }, async () => {
  const context = await walletContext(ALICE);
  const page = await newPage(context);
  await page.goto(`${base}/upload`);
  await accessible(page, 'upload-signed-out');
  await signIn(page);
  await page.getByLabel('Title').waitFor();
  await accessible(page, 'upload');
  await uploadThroughPage(page, clip, 'Test pattern', 'demo, browser');
  await page.getByText(/^Transcoding: |^Ready\./).first().waitFor({ timeout: 120_000 });
  const watch = page.locator('#watch-link');
  await watch.waitFor({ timeout: 180_000 });
  const href = await watch.getAttribute('href');
  state.mediaId = href.split('/').pop();
  await watch.click();
  await page.locator('#quality').waitFor();
  const qualities = await page.locator('#quality option').allTextContents();
  assert.deepEqual(qualities.map((q) => q.split(' ')[0]), ['Auto', '480p', '360p']);
  const played = await watchToTheEnd(page);
  assert.ok(played.ended && played.currentTime > 3.5, `played to the end: ${JSON.stringify(played)}`);
  await accessible(page, 'watch');

  await page.goto(`${base}/?q=pattern`);
  const card = page.locator('.card', { hasText: 'Test pattern' });
  await card.waitFor();
  assert.match(await card.textContent(), /0:04/);
  await page.waitForFunction(() => [...document.querySelectorAll('.card img')].every((img) => img.complete && img.naturalWidth > 0));
  assert.equal(await page.getByRole('button', { name: 'Load more' }).isVisible(), false, 'one page: no "load more"');
  await accessible(page, 'library-search');
  await page.goto(`${base}/?tag=browser`);
  await page.locator('.card', { hasText: 'Test pattern' }).waitFor();
  await page.goto(`${base}/?tag=no-such-tag`);
  await page.getByText('No videos match.').waitFor();
  await context.close();
});

test('captions: the watch page offers the track and hls.js loads its cues', { timeout: 120_000 }, async () => {
  assert.ok(state.mediaId, 'the upload test ran first');
  const vtt = 'WEBVTT\n\n00:00:00.000 --> 00:00:03.000\nHello from the caption track\n';
  const stored = await fetch(`${base}/api/v1/media/${state.mediaId}/captions/en`, {
    method: 'PUT', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'text/vtt' }, body: vtt });
  assert.equal(stored.status, 200, await stored.text());
  const context = await walletContext(null);
  const page = await newPage(context);
  await page.goto(`${base}/watch/${state.mediaId}`);
  const menu = page.locator('#captions');
  await menu.waitFor({ timeout: 60_000 });
  assert.deepEqual(await page.locator('#captions option').allTextContents(), ['Off', 'en']);
  await menu.selectOption({ label: 'en' });
  const cues = await until('hls.js to load the caption cues', () => page.evaluate(() =>
    [...document.querySelector('video').textTracks].flatMap((track) => [...(track.cues || [])].map((cue) => cue.text))
  ).then((texts) => (texts.includes('Hello from the caption track') ? texts : null)));
  assert.ok(cues.length >= 1);
  await accessible(page, 'watch-captions');
  await context.close();
});

test('playback that lost the network goes on by itself when it is back; a failed load can be tried again', { timeout: 120_000 }, async () => {
  assert.ok(state.mediaId, 'the upload test ran first');
  const context = await browser.newContext();
  const page = await newPage(context);
  const playlist = '**/hls/master.m3u8*';
  // The playlist request fails as the network goes away.
  let held;
  const heldPlaylist = new Promise((resolve) => { held = resolve; });
  await page.route(playlist, (route) => held(route));
  await page.goto(`${base}/watch/${state.mediaId}`);
  const route = await heldPlaylist;
  await context.setOffline(true);
  await route.abort('internetdisconnected');
  await page.unroute(playlist);
  await page.getByText('You are offline. Playback goes on by itself when the connection is back.').waitFor();
  await context.setOffline(false);
  const watched = await watchToTheEnd(page);
  assert.ok(watched.ended && watched.currentTime > 3, JSON.stringify(watched));
  assert.equal(await page.locator('.notice').count(), 0, 'the notice is gone once playing');
  const qualities = await page.locator('#quality option').allTextContents();
  assert.ok(qualities.length > 1 && qualities[0] === 'Auto', qualities.join());
  assert.equal(new Set(qualities).size, qualities.length, `each rung once: ${qualities}`);

  // Online, a load that keeps failing stops with a way to try again.
  await page.route(playlist, (failing) => failing.abort('connectionrefused'));
  await page.reload();
  const again = page.getByRole('button', { name: 'Try again' });
  await again.waitFor();
  await page.getByText(/Playback stopped: the video could not be loaded/).waitFor();
  await page.unroute(playlist);
  await again.click();
  const replayed = await watchToTheEnd(page);
  assert.ok(replayed.ended, JSON.stringify(replayed));
  await context.close();
});

test('a video plays from its start while it is still encoding, and on to the end', { timeout: 300_000 }, async () => {
  // A server of its own with a deliberately slow encoder and short segments.
  const port = await freePort();
  const slow = `http://127.0.0.1:${port}`;
  start(BIN, ['--data-dir', path.join(work, 'slow-data'), '--bind', `127.0.0.1:${port}`,
    '--set', `auth.admin_token="${ADMIN_TOKEN}"`,
    '--set', 'transcode.x264_preset="veryslow"',
    '--set', 'transcode.segment_seconds=2',
    '--set', 'storage.min_free_disk_mb=1'], 'streamgate (slow encoder)');
  await until('the slow server to be ready', async () => (await fetch(`${slow}/ready`)).ok);
  const file = makeClip('growing.mp4', 'testsrc2=size=854x480:rate=30', 24);
  const form = new FormData();
  form.append('file', new Blob([readFileSync(file)]), 'growing.mp4');
  form.append('title', 'Still encoding');
  const uploaded = await fetch(`${slow}/api/v1/upload`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: form });
  assert.equal(uploaded.status, 201);
  const { media_id: id } = await uploaded.json();
  const record = async () => (await fetch(`${slow}/api/v1/media/${id}`)).json();
  const playable = await until('the media to play', async () => {
    const media = await record();
    return media.playable ? media : null;
  }, 180_000);
  assert.equal(playable.state, 'processing');

  const context = await walletContext(null);
  const page = await newPage(context);
  await page.goto(`${slow}/watch/${id}`);
  await page.locator('video').waitFor();
  await page.waitForFunction(() => document.querySelector('video')?.currentTime > 0.5, null, { timeout: 60_000 });
  const early = await page.evaluate(() => document.querySelector('video').currentTime);
  assert.ok(early < 10, `started from the start: ${early}`);
  assert.equal((await record()).state, 'processing', 'it played before its job finished');
  await page.waitForFunction(() => document.querySelector('video').ended, null, { timeout: 240_000 });
  const played = await page.evaluate(() => document.querySelector('video').currentTime);
  assert.ok(played > 23, `played to the end: ${played}`);
  assert.equal((await record()).state, 'ready');
  await context.close();
});

test('pause an upload, reload the page and finish it', { timeout: 240_000 }, async () => {
  const size = statSync(bigClip).size;
  assert.ok(size > 9 * 1024 * 1024, `the clip spans three chunks (${size} bytes)`);
  const context = await walletContext(ALICE);
  const page = await newPage(context);
  await page.goto(base);
  await signIn(page);
  // Hold the second chunk in flight, so the pause lands mid-upload.
  const secondChunk = await holdSecondChunk(page);
  await uploadThroughPage(page, bigClip, 'Paused and resumed', 'resume');
  const route = await secondChunk.route;
  await page.getByRole('button', { name: 'Pause' }).click();
  await page.getByText(/^Paused\./).waitFor();
  await route.abort().catch(() => {});
  await page.unroute('**/api/v1/uploads/*');

  await page.reload();
  await page.getByText(/Unfinished upload: big\.mp4/).waitFor();
  const offsets = [];
  page.on('request', (request) => {
    if (request.method() === 'PATCH') offsets.push(Number(request.headers()['upload-offset']));
  });
  await page.setInputFiles('#file', bigClip);
  await page.getByRole('button', { name: 'Upload' }).click();
  await page.locator('#watch-link').waitFor({ timeout: 180_000 });
  assert.equal(offsets[0], 4 * 1024 * 1024, 'the upload went on from the first chunk, not from 0');
  const mediaId = (await page.locator('#watch-link').getAttribute('href')).split('/').pop();
  const media = await api(`/api/v1/media/${mediaId}`);
  assert.equal(media.body.size, size);
  assert.equal(media.body.title, 'Paused and resumed');
  assert.equal(await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('tus::')).length), 0);
  await context.close();
});

/**
 * Holds a tus upload's lock on the server the way another connection still sending to it does
 * (a second tab, or another node): a PATCH at `offset` that trickles the file's own bytes, so
 * the server neither times it out nor lets a new request take it over as silent. A wrong-offset
 * probe shows the lock (423) but takes it for a moment itself, so a PATCH arriving then is
 * refused and waits for its body; an attempt no probe sees holding is dropped and made again.
 * Returns `release()`, which ends the PATCH (the server keeps the bytes that arrived).
 */
async function holdUploadLock(location, token, file, offset) {
  const url = new URL(location, base);
  const headers = { authorization: `Bearer ${token}`, 'tus-resumable': '1.0.0', 'content-type': 'application/offset+octet-stream' };
  const bytes = readFileSync(file).subarray(offset, offset + 1000);
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const socket = connect(Number(url.port), url.hostname);
    await once(socket, 'connect');
    socket.write([`PATCH ${url.pathname} HTTP/1.1`, `host: ${url.host}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
      `upload-offset: ${offset}`, `content-length: ${bytes.length}`, '', ''].join('\r\n'));
    let sent = 0;
    const trickle = setInterval(() => { if (sent < bytes.length) socket.write(bytes.subarray(sent, ++sent)); }, 200);
    const release = () => { clearInterval(trickle); socket.destroy(); };
    const held = await until('the PATCH to hold the lock', async () => {
      const probe = await fetch(url, { method: 'PATCH', headers: { ...headers, 'upload-offset': String(offset + 1) }, body: new Uint8Array(10) });
      return probe.status === 423;
    }, 2000 * 2 ** attempt).catch(() => false);
    if (held) return release;
    release();
  }
  throw new Error('no PATCH held the upload in five attempts');
}

test('an upload goes on by itself when the network comes back, and waits while another connection holds it', { timeout: 240_000 }, async () => {
  const context = await walletContext(ALICE);
  const page = await newPage(context);
  await page.goto(base);
  await signIn(page);
  let location;
  let locked = 0;
  let lockedFiveTimes;
  const fiveLocked = new Promise((resolve) => { lockedFiveTimes = resolve; });
  page.on('response', (response) => {
    const method = response.request().method();
    if (method === 'POST' && response.url().endsWith('/api/v1/uploads')) location = response.headers().location;
    if (method === 'PATCH' && response.status() === 423 && ++locked === 5) lockedFiveTimes();
  });
  // The second chunk fails as the network goes away.
  const secondChunk = await holdSecondChunk(page);
  await uploadThroughPage(page, bigClip, 'Through a tunnel', 'offline');
  const route = await secondChunk.route;
  await context.setOffline(true);
  await route.abort('internetdisconnected').catch(() => {});
  await page.unroute('**/api/v1/uploads/*');
  await page.getByText(/You are offline\. The upload goes on by itself/).waitFor();

  // Meanwhile another connection is still sending to the upload (the server answers 423).
  const token = await page.evaluate(() => JSON.parse(localStorage.getItem('streamgate.session')).token);
  const release = await holdUploadLock(location, token, bigClip, 4 * 1024 * 1024);
  await context.setOffline(false);
  // tus-js-client's default retries would have given up after five 423s.
  await fiveLocked;
  await page.getByText(/Another connection is still sending this upload; retrying/).waitFor();
  release();
  await page.locator('#watch-link').waitFor({ timeout: 180_000 });
  const mediaId = (await page.locator('#watch-link').getAttribute('href')).split('/').pop();
  const media = await api(`/api/v1/media/${mediaId}`);
  assert.equal(media.body.size, statSync(bigClip).size);
  assert.equal(media.body.title, 'Through a tunnel');
  // The library test after this one counts its cards.
  assert.equal((await api(`/api/v1/media/${mediaId}`, { method: 'DELETE', token })).status, 204);
  await context.close();
});

test('my videos: edit, gate with a validated form; a gated video refuses a non-holder and plays for a holder', { timeout: 180_000 }, async () => {
  assert.ok(state.mediaId, 'the upload test ran first');
  const alice = await walletContext(ALICE);
  let page = await newPage(alice);
  await page.goto(`${base}/mine`);
  await signIn(page);
  const item = page.locator('.mine-item', { hasText: 'Test pattern' });
  await item.locator('summary').click();
  await item.getByLabel('Description').fill('Colour bars and a tone.');
  await item.getByRole('button', { name: 'Save' }).click();
  await item.getByText('Saved.').waitFor();
  await item.getByLabel('Chain id').fill(String(CHAIN_ID));
  await item.getByLabel('Contract address').fill('0x1234');
  await item.getByRole('button', { name: 'Set gate' }).click();
  await item.getByText('must be 0x followed by 40 hexadecimal digits').waitFor();
  await item.getByLabel('Contract address').fill(contract);
  await item.getByRole('button', { name: 'Set gate' }).click();
  await item.getByText('Gate set.').waitFor();
  await accessible(page, 'mine');
  const gate = await api(`/api/v1/media/${state.mediaId}/gate`);
  assert.equal(gate.body.gate.contract.toLowerCase(), contract.toLowerCase());
  assert.equal((await api(`/api/v1/media/${state.mediaId}`)).body.description, 'Colour bars and a tone.');
  await alice.close();

  // Nobody signed in: the explanation and a way to sign in.
  const anonymous = await browser.newContext();
  page = await newPage(anonymous);
  await page.goto(`${base}/watch/${state.mediaId}`);
  await page.getByText(/only for holders of a token of the ERC721 contract/).waitFor();
  await page.getByRole('button', { name: 'Sign in to watch' }).waitFor();
  assert.equal(await page.locator('video').count(), 0);
  await accessible(page, 'watch-gated');
  await page.goto(base);
  await page.locator('.card', { hasText: 'Test pattern' }).locator('.badge.gated').waitFor();
  await page.waitForFunction(() => document.querySelectorAll('.card').length === 2
    && [...document.querySelectorAll('.card img')].every((img) => img.complete && img.naturalWidth > 0));
  await accessible(page, 'library');
  await anonymous.close();

  // BOB signs in from the gate's button and is refused with the reason.
  const bob = await walletContext(BOB);
  page = await newPage(bob);
  await page.goto(`${base}/watch/${state.mediaId}`);
  await page.getByRole('button', { name: 'Sign in to watch' }).click();
  await page.getByText(/does not hold a token of the ERC721 contract/).waitFor();
  assert.equal(await page.locator('video').count(), 0);
  await bob.close();

  // CAROL holds the pass: it plays, with the token kept out of sight.
  const carol = await walletContext(CAROL);
  page = await newPage(carol);
  await page.goto(`${base}/watch/${state.mediaId}`);
  await page.getByRole('button', { name: 'Sign in to watch' }).click();
  const played = await watchToTheEnd(page);
  assert.ok(played.ended, `the holder played it: ${JSON.stringify(played)}`);
  assert.equal(await page.locator('.notice').count(), 0);
  await carol.close();
});

test('my videos: delete asks for confirmation first', async () => {
  const context = await walletContext(ALICE);
  const page = await newPage(context);
  await page.goto(`${base}/mine`);
  await signIn(page);
  const item = page.locator('.mine-item', { hasText: 'Paused and resumed' });
  await item.locator('summary').click();
  await item.getByRole('button', { name: 'Delete…' }).click();
  await item.getByRole('button', { name: 'Cancel' }).click();
  await item.getByRole('button', { name: 'Delete…' }).click();
  const id = (await item.locator('h2 a').getAttribute('href')).split('/').pop();
  assert.equal((await api(`/api/v1/media/${id}`)).status, 200, 'cancel deleted nothing');
  await item.getByRole('button', { name: 'Delete permanently' }).click();
  await item.waitFor({ state: 'detached' });
  assert.equal((await api(`/api/v1/media/${id}`)).status, 404);
  await context.close();
});

test('operator page: admin token once per tab, health, alerts, audit, cancel and retry a job', { timeout: 120_000 }, async () => {
  assert.ok(state.mediaId, 'the upload test ran first');
  const future = new Date(Date.now() + 3_600_000).toISOString();
  const queued = await api('/api/v1/jobs', { method: 'POST', token: ADMIN_TOKEN, body: { kind: 'thumbnail', media_id: state.mediaId, run_at: future } });
  assert.equal(queued.status, 202);
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(`${base}/operator`);
  await accessible(page, 'operator-token');
  await page.getByLabel('Admin token').fill(ADMIN_TOKEN);
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.getByText(/^Overall: /).waitFor();
  await page.locator('caption', { hasText: 'Firing alerts' }).waitFor();
  await page.locator('caption', { hasText: 'Audit entries' }).waitFor();
  const row = page.locator('tr', { hasText: 'thumbnail' }).filter({ hasText: 'queued' });
  await row.getByRole('button', { name: 'Cancel' }).click();
  await page.locator('tr', { hasText: 'thumbnail' }).filter({ hasText: 'cancelled' }).getByRole('button', { name: 'Retry' }).click();
  await until('the retried job', async () => {
    const jobs = await api(`/api/v1/jobs?media_id=${state.mediaId}&limit=20`, { token: ADMIN_TOKEN });
    return jobs.body.items.filter((job) => job.kind === 'thumbnail').length === 2;
  });
  await accessible(page, 'operator');
  await page.reload();
  await page.getByText(/^Overall: /).waitFor();
  await context.close();
});
