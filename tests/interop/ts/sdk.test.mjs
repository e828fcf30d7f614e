// Interop tests: the official Viam TypeScript SDK (@viamrobotics/sdk) talks to
// a partgate gateway running the built-in demo fleet (see docs/contracts.md).
//
// Run: cd tests/interop/ts && npm ci && node --test
//
// The gateway is started as a child process (`$PARTGATE_BIN demo --bind
// 127.0.0.1:0`), its address is read from stderr, and it is killed at the end.
//
// Every test group dials the gateway with the SDK's *direct* dial path
// (RobotClient.dial with a DialDirectConf: no signaling, no WebRTC) and runs
// the same calls over a different wire transport:
//   - grpc-h2c      gRPC over HTTP/2 cleartext, prior knowledge (connect-node)
//   - grpc-web-h1   gRPC-Web over HTTP/1.1 through Node's global fetch
//                   (connect-web; this is exactly what the SDK does by default)
//   - grpc-web-h2   gRPC-Web over HTTP/2 cleartext (connect-node)
//
// Notes on the SDK (v0.61.1), learned from its source:
//   - dialDirect refuses hosts that do not contain "local", so we dial
//     `http://localhost:PORT`; our transport factory rewrites the base URL to
//     the exact 127.0.0.1:PORT the gateway printed.
//   - createRobotClient() always throws "Failed to connect to robot" after a
//     successful *direct* dial (it checks the WebRTC peer connection state),
//     and leaks the connection; so we use `new RobotClient().dial(conf)`.
//   - the transport is chosen by `globalThis.VIAM.GRPC_TRANSPORT_FACTORY`
//     (default: connect-web's gRPC-Web transport over fetch).
//   - on connect it calls RobotService/GetOperations, then again every 10 s
//     (a setTimeout loop that stops only once a call fails after disconnect()).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dns from 'node:dns/promises';

import {
  Code,
  ConnectError,
  GenericComponentClient,
  MotorClient,
  RobotClient,
  SensorClient,
  Struct,
} from '@viamrobotics/sdk';
import {
  Http2SessionManager,
  createGrpcTransport,
  createGrpcWebTransport as createNodeGrpcWebTransport,
} from '@connectrpc/connect-node';
import { createGrpcWebTransport as createFetchGrpcWebTransport } from '@connectrpc/connect-web';

const PARTGATE_BIN =
  process.env.PARTGATE_BIN ||
  new URL('../../../target/debug/partgate', import.meta.url).pathname;
const STARTUP_TIMEOUT_MS = 30_000;
const TEST_TIMEOUT_MS = 20_000;
const CALL_TIMEOUT_MS = 10_000;
const DEBUG = !!process.env.PARTGATE_TS_DEBUG;

// ---------------------------------------------------------------------------
// Gateway child process
// ---------------------------------------------------------------------------

let gateway; // ChildProcess
let gatewayAddr; // "127.0.0.1:PORT"
let gatewayStderr = '';

