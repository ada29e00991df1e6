// First frame on the watch page, for the load bench: headless Chromium opens /watch/{id} in a
// fresh context (cold cache) and reports the time from navigation start to the video's
// `playing` event. Prints one JSON line: {"runs_ms": [...], "median_ms": n}.
//
// node tests/browser/first-frame.mjs <base URL> <media id> [runs = 5]

import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const NODE_DIR = process.env.STREAMGATE_CI_NODE || path.join(ROOT, 'target/ci-node');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const [base, mediaId, runsText = '5'] = process.argv.slice(2);
if (!base || !mediaId) throw new Error('usage: first-frame.mjs <base URL> <media id> [runs]');
if (!existsSync(CHROMIUM)) throw new Error(`chromium is missing at ${CHROMIUM}: apt-get install chromium`);
const { chromium } = createRequire(path.join(NODE_DIR, '/'))('playwright-core');

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--autoplay-policy=no-user-gesture-required'] });
const runs = [];
try {
  for (let run = 0; run < Number(runsText); run += 1) {
    const context = await browser.newContext();
    await context.addInitScript(() => {
      // Media events do not bubble; a capturing listener on the document still sees them.
      document.addEventListener('playing', () => { window.firstFrameMs ??= performance.now(); }, true);
    });
    const page = await context.newPage();
    const logs = [];
    page.on('console', (message) => logs.push(message.text()));
    page.on('pageerror', (error) => logs.push(error.message));
    await page.goto(`${base}/watch/${mediaId}`);
    const played = await page.waitForFunction(() => window.firstFrameMs, null, { timeout: 30_000 }).catch(async () => {
      const main = await page.locator('main').innerText();
      throw new Error(`no playing event on /watch/${mediaId}: page says ${JSON.stringify(main)}; console: ${logs.join(' | ')}`);
    });
    runs.push(await played.jsonValue());
    await context.close();
  }
} finally {
  await browser.close();
}
const sorted = [...runs].sort((a, b) => a - b);
console.log(JSON.stringify({ runs_ms: runs, median_ms: sorted[Math.floor(sorted.length / 2)] }));
