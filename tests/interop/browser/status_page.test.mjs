// The status page (/status, and / for a browser) in headless Chromium: a fleet of three
// `partgate sim-part` processes behind `partgate run`, the page opened on the operations port
// (and on the main port), screenshots on a desktop and a phone viewport, then one part process
// killed: the open page must show it down with its last error, without being reloaded.
//
// Run (as root, with Debian's chromium and iproute2): cd tests/interop/browser && npm ci && node --test
//
// Everything runs in a fresh loopback-only network namespace (netns.mjs). Screenshots go to
// target/test-artifacts/status-page/ (PARTGATE_ARTIFACTS overrides the directory). Without root,
// `ip` or chromium the test is skipped, unless CI or PARTGATE_REQUIRE_NETNS=1 is set.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  DEBUG,
  createNetns,
  fetchInNs,
  launchChromium,
  missing,
  removeNetns,
  startInNs,
  stopAll,
} from './netns.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../../..');
const PARTGATE_BIN = process.env.PARTGATE_BIN || path.join(ROOT, 'target/debug/partgate');
const ARTIFACTS = process.env.PARTGATE_ARTIFACTS || path.join(ROOT, 'target/test-artifacts/status-page');
const PARTS = ['main', 'sub1', 'sub2'];
const KILLED = 'sub2';
const ADDR = /listening on (127\.0\.0\.1:\d+)/;
const ADMIN_ADDR = /operations endpoints on (127\.0\.0\.1:\d+)/;

const why = missing(PARTGATE_BIN);
if (why && (process.env.CI || process.env.PARTGATE_REQUIRE_NETNS === '1')) {
  test('status page preconditions', () => assert.fail(`${why} (required because CI or PARTGATE_REQUIRE_NETNS=1 is set)`));
}

/** What the page shows, read from the DOM (only what a person sees, plus the cards' states). */
function readPage(page) {
  return page.evaluate(() => {
    const text = (sel, root = document) => root.querySelector(sel)?.textContent ?? null;
    const parts = {};
    for (const card of document.querySelectorAll('.part')) {
      const error = card.querySelector('.error');
      parts[card.dataset.part] = {
        state: card.dataset.state,
        health: card.dataset.health,
        label: text('.state', card),
        where: text('.where', card),
        error: error && !error.hidden ? error.textContent : null,
        latency: text('dd.latency', card),
        connections: text('dd.connections', card),
        session: text('dd.session', card),
      };
    }
    return {
      phase: text('#phase'),
      connected: text('#s-connected'),
      down: text('#s-down'),
      downList: document.querySelector('#down-list').hidden ? null : text('#down-list'),
      banner: document.querySelector('#banner').hidden ? null : text('#banner'),
      title: document.title,
      parts,
      overflow: document.documentElement.scrollWidth - window.innerWidth,
      marker: window.__statusTestMarker ?? null,
    };
  });
}

