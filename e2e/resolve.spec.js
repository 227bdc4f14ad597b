// End-to-end test of `fedsync ui` in a real browser: Debian's chromium driven by
// playwright-core (no browser download). Two replica folders get a real conflict through the
// built binary; the test resolves it by clicking "keep b" on the conflicts page, checks both
// replicas on disk, rolls the resolution back from the history page (confirmation dialog),
// and saves a screenshot of every page under target/ui-screenshots/.
//
// Run with `bash e2e/run.sh` (installs playwright-core, skips loudly without node/chromium).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { chromium } = require('playwright-core');

const ROOT = path.resolve(__dirname, '..');
const BIN = process.env.FEDSYNC_BIN || path.join(ROOT, 'target', 'debug', 'fedsync');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.join(ROOT, 'target', 'ui-screenshots');

const A_TEXT = 'Shopping list\n- milk\n- bread (from the laptop)\n- eggs\n';
const B_TEXT = 'Shopping list\n- milk\n- bread\n- eggs\n- coffee (from the phone)\n';

function fedsync(env, args, okCodes = [0]) {
  const r = spawnSync(BIN, args, { env, encoding: 'utf8' });
  if (r.error) throw r.error;
  if (!okCodes.includes(r.status)) {
    throw new Error(`fedsync ${args.join(' ')} exited ${r.status}\n${r.stdout}\n${r.stderr}`);
  }
  return r;
}

/** Write a file with an explicit mtime (seconds), so "which side is newer" is certain. */
function writeAt(file, text, secs) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
  fs.utimesSync(file, secs, secs);
}

/** Start `fedsync ui p --listen 127.0.0.1:0`; resolve with the printed URL. */
function startUi(env) {
  const child = spawn(BIN, ['ui', 'p', '--listen', '127.0.0.1:0'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error('fedsync ui printed no URL in 20 s')), 20000);
    rl.once('line', (line) => {
      clearTimeout(timer);
      const m = line.match(/http:\/\/127\.0\.0\.1:(\d+)\/\?token=([0-9a-f]{32})/);
      if (!m) reject(new Error(`unexpected first line: ${line}`));
      else resolve({ child, url: m[0], origin: `http://127.0.0.1:${m[1]}` });
    });
    child.once('exit', (code) => reject(new Error(`fedsync ui exited ${code}`)));
  });
}