function startGateway() {
  return new Promise((resolve, reject) => {
    let child;
    try {
      child = spawn(PARTGATE_BIN, ['demo', '--bind', '127.0.0.1:0'], {
        env: { ...process.env, NO_COLOR: '1' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (err) {
      reject(new Error(`cannot spawn ${PARTGATE_BIN}: ${err.message}`));
      return;
    }
    gateway = child;
    let done = false;
    const finish = (err, addr) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(addr);
    };
    const timer = setTimeout(() => {
      finish(
        new Error(
          `gateway did not log "listening on" within ${STARTUP_TIMEOUT_MS} ms; stderr:\n${gatewayStderr}`,
        ),
      );
    }, STARTUP_TIMEOUT_MS);
    child.stdout.on('data', (d) => {
      if (DEBUG) process.stderr.write(`[gateway stdout] ${d}`);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => {
      gatewayStderr += d;
      if (DEBUG) process.stderr.write(d.replace(/^(?=.)/gm, '[gateway] '));
      const m = /listening on (\d+\.\d+\.\d+\.\d+:\d+)/.exec(gatewayStderr);
      if (m) finish(null, m[1]);
    });
    child.on('error', (err) => {
      finish(new Error(`cannot spawn ${PARTGATE_BIN}: ${err.message}\nstderr:\n${gatewayStderr}`));
    });
    child.on('exit', (code, signal) => {
      finish(
        new Error(
          `gateway exited before listening (code ${code}, signal ${signal}); stderr:\n${gatewayStderr}`,
        ),
      );
    });
  });
}

async function stopGateway() {
  const child = gateway;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(t);
}

// Last resort if the runner is torn down abruptly: never leave the child behind.
process.on('exit', () => {
  if (gateway && gateway.exitCode === null && gateway.signalCode === null) gateway.kill('SIGKILL');
});

/** Gateway stderr for failure messages (last few KiB). */
function gwLog() {
  return `\n--- gateway stderr (tail) ---\n${gatewayStderr.slice(-4000)}`;
}

// ---------------------------------------------------------------------------
// Transports
// ---------------------------------------------------------------------------

// After the suite, every transport fails fast with UNIMPLEMENTED. That ends
// the SDK's background loops (GetOperations heartbeat: stops on any error once
// the client is disconnected; session heartbeat: stops on UNIMPLEMENTED only),
// so the process exits on its own.
let suiteFinished = false;
const sessionManagers = [];
const callLog = []; // {transport, path, headers}

function guard(name, transport) {
  const check = (service, method, header) => {
    const path = `/${service.typeName}/${method.name}`;
    callLog.push({ transport: name, path, headers: Object.fromEntries(new Headers(header ?? {})) });
    if (DEBUG) console.error(`[${name}] ${path}`, Object.fromEntries(new Headers(header ?? {})));
    if (suiteFinished) throw new ConnectError('interop suite finished', Code.Unimplemented);
  };
  return {
    async unary(service, method, signal, timeoutMs, header, message, contextValues) {
      check(service, method, header);
      return transport.unary(service, method, signal, timeoutMs, header, message, contextValues);
    },
    async stream(service, method, signal, timeoutMs, header, input, contextValues) {
      check(service, method, header);
      return transport.stream(service, method, signal, timeoutMs, header, input, contextValues);
    },
  };
}

const TRANSPORTS = {
  'grpc-h2c': (baseUrl) => {
    const sm = new Http2SessionManager(baseUrl);
    sessionManagers.push(sm);
    return createGrpcTransport({ baseUrl, httpVersion: '2', sessionManager: sm });
  },
  'grpc-web-h1': (baseUrl) => createFetchGrpcWebTransport({ baseUrl }),
  'grpc-web-h2': (baseUrl) => {
    const sm = new Http2SessionManager(baseUrl);
    sessionManagers.push(sm);
    return createNodeGrpcWebTransport({ baseUrl, httpVersion: '2', sessionManager: sm });
  },
  // No factory at all: the SDK's own bundled gRPC-Web-over-fetch transport,
  // dialing http://localhost:PORT exactly as a user would. (Not guarded: its
  // heartbeat ends once the gateway is killed.)
  'sdk-default': null,
};

// The SDK reads globalThis.VIAM.GRPC_TRANSPORT_FACTORY whenever it (re)connects.
let activeTransport = 'grpc-h2c';
const VIAM_GLOBAL = {
  GRPC_TRANSPORT_FACTORY: (opts) => {
    // opts = { baseUrl: <DialDirectConf.host>, credentials: 'same-origin' }
    const url = new URL(opts.baseUrl);
    if (url.hostname === 'localhost') url.host = gatewayAddr;
    const baseUrl = url.origin;
    return guard(activeTransport, TRANSPORTS[activeTransport](baseUrl));
  },
};
globalThis.VIAM = VIAM_GLOBAL;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const callOpts = () => ({ timeoutMs: CALL_TIMEOUT_MS, headers: {} });

function localhostUrl() {
  const port = gatewayAddr.split(':').pop();
  return `http://localhost:${port}`;
}

async function dial(transportName) {
  activeTransport = transportName;
  // The factory is only consulted while (re)connecting.
  if (TRANSPORTS[transportName] === null) delete globalThis.VIAM;
  const client = new RobotClient();
  try {
    await client.dial({
      host: localhostUrl(),
      noReconnect: true,
      dialTimeout: CALL_TIMEOUT_MS,
    });
  } catch (err) {
    const causes = Array.isArray(err?.cause) ? err.cause.map((c) => `  cause: ${c}`).join('\n') : '';
    throw new Error(`dial via ${transportName} failed: ${err}\n${causes}${gwLog()}`);
  } finally {
    globalThis.VIAM = VIAM_GLOBAL;
  }
  return client;
}

/** Await a promise; on rejection, rethrow with the gateway log appended. */
async function call(what, p) {
  try {
    return await p;
  } catch (err) {
    const code = err instanceof ConnectError ? ` [code ${Code[err.code]}]` : '';
    const e = new Error(`${what} failed${code}: ${err?.message ?? err}${gwLog()}`);
    e.cause = err;
    throw e;
  }
}

async function expectCode(what, p, code) {
  let err;
  try {
    const v = await p;
    assert.fail(`${what}: expected ${Code[code]} error, got success: ${JSON.stringify(v)}`);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    err = e;
  }
  assert.ok(err instanceof ConnectError, `${what}: expected ConnectError, got ${err}`);
  assert.equal(
    Code[err.code],
    Code[code],
    `${what}: expected code ${Code[code]}, got ${Code[err.code]}: ${err.message}${gwLog()}`,
  );
  return err;
}

const resourceKey = (r) => `${r.namespace}:${r.type}:${r.subtype}/${r.name}`;

// ---------------------------------------------------------------------------
// Suite
// ---------------------------------------------------------------------------

before(async () => {
  gatewayAddr = await startGateway();
}, { timeout: STARTUP_TIMEOUT_MS + 5_000 });

after(async () => {
  suiteFinished = true;
  for (const sm of sessionManagers) sm.abort();
  await stopGateway();
}, { timeout: 15_000 });

for (const transportName of Object.keys(TRANSPORTS)) {
  describe(`Viam TS SDK via ${transportName}`, { timeout: 120_000 }, () => {
    let client;
    let skip = false;

    before(async () => {
      if (transportName === 'sdk-default') {
        // The SDK needs a host containing "local"; the gateway listens on 127.0.0.1 only.
        const addrs = await dns.lookup('localhost', { all: true });
        if (!addrs.some((a) => a.address === gatewayAddr.split(':')[0])) {
          skip = `localhost resolves to ${addrs.map((a) => a.address).join(', ')}, gateway is on ${gatewayAddr}`;
          return;
        }
      }
      client = await dial(transportName);
    }, { timeout: TEST_TIMEOUT_MS });

    after(async () => {
      if (client) await client.disconnect();
    }, { timeout: TEST_TIMEOUT_MS });

    // Each test: skip if the group was skipped.
    const t = (name, fn) =>
      test(name, { timeout: TEST_TIMEOUT_MS }, async (ctx) => {
        if (skip) return ctx.skip(skip);
        return fn(ctx);
      });

    t('connect calls RobotService/GetOperations', (ctx) => {
      if (TRANSPORTS[transportName] === null) return ctx.skip('transport not instrumented');
      const paths = callLog.filter((c) => c.transport === transportName).map((c) => c.path);
      assert.ok(
        paths.includes('/viam.robot.v1.RobotService/GetOperations'),
        `expected GetOperations on connect, saw: ${paths.join(', ')}`,
      );
    });

    t('resourceNames lists main, remote and prefixed names', async () => {
      const resources = await call('resourceNames()', client.resourceNames());
      const names = resources.map((r) => r.name);
      for (const want of ['motor1', 'sub1:motor1', 'cell-m1', 'sub1:imu', 'sub1:gen1']) {
        assert.ok(names.includes(want), `resourceNames() lacks ${want}; got ${names.join(', ')}`);
      }
      const m = resources.find((r) => r.name === 'sub1:motor1');
      assert.equal(resourceKey(m), 'rdk:component:motor/sub1:motor1');
    });

    t('MotorClient sub1:motor1 setPower / isPowered / stop', async () => {
      const motor = new MotorClient(client, 'sub1:motor1');
      await call('setPower(0.5)', motor.setPower(0.5, {}, callOpts()));
      const [on, power] = await call('isPowered()', motor.isPowered({}, callOpts()));
      assert.equal(on, true);
      assert.ok(Math.abs(power - 0.5) < 1e-9, `power = ${power}`);
      assert.equal(await call('isMoving()', motor.isMoving(callOpts())), true);
      await call('stop()', motor.stop({}, callOpts()));
      const [on2, power2] = await call('isPowered() after stop', motor.isPowered({}, callOpts()));
      assert.equal(on2, false);
      assert.equal(power2, 0);
    });

    t('doCommand reaches the right part with the prefix popped', async () => {
      const gen = new GenericComponentClient(client, 'sub1:gen1');
      const cmd = { hello: 'world', n: 3 };
      const res = await call('generic sub1:gen1 doCommand', gen.doCommand(Struct.fromJson(cmd), callOpts()));
      assert.deepEqual(res, { part: 'sub1', name: 'gen1', command: cmd });

      const motor = new MotorClient(client, 'sub1:motor1');
      const res2 = await call('motor sub1:motor1 doCommand', motor.doCommand(Struct.fromJson({ x: 1 }), callOpts()));
      assert.equal(res2.part, 'sub1');
      assert.equal(res2.name, 'motor1');
      assert.deepEqual(res2.command, { x: 1 });

      const cell = new MotorClient(client, 'cell-m1');
      const res3 = await call('motor cell-m1 doCommand', cell.doCommand(Struct.fromJson({}), callOpts()));
      assert.equal(res3.part, 'cell');
      assert.equal(res3.name, 'm1');
    });

    t('SensorClient sub1:imu getReadings', async () => {
      const sensor = new SensorClient(client, 'sub1:imu');
      const readings = await call('getReadings()', sensor.getReadings({}, callOpts()));
      assert.equal(readings.part, 'sub1');
      assert.equal(readings.name, 'imu');
      assert.equal(typeof readings.value, 'number');
    });

    t('unknown name is NOT_FOUND', async () => {
      const motor = new MotorClient(client, 'no-such-motor');
      await expectCode('isPowered() on unknown motor', motor.isPowered({}, callOpts()), Code.NotFound);
      const sensor = new SensorClient(client, 'sub1:no-such-sensor');
      await expectCode('getReadings() on unknown sub1 sensor', sensor.getReadings({}, callOpts()), Code.NotFound);
    });

    t('ambiguous bare name is FAILED_PRECONDITION', async () => {
      const motor = new MotorClient(client, 'lift');
      await expectCode('isPowered() on ambiguous "lift"', motor.isPowered({}, callOpts()), Code.FailedPrecondition);
    });
  });
}

// A browser running the SDK sends gRPC-Web cross-origin: it preflights, then
// needs allow-origin on the response and grpc-status/grpc-message exposed
// (trailers-only error responses carry them as headers). Node's fetch does no
// CORS itself, so check the headers by hand.
describe('gRPC-Web CORS (browser SDK)', { timeout: 60_000 }, () => {
  const origin = 'http://app.example.test:5173';
  const url = (path) => `http://${gatewayAddr}${path}`;
  // What Chrome sends for the SDK's requests (lower-case, sorted).
  const requested = ['content-type', 'grpc-timeout', 'viam_client', 'x-grpc-web', 'x-user-agent'];
  const list = (v) => (v ?? '').split(',').map((x) => x.trim().toLowerCase()).filter(Boolean);

  test('preflight OPTIONS allows POST and the SDK headers', { timeout: TEST_TIMEOUT_MS }, async () => {
    const res = await fetch(url('/viam.robot.v1.RobotService/ResourceNames'), {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': requested.join(','),
      },
      signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
    });
    await res.arrayBuffer();
    const h = Object.fromEntries(res.headers);
    const ctx = `\nresponse ${res.status} ${JSON.stringify(h)}${gwLog()}`;
    assert.ok(res.status === 200 || res.status === 204, `preflight status ${res.status}${ctx}`);
    const allowOrigin = res.headers.get('access-control-allow-origin');
    assert.ok(allowOrigin === origin || allowOrigin === '*', `access-control-allow-origin = ${allowOrigin}${ctx}`);
    const methods = list(res.headers.get('access-control-allow-methods'));
    assert.ok(methods.includes('post') || methods.includes('*'), `access-control-allow-methods = ${methods}${ctx}`);
    const allowed = list(res.headers.get('access-control-allow-headers'));
    if (!allowed.includes('*')) {
      for (const want of requested) assert.ok(allowed.includes(want), `allow-headers lacks ${want}${ctx}`);
    }
  });

  test('gRPC-Web POST with Origin gets allow-origin and exposed grpc-status', { timeout: TEST_TIMEOUT_MS }, async () => {
    // An error call (trailers-only response): grpc-status must be readable by the page.
    const res = await fetch(url('/viam.component.motor.v1.MotorService/IsPowered'), {
      method: 'POST',
      headers: {
        origin,
        'content-type': 'application/grpc-web+proto',
        'x-grpc-web': '1',
        'x-user-agent': 'partgate-interop',
      },
      // IsPoweredRequest{name: "no-such-motor"} framed as gRPC-Web.
      body: (() => {
        const name = new TextEncoder().encode('no-such-motor');
        const msg = new Uint8Array([0x0a, name.length, ...name]);
        return new Uint8Array([0, 0, 0, 0, msg.length, ...msg]);
      })(),
      signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
    });
    const body = new Uint8Array(await res.arrayBuffer());
    const h = Object.fromEntries(res.headers);
    const ctx = `\nresponse ${res.status} ${JSON.stringify(h)} body ${Buffer.from(body).toString('latin1')}${gwLog()}`;
    assert.equal(res.status, 200, `status${ctx}`);
    const allowOrigin = res.headers.get('access-control-allow-origin');
    assert.ok(allowOrigin === origin || allowOrigin === '*', `access-control-allow-origin = ${allowOrigin}${ctx}`);
    const exposed = list(res.headers.get('access-control-expose-headers'));
    if (!exposed.includes('*')) {
      for (const want of ['grpc-status', 'grpc-message']) {
        assert.ok(exposed.includes(want), `expose-headers lacks ${want}${ctx}`);
      }
    }
    // grpc-status 5 (NOT_FOUND) either as a header (trailers-only) or in the body's trailer frame.
    const status = res.headers.get('grpc-status') ?? /grpc-status:\s*(\d+)/i.exec(Buffer.from(body).toString('latin1'))?.[1];
    assert.equal(status, '5', `grpc-status${ctx}`);
  });
});
