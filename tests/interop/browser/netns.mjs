// Helpers for browser tests that run everything (partgate processes, Chromium, probes) inside a
// fresh network namespace with only loopback up, so that nothing Chromium sends can leave the
// machine. Every process started here is remembered and stopped by PID.

import { execFile, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import assert from 'node:assert/strict';

export const DEBUG = !!process.env.PARTGATE_BROWSER_DEBUG;
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** Every ChildProcess started by `startInNs`, killed on exit if still running. */
const children = new Set();

process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

export function which(cmd) {
  for (const dir of (process.env.PATH || '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    try {
      accessSync(path.join(dir, cmd), constants.X_OK);
      return path.join(dir, cmd);
    } catch {
      // next
    }
  }
  return null;
}

/** Why these tests cannot run here, or null. */
export function missing(partgateBin) {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'network namespaces need root';
  if (!which('ip')) return 'no `ip` (Debian package iproute2)';
  if (!existsSync(CHROMIUM_BIN)) return `no Chromium at ${CHROMIUM_BIN} (Debian package chromium)`;
  if (!existsSync(partgateBin)) return `no gateway binary at ${partgateBin} (cargo build --bins)`;
  return null;
}

export function run(cmd, args, { timeout = 20_000, allowFail = false } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && !allowFail) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr });
    });
  });
}

/**
 * Starts `cmd args` inside the namespace (`ip netns exec` execs it: the child's PID is the
 * program's). `child.ready` resolves with the first match of `readyRe` in its output.
 */
export function startInNs(ns, label, cmd, args, readyRe) {
  const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
    env: { ...process.env, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  child.log = '';
  const onData = (d) => {
    child.log += d;
    if (child.log.length > 200_000) child.log = child.log.slice(-100_000);
    if (DEBUG) process.stderr.write(String(d).replace(/^(?=.)/gm, `[${label}] `));
  };
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  child.ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${label} not ready in 30 s:\n${child.log}`)), 30_000);
    const check = () => {
      const m = readyRe.exec(child.log);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    child.stdout.on('data', check);
    child.stderr.on('data', check);
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${label} exited (code ${code}, signal ${sig}):\n${child.log}`));
    });
  });
  child.ready.catch(() => {});
  return child;
}

/** SIGTERM, then SIGKILL after 5 s; resolves once the process has exited. */
export async function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) {
    children.delete(child);
    return;
  }
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(t);
  children.delete(child);
}

/** Stops every process started here that is still running. */
export async function stopAll() {
  for (const c of [...children]) await stopChild(c);
}

/** A new namespace with only `lo`, up; `hostNames` also resolve to 127.0.0.1 inside it. */
export async function createNetns(prefix, hostNames = []) {
  const ns = `${prefix}-${process.pid}-${randomBytes(3).toString('hex')}`;
  await run('ip', ['netns', 'add', ns]);
  mkdirSync(path.join('/etc/netns', ns), { recursive: true });
  const v4 = ['127.0.0.1', 'localhost', ...hostNames].join(' ');
  writeFileSync(path.join('/etc/netns', ns, 'hosts'), `${v4}\n::1 localhost\n`);
  await run('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
  const links = await run('ip', ['netns', 'exec', ns, 'ip', '-o', 'link']);
  const names = links.stdout.trim().split('\n').map((l) => l.split(':')[1].trim());
  assert.deepEqual(names, ['lo'], `namespace ${ns} must have only loopback: ${links.stdout}`);
  return ns;
}

/** Kills what is still running in our own namespace (only processes we started can be there),
 * then deletes it. */
export async function removeNetns(ns) {
  const pids = await run('ip', ['netns', 'pids', ns], { allowFail: true });
  for (const pid of pids.stdout.split(/\s+/).filter(Boolean).map(Number)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  await run('ip', ['netns', 'del', ns], { allowFail: true });
  rmSync(path.join('/etc/netns', ns), { recursive: true, force: true });
}

/** GET a URL from inside the namespace (Node's fetch, in a short-lived child). */
export async function fetchInNs(ns, url, headers = {}) {
  const script = `fetch(${JSON.stringify(url)}, { headers: ${JSON.stringify(headers)} }).then(async r => { process.stdout.write(JSON.stringify({ status: r.status, headers: Object.fromEntries(r.headers), body: await r.text() })); }, e => { process.stdout.write(JSON.stringify({ status: 0, headers: {}, body: e.message })); })`;
  const res = await run('ip', ['netns', 'exec', ns, process.execPath, '-e', script]);
  return JSON.parse(res.stdout);
}

/** Headless Chromium inside the namespace, through a wrapper script (Playwright talks to it over
 * its inherited pipes, which `ip netns exec` keeps). */
export async function launchChromium(ns, tmp, extraArgs = []) {
  const wrapper = path.join(tmp, 'chromium-in-netns.sh');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} ${CHROMIUM_BIN} "$@"\n`, { mode: 0o755 });
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: wrapper,
    headless: true,
    chromiumSandbox: false,
    timeout: 30_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...extraArgs,
    ],
  });
}