async function waitForPage(page, predicate, what, within = 15_000) {
  const deadline = Date.now() + within;
  let seen;
  for (;;) {
    seen = await readPage(page);
    if (predicate(seen)) return seen;
    if (Date.now() > deadline) assert.fail(`${what} not shown within ${within} ms; the page shows ${JSON.stringify(seen, null, 1)}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

describe('status page in headless Chromium', { skip: why || false }, () => {
  const env = { ns: null, tmp: null, browser: null, parts: {}, violations: [], console: [] };
  const log = () =>
    `\n--- gateway log (tail) ---\n${(env.gateway?.log ?? '').slice(-4000)}\n--- page console ---\n${env.console.slice(-30).join('\n')}`;

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    env.ns = await createNetns('partgate-status');
    env.tmp = mkdtempSync(path.join(tmpdir(), 'partgate-status-'));
    const remotes = [];
    for (const name of PARTS) {
      const child = startInNs(env.ns, `part ${name}`, PARTGATE_BIN, ['sim-part', '--name', name, '--bind', '127.0.0.1:0'], ADDR);
      env.parts[name] = child;
      const [, address] = await child.ready;
      remotes.push({ name, address, insecure: true, connection_check_interval: '1s', reconnect_interval: '200ms' });
    }
    const config = {
      network: { bind_address: '127.0.0.1:0' },
      remotes,
      gateway: { main_part: 'main', admin_address: '127.0.0.1:0' },
    };
    const file = path.join(env.tmp, 'gateway.json');
    writeFileSync(file, JSON.stringify(config, null, 2));
    env.gateway = startInNs(env.ns, 'gateway', PARTGATE_BIN, ['run', '--config', file], /\blistening on 127/);
    await env.gateway.ready;
    env.admin = ADMIN_ADDR.exec(env.gateway.log)?.[1];
    env.main = /INFO[^\n]*\blistening on (127\.0\.0\.1:\d+)/.exec(env.gateway.log)?.[1];
    assert.ok(env.admin && env.main, `addresses not in the gateway log:${log()}`);
    const deadline = Date.now() + 20_000;
    for (;;) {
      const r = await fetchInNs(env.ns, `http://${env.admin}/readyz?all_parts=1`);
      if (r.status === 200) break;
      if (Date.now() > deadline) throw new Error(`gateway not ready with all parts: ${r.status} ${r.body}${log()}`);
      await new Promise((res) => setTimeout(res, 200));
    }
    env.browser = await launchChromium(env.ns, env.tmp);
  });

  after(async () => {
    try {
      if (env.browser) await env.browser.close().catch(() => {});
    } finally {
      await stopAll();
      if (env.ns) await removeNetns(env.ns);
      if (env.tmp) rmSync(env.tmp, { recursive: true, force: true });
    }
  });

  /** A page in its own context; CSP violations and errors are collected for the asserts. */
  async function open(url, contextOptions) {
    const context = await env.browser.newContext(contextOptions);
    const page = await context.newPage();
    page.on('console', (m) => {
      env.console.push(`[${m.type()}] ${m.text()}`);
      if (DEBUG) process.stderr.write(`[page ${m.type()}] ${m.text()}\n`);
    });
    page.on('pageerror', (e) => env.console.push(`[pageerror] ${e.message}`));
    await page.exposeFunction('__reportViolation', (v) => env.violations.push(v));
    await page.addInitScript(() =>
      document.addEventListener('securitypolicyviolation', (e) => window.__reportViolation(`${e.violatedDirective} ${e.blockedURI}`)),
    );
    const resp = await page.goto(url);
    return { context, page, resp };
  }

  // Connected, checked (a latency) and with the gateway's own session (sim parts support them).
  const allConnected = (s) =>
    s.connected === '3 / 3' &&
    s.down === '0' &&
    PARTS.every((n) => s.parts[n]?.health === 'ok' && s.parts[n]?.latency?.endsWith(' ms') && s.parts[n]?.session === 'held');

  test('lists the fleet, then shows a killed part down with its error without a reload', { timeout: 90_000 }, async () => {
    // Desktop, on the operations port.
    const desk = await open(`http://${env.admin}/status`, { viewport: { width: 1280, height: 860 } });
    assert.equal(desk.resp.status(), 200);
    const headers = desk.resp.headers();
    assert.match(headers['content-type'], /^text\/html/);
    assert.match(headers['content-security-policy'], /default-src 'none'/);
    assert.equal(headers['cache-control'], 'no-store');
    const shown = await waitForPage(desk.page, allConnected, 'three connected parts');
    assert.equal(shown.phase, 'serving');
    assert.equal(shown.downList, null);
    assert.equal(shown.banner, null);
    for (const name of PARTS) {
      assert.equal(shown.parts[name].label, 'connected');
      assert.equal(shown.parts[name].error, null);
      assert.match(shown.parts[name].where, /^127\.0\.0\.1:\d+ · http2 \(plaintext\)/);
      assert.ok(Number(shown.parts[name].connections) >= 1, JSON.stringify(shown.parts[name]));
    }
    assert.match(shown.parts.main.where, /main part$/);
    assert.match(shown.parts.sub1.where, /names “sub1:…”$/);
    await desk.page.screenshot({ path: path.join(ARTIFACTS, 'desktop.png'), fullPage: true });

    // A phone: the same page fits the width (no sideways scrolling).
    const phone = await open(`http://${env.admin}/status`, {
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    });
    const onPhone = await waitForPage(phone.page, allConnected, 'three connected parts on a phone');
    assert.ok(onPhone.overflow <= 0, `the page is ${onPhone.overflow}px wider than a phone screen`);
    await phone.page.screenshot({ path: path.join(ARTIFACTS, 'phone.png'), fullPage: true });

    // The main port serves the page to a browser at `/` (no client auth configured).
    const root = await open(`http://${env.main}/`, { viewport: { width: 800, height: 600 } });
    assert.match(root.resp.headers()['content-type'], /^text\/html/);
    await waitForPage(root.page, allConnected, 'three connected parts on the main port');
    await root.context.close();

    // Kill one part's process; the open pages must notice on their own.
    await desk.page.evaluate(() => {
      window.__statusTestMarker = 'same document';
    });
    const killed = env.parts[KILLED];
    const exited = new Promise((resolve) => killed.once('exit', resolve));
    killed.kill('SIGKILL');
    await exited;
    const t0 = Date.now();
    const down = await waitForPage(
      desk.page,
      (s) => s.parts[KILLED]?.state === 'disconnected' && !!s.parts[KILLED]?.error && s.down === '1',
      `${KILLED} down with an error`,
    );
    if (DEBUG) console.error(`the page showed ${KILLED} down ${Date.now() - t0} ms after the kill`);
    assert.equal(down.marker, 'same document', 'the page was reloaded');
    assert.equal(down.connected, '2 / 3');
    assert.equal(down.parts[KILLED].health, 'down');
    assert.equal(down.parts[KILLED].latency, '–');
    assert.equal(down.parts[KILLED].session, 'none');
    assert.match(down.parts[KILLED].error, /^Last error: \S/);
    assert.match(down.downList, new RegExp(`: ${KILLED}$`));
    assert.match(down.title, /1 down/);
    for (const name of PARTS.filter((n) => n !== KILLED)) assert.equal(down.parts[name].health, 'ok');
    await desk.page.screenshot({ path: path.join(ARTIFACTS, 'desktop-part-down.png'), fullPage: true });
    await waitForPage(phone.page, (s) => s.parts[KILLED]?.health === 'down', `${KILLED} down on a phone`);
    await phone.page.screenshot({ path: path.join(ARTIFACTS, 'phone-part-down.png'), fullPage: true });

    assert.deepEqual(env.violations, [], `Content-Security-Policy violations${log()}`);
    const errors = env.console.filter((l) => l.startsWith('[error]') || l.startsWith('[pageerror]'));
    assert.deepEqual(errors, [], `errors on the page${log()}`);
    await desk.context.close();
    await phone.context.close();
  });
});