async function shot(page, name) {
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot saved: ${path.relative(ROOT, file)}`);
}

async function waitLoaded(page, view) {
  await page.waitForFunction((v) => document.body.dataset.loaded === v, view, { timeout: 20000 });
}

test('resolve a real conflict by clicking, then roll it back', { timeout: 180000 }, async () => {
  assert.ok(fs.existsSync(BIN), `no fedsync binary at ${BIN} (cargo build -p fedsync)`);
  fs.mkdirSync(SHOTS, { recursive: true });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedsync-e2e-'));
  const a = path.join(dir, 'laptop');
  const b = path.join(dir, 'phone');
  const home = path.join(dir, 'home');
  for (const d of [a, b, home]) fs.mkdirSync(d, { recursive: true });
  const env = { ...process.env, FEDSYNC_HOME: home, NO_COLOR: '1' };
  let ui = null;
  let browser = null;
  try {
    // A profile with conflict = "ask": conflicts wait for a person.
    fedsync(env, ['init', 'p', a, b]);
    const prof = path.join(home, 'profiles', 'p.toml');
    fs.writeFileSync(prof, 'conflict = "ask"\n' + fs.readFileSync(prof, 'utf8'));
    const t0 = 1700000000;
    writeAt(path.join(a, 'list.txt'), 'Shopping list\n- milk\n- bread\n- eggs\n', t0);
    writeAt(path.join(a, 'photos', 'cat.jpg'), Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 1, 2, 3]), t0);
    fedsync(env, ['sync', 'p']);
    // Both sides edit the same file; the phone's edit is the newer one.
    writeAt(path.join(a, 'list.txt'), A_TEXT, t0 + 100);
    writeAt(path.join(b, 'list.txt'), B_TEXT, t0 + 200);
    writeAt(path.join(b, 'todo.txt'), 'call the plumber\n', t0 + 300);
    const r = fedsync(env, ['sync', 'p'], [1]);
    assert.match(r.stdout, /conflict/);
    writeAt(path.join(a, 'new-on-laptop.txt'), 'pending\n', t0 + 400);

    ui = await startUi(env);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // No traffic but to this server: the machine's network is closed anyway.
      args: ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-domain-reliability'],
    });
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
    page.on('request', (req) => {
      if (!req.url().startsWith(ui.origin) && !req.url().startsWith('data:')) problems.push(`external request: ${req.url()}`);
    });

    // The printed address sets the cookie and lands on the overview.
    await page.goto(ui.url);
    assert.equal(new URL(page.url()).search, '', 'the token leaves the address bar');
    await waitLoaded(page, 'overview');
    await page.waitForSelector('#live.on', { timeout: 10000 });
    assert.equal(await page.textContent('#health'), 'conflicts');
    assert.match(await page.textContent('#replicas'), /laptop[\s\S]*yes[\s\S]*phone[\s\S]*yes/);
    assert.match(await page.textContent('#pending'), /laptop → phone\s*1 file/);
    assert.match(await page.textContent('#overview-conflicts'), /list\.txt/);
    await shot(page, '1-overview');

    // The conflict, side by side with the line diff.
    await page.click('#nav-conflicts');
    await waitLoaded(page, 'conflicts');
    await page.waitForSelector('.card.conflict table.diff');
    const diff = await page.textContent('table.diff');
    assert.match(diff, /bread \(from the laptop\)/);
    assert.match(diff, /coffee \(from the phone\)/);
    assert.equal(await page.locator('.side[data-replica="phone"] .pill.info').textContent(), 'newer');
    await shot(page, '2-conflicts');

    // Keep the phone's copy: a run; the result is shown.
    await page.click('button[data-keep="phone"]');
    await page.waitForSelector('#result:not([hidden])', { timeout: 30000 });
    const result = await page.textContent('#result');
    assert.match(result, /keep phone — done/);
    assert.match(result, /resolved in run (\S+);/);
    const run = result.match(/resolved in run (\S+);/)[1];
    await page.waitForSelector('#conflict-detail .empty', { timeout: 20000 });
    await shot(page, '3-conflict-resolved');

    // Both replicas on disk hold the phone's copy; the laptop's is kept as a version.
    assert.equal(fs.readFileSync(path.join(a, 'list.txt'), 'utf8'), B_TEXT);
    assert.equal(fs.readFileSync(path.join(b, 'list.txt'), 'utf8'), B_TEXT);
    assert.equal(fs.readFileSync(path.join(a, '.fedsync', 'versions', run, 'list.txt'), 'utf8'), A_TEXT);
    const trail = fs.readFileSync(path.join(home, 'state', 'p.audit.jsonl'), 'utf8')
      .trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(trail.some((r) => r.run === run && r.action === 'run-start' && r.detail.startsWith('resolve')),
      'the resolution is a run in the audit trail');

    // History: the resolve run, rolled back after a confirmation.
    await page.click('#nav-history');
    await waitLoaded(page, 'history');
    const card = page.locator(`.card.run[data-run="${run}"]`);
    await card.waitFor();
    assert.match(await card.textContent(), /resolve/);
    await shot(page, '4-history');
    await card.locator('button[data-action="rollback"]').click();
    await page.waitForSelector('dialog#confirm[open]');
    assert.match(await page.textContent('#confirm-title'), new RegExp(`Roll back run ${run}`));
    await shot(page, '5-rollback-confirm');
    await page.click('#confirm-ok');
    await page.waitForSelector('#result:not([hidden])', { timeout: 30000 });
    await page.waitForFunction(() => /rolled back run/.test(document.getElementById('result').textContent));
    assert.equal(fs.readFileSync(path.join(a, 'list.txt'), 'utf8'), A_TEXT, 'the laptop has its copy back');
    assert.equal(fs.readFileSync(path.join(b, 'list.txt'), 'utf8'), B_TEXT);
    await page.waitForFunction(() => [...document.querySelectorAll('.card.run .pill.neutral')]
      .some((p) => p.textContent === 'rollback'), null, { timeout: 20000 });
    await shot(page, '6-history-after-rollback');

    // Versions of the file, with restore buttons.
    await page.goto(`${ui.origin}/#versions?path=list.txt`);
    await waitLoaded(page, 'versions');
    await page.waitForSelector('table.versions button[data-version]');
    await shot(page, '7-versions');

    assert.deepEqual(problems, [], 'no page errors and no request leaves this server');
  } finally {
    if (browser) await browser.close();
    if (ui) {
      ui.child.kill('SIGTERM');
      await new Promise((r) => (ui.child.exitCode !== null ? r() : ui.child.once('exit', r)));
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
