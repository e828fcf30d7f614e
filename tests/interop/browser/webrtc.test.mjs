// Interop test: the official Viam TypeScript SDK (@viamrobotics/sdk 0.61.1), bundled for the
// browser, runs in headless Chromium and reaches a partgate fleet over WebRTC.
//
// Run (as root, with Debian's chromium and iproute2): cd tests/interop/browser && npm ci && node --test
//
// Everything that opens a socket (three `partgate sim-part`s, the gateway, Chromium, the metrics
// probes) runs inside a fresh network namespace with only loopback up, created and removed here,
// because Chromium's WebRTC stack sends mDNS and may send STUN: nothing can leave the machine.
// The namespace has its own /etc/hosts mapping `gateway.partgate.test` to 127.0.0.1 and Chromium
// also gets a host-resolver rule for it. The name contains no "local", so the SDK cannot fall
// back to a direct gRPC-Web connection when WebRTC fails ("cannot dial ... directly"); the
// gateway's own counters (`partgate_webrtc_*` on /metrics) and the SDK's RTCPeerConnection stats
// prove the calls went over the data channel anyway.
//
// Two ways the page gets there: a real document of the gateway's own origin (its /healthz answer)
// with the bundle injected (same-origin signaling), and a page from a tiny static HTTP server on
// another port (cross-origin signaling: the gateway's CORS answers are exercised too).
//
// Without root, `ip` or chromium the test is skipped, unless CI or PARTGATE_REQUIRE_NETNS=1 is
// set, when it fails. Every process it starts is stopped by PID, and the namespace removed, even
// on failure.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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
const PARTGATE_BIN = process.env.PARTGATE_BIN || path.resolve(HERE, '../../../target/debug/partgate');
const HOST = 'gateway.partgate.test';
// Fixed ports are safe: the namespace is new and nothing else listens in it.
const PART_PORTS = { main: 18081, sub1: 18082, sub2: 18083 };
const API_KEY_ID = '0b7e4a52-6a55-4c8e-9d0f-2f4d2a7c1e01';
const API_KEY = 'browser-test-api-key-5d3b9e';
const METRIC_RE = /^(partgate_webrtc_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$/;

// ---------------------------------------------------------------------------
// Preconditions
// ---------------------------------------------------------------------------

const why = missing(PARTGATE_BIN);
const required = !!process.env.CI || process.env.PARTGATE_REQUIRE_NETNS === '1';
if (why && required) {
  test('browser WebRTC interop preconditions', () => assert.fail(`${why} (required because CI or PARTGATE_REQUIRE_NETNS=1 is set)`));
}

// ---------------------------------------------------------------------------
// Processes and the namespace: netns.mjs
// ---------------------------------------------------------------------------

function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    const m = METRIC_RE.exec(line);
    if (m) out[m[1]] = (out[m[1]] ?? 0) + Number(m[3]);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Bundle
// ---------------------------------------------------------------------------

async function buildBundle() {
  const esbuild = await import('esbuild');
  const res = await esbuild.build({
    entryPoints: [path.join(HERE, 'page.mjs')],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'chrome120',
    write: false,
    logLevel: 'silent',
  });
  return res.outputFiles[0].text;
}

const PAGE_HTML = `<!doctype html><html><head><meta charset="utf-8"><title>partgate browser interop</title></head>
<body><script src="bundle.js"></script></body></html>`;

// ---------------------------------------------------------------------------
// One fleet + gateway + browser per describe block
// ---------------------------------------------------------------------------

function gatewayConfig(port, auth) {
  const config = {
    network: { bind_address: `127.0.0.1:${port}` },
    remotes: Object.entries(PART_PORTS).map(([name, p]) => ({ name, address: `127.0.0.1:${p}`, insecure: true })),
    gateway: {
      main_part: 'main',
      webrtc: { enabled: true, udp_bind_ip: '127.0.0.1', hosts: [HOST] },
    },
  };
  if (auth) config.auth = { handlers: [{ type: 'api-key', config: { [API_KEY_ID]: API_KEY } }] };
  return config;
}

function setup({ auth, port, pagePort }) {
  const env = { ns: null, tmp: null, gateway: null, browser: null, page: null, consoleLog: [] };
  const origin = `http://${HOST}:${port}`;
  env.origin = origin;

  env.metrics = async () => {
    const r = await fetchInNs(env.ns, `http://127.0.0.1:${port}/metrics`);
    assert.equal(r.status, 200, `/metrics: ${r.status} ${r.body.slice(0, 300)}`);
    return parseMetrics(r.body);
  };
  env.log = () =>
    `\n--- gateway log (tail) ---\n${(env.gateway?.log ?? '').slice(-5000)}\n--- browser console (tail) ---\n${env.consoleLog.slice(-40).join('\n')}`;

  before(async () => {
    const bundle = await buildBundle();
    env.ns = await createNetns('partgate-br', [HOST]);
    env.tmp = mkdtempSync(path.join(tmpdir(), 'partgate-browser-'));

    const parts = Object.entries(PART_PORTS).map(([name, p]) =>
      startInNs(env.ns, `part ${name}`, PARTGATE_BIN, ['sim-part', '--name', name, '--bind', `127.0.0.1:${p}`], /listening on/),
    );
    await Promise.all(parts.map((c) => c.ready));
    const cfg = path.join(env.tmp, 'gateway.json');
    writeFileSync(cfg, JSON.stringify(gatewayConfig(port, auth), null, 2));
    env.gateway = startInNs(env.ns, 'gateway', PARTGATE_BIN, ['run', '--config', cfg], /listening on/);
    await env.gateway.ready;
    const deadline = Date.now() + 20_000;
    for (;;) {
      const r = await fetchInNs(env.ns, `http://127.0.0.1:${port}/readyz?all_parts=1`);
      if (r.status === 200) break;
      if (Date.now() > deadline) throw new Error(`gateway not ready with all parts: ${r.status} ${r.body}${env.log()}`);
      await new Promise((res) => setTimeout(res, 200));
    }

    env.browser = await launchChromium(env.ns, env.tmp, [
      `--host-resolver-rules=MAP ${HOST} 127.0.0.1`,
      // Real host candidates instead of mDNS `.local` names (the gateway ignores mDNS candidates).
      '--disable-features=WebRtcHideLocalIpsWithMdns',
      // Chromium leaves loopback interfaces out of ICE gathering; the namespace has nothing else.
      '--allow-loopback-in-peer-connection',
    ]);
    const context = await env.browser.newContext();
    env.page = await context.newPage();
    env.page.on('console', (m) => {
      env.consoleLog.push(`[${m.type()}] ${m.text()}`);
      if (DEBUG) process.stderr.write(`[page ${m.type()}] ${m.text()}\n`);
    });
    env.page.on('pageerror', (e) => env.consoleLog.push(`[pageerror] ${e.message}`));
    if (pagePort) {
      // Cross-origin: a page of its own origin, from a tiny HTTP server in the namespace.
      writeFileSync(path.join(env.tmp, 'index.html'), PAGE_HTML);
      writeFileSync(path.join(env.tmp, 'bundle.js'), bundle);
      const server = startInNs(env.ns, 'page server', process.execPath, [path.join(HERE, 'serve.mjs'), env.tmp, String(pagePort)], /listening on/);
      await server.ready;
      const resp = await env.page.goto(`http://127.0.0.1:${pagePort}/index.html`);
      assert.equal(resp.status(), 200);
    } else {
      // The page is a real document of the gateway's own origin (its /healthz answer, from a
      // loopback address) with the bundle injected: signaling is then same-origin, and
      // Chromium's private/local network access rules see a loopback page calling loopback.
      const resp = await env.page.goto(`${origin}/healthz`);
      assert.equal(resp.status(), 200);
      await env.page.addScriptTag({ content: bundle });
    }
    await env.page.waitForFunction(() => !!window.partgate, null, { timeout: 10_000 });
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

  return env;
}

async function waitForPeers(env, want, within = 15_000) {
  const deadline = Date.now() + within;
  for (;;) {
    const m = await env.metrics();
    if ((m.partgate_webrtc_peers ?? 0) === want || Date.now() > deadline) return m;
    await new Promise((res) => setTimeout(res, 200));
  }
}

/** Connect, prove WebRTC, drive the fleet, prove the calls were streams on the data channel. */
async function connectAndDrive(env, credentials) {
  const opened = (m) => m.partgate_webrtc_streams_opened_total ?? 0;
  const before = await env.metrics();
  const conf = { host: HOST, signalingAddress: env.origin, dialTimeout: 15_000, disableSessions: false };
  if (credentials) conf.credentials = credentials;
  const conn = await env.page.evaluate((c) => window.partgate.connect(c), conf);
  assert.ok(conn.ok, `SDK connect failed: ${conn.error}${env.log()}`);
  const peer = conn.value.peer;
  assert.equal(peer.isConnected, true, `SDK peer not connected: ${JSON.stringify(peer)}`);
  assert.equal(peer.dataChannelLabel, 'data');
  assert.equal(peer.dataChannelState, 'open');
  assert.ok(peer.remoteCandidate, `no selected candidate pair: ${JSON.stringify(peer)}`);
  assert.equal(peer.remoteCandidate.address, '127.0.0.1', JSON.stringify(peer));
  assert.equal(peer.remoteCandidate.protocol, 'udp', JSON.stringify(peer));

  const during = await env.metrics();
  assert.ok((during.partgate_webrtc_peers ?? 0) >= 1, `no WebRTC peer at the gateway after the SDK connected: ${JSON.stringify(during)}${env.log()}`);

  const drove = await env.page.evaluate(() => window.partgate.drive());
  assert.ok(drove.ok, `driving the fleet failed: ${drove.error}${env.log()}`);
  const d = drove.value;
  for (const name of ['rdk:component:motor/motor1', 'rdk:component:motor/sub1:motor1', 'rdk:component:sensor/sub2:imu', 'rdk:component:sensor/temp']) {
    assert.ok(d.names.includes(name), `${name} not in ResourceNames: ${d.names.join(', ')}`);
  }
  assert.equal(d.powered, true);
  assert.ok(Math.abs(d.power - 0.4) < 1e-9, `power ${d.power}`);
  assert.equal(d.poweredAfterStop, false);
  assert.deepEqual([d.imu.part, d.imu.name], ['sub2', 'imu'], JSON.stringify(d.imu));
  assert.deepEqual([d.temp.part, d.temp.name], ['main', 'temp'], JSON.stringify(d.temp));

  const afterDrive = await env.metrics();
  assert.ok(
    opened(afterDrive) - opened(before) >= d.calls,
    `the SDK's ${d.calls} calls were not all streams on the data channel: before ${JSON.stringify(before)}, after ${JSON.stringify(afterDrive)}`,
  );
  const peerAfter = await env.page.evaluate(() => window.partgate.peer());
  assert.ok(peerAfter.ok, peerAfter.error);
  assert.ok(peerAfter.value.messagesSent >= d.calls * 2, `data channel messages sent: ${JSON.stringify(peerAfter.value)}`);
  assert.ok(peerAfter.value.bytesReceived > peer.bytesReceived, JSON.stringify(peerAfter.value));
  return { conn, drove, before, during, afterDrive, peer: peerAfter.value };
}

async function closeAndCheck(env) {
  const closed = await env.page.evaluate(() => window.partgate.close());
  assert.ok(closed.ok, closed.error);
  const gone = await waitForPeers(env, 0);
  assert.equal(gone.partgate_webrtc_peers ?? 0, 0, `peer not cleaned up after the SDK disconnected: ${JSON.stringify(gone)}${env.log()}`);
  assert.equal(gone.partgate_webrtc_streams ?? 0, 0, `streams left open: ${JSON.stringify(gone)}`);
}

describe('TypeScript SDK in headless Chromium over WebRTC', { skip: why || false }, () => {
  const env = setup({ auth: false, port: 18080 });

  test('connects over WebRTC, drives sub1:motor1 and reads sensors; the calls are data-channel streams', { timeout: 60_000 }, async () => {
    if (DEBUG) console.error('candidates Chromium surfaces to JS on its own (none on lo; it is seen as prflx):', JSON.stringify(await env.page.evaluate(() => window.partgate.gather())));
    const r = await connectAndDrive(env);
    if (DEBUG) console.error(JSON.stringify({ peer: r.peer, before: r.before, after: r.afterDrive }, null, 1));
    const unknown = await env.page.evaluate(() => window.partgate.unknown());
    assert.equal(unknown.ok, false, 'a call to an unknown part must fail');
    await closeAndCheck(env);
  });

  test('connects again after a disconnect (a second peer on the same page)', { timeout: 60_000 }, async () => {
    await connectAndDrive(env);
    await closeAndCheck(env);
  });
});

describe('TypeScript SDK in headless Chromium over WebRTC, gateway auth on (API key)', { skip: why || false }, () => {
  const env = setup({ auth: true, port: 18090 });

  test('an API key authenticates signaling and the data-channel calls', { timeout: 60_000 }, async () => {
    await connectAndDrive(env, { type: 'api-key', authEntity: API_KEY_ID, payload: API_KEY });
    await closeAndCheck(env);
  });

  test('a wrong API key is refused and no peer is created', { timeout: 60_000 }, async () => {
    const before = await env.metrics();
    const conf = { host: HOST, signalingAddress: env.origin, dialTimeout: 10_000, credentials: { type: 'api-key', authEntity: API_KEY_ID, payload: 'wrong' } };
    const conn = await env.page.evaluate((c) => window.partgate.connect(c), conf);
    assert.equal(conn.ok, false, `connect with a wrong key must fail: ${JSON.stringify(conn)}`);
    const afterFail = await env.metrics();
    assert.equal(afterFail.partgate_webrtc_peers ?? 0, 0);
    assert.equal(afterFail.partgate_webrtc_streams_opened_total ?? 0, before.partgate_webrtc_streams_opened_total ?? 0);
  });
});

// A page on another origin (the usual web app), from a tiny static server in the namespace,
// signals cross-origin: the SDK's gRPC-Web fetches need the gateway's CORS answers (preflight
// for `content-type: application/grpc-web+proto` and the SDK's headers, and
// `credentials: 'include'` because the signaling address differs from the host).
describe('TypeScript SDK in headless Chromium over WebRTC, page on another origin', { skip: why || false }, () => {
  const env = setup({ auth: false, port: 18100, pagePort: 18101 });

  test('a page served from 127.0.0.1:18101 signals at the gateway cross-origin', { timeout: 60_000 }, async () => {
    await connectAndDrive(env);
    await closeAndCheck(env);
  });
});
