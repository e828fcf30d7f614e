// The code that runs in the browser page: bundled by esbuild (see webrtc.test.mjs) with the
// official TypeScript SDK into one IIFE script. The runner drives it step by step through
// `window.partgate.*` (page.evaluate), so it can read the gateway's metrics between steps.

import { createRobotClient, MotorClient, SensorClient } from '@viamrobotics/sdk';

let client;

/** Everything the SDK's own peer connection says about how it is connected. */
async function peerView() {
  // `peerConn` is private in the SDK's TypeScript types, but a plain property at run time.
  const pc = client?.peerConn;
  if (!pc) return { peerConnection: false };
  const stats = await pc.getStats();
  let pair;
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
  });
  if (!pair) {
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) pair = s;
    });
  }
  const local = pair && byId.get(pair.localCandidateId);
  const remote = pair && byId.get(pair.remoteCandidateId);
  let dataChannels = 0;
  let messagesSent = 0;
  let messagesReceived = 0;
  stats.forEach((s) => {
    if (s.type === 'data-channel') {
      dataChannels += 1;
      messagesSent += s.messagesSent ?? 0;
      messagesReceived += s.messagesReceived ?? 0;
    }
  });
  return {
    peerConnection: true,
    isConnected: client.isConnected(),
    iceConnectionState: pc.iceConnectionState,
    connectionState: pc.connectionState,
    dataChannelLabel: client.dataChannel?.label,
    dataChannelState: client.dataChannel?.readyState,
    localCandidate: local && { type: local.candidateType, address: local.address, port: local.port, protocol: local.protocol },
    remoteCandidate: remote && { type: remote.candidateType, address: remote.address, port: remote.port, protocol: remote.protocol },
    bytesSent: pair?.bytesSent ?? 0,
    bytesReceived: pair?.bytesReceived ?? 0,
    dataChannels,
    messagesSent,
    messagesReceived,
  };
}

function errText(e) {
  const cause = e?.cause ? ` (cause: ${Array.isArray(e.cause) ? e.cause.map(errText).join('; ') : errText(e.cause)})` : '';
  return `${e?.name ?? 'Error'}: ${e?.message ?? String(e)}${cause}`;
}

async function step(fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    return { ok: false, error: errText(e) };
  }
}

window.partgate = {
  /** Dials over WebRTC only: reconnects off, so a failure is reported rather than retried. */
  connect: (conf) =>
    step(async () => {
      const t0 = performance.now();
      client = await createRobotClient({ noReconnect: true, ...conf });
      return { ms: Math.round(performance.now() - t0), peer: await peerView() };
    }),

  /** Lists resources, drives `sub1:motor1`, reads two sensors; returns what it saw and how many calls it made. */
  drive: () =>
    step(async () => {
      const opts = { timeoutMs: 5000 };
      const names = (await client.resourceNames()).map((n) => `${n.namespace}:${n.type}:${n.subtype}/${n.name}`);
      const motor = new MotorClient(client, 'sub1:motor1');
      await motor.setPower(0.4, {}, opts);
      const [powered, power] = await motor.isPowered({}, opts);
      await motor.stop({}, opts);
      const [poweredAfterStop] = await motor.isPowered({}, opts);
      const imu = await new SensorClient(client, 'sub2:imu').getReadings({}, opts);
      const temp = await new SensorClient(client, 'temp').getReadings({}, opts);
      return { calls: 7, names, powered, power, poweredAfterStop, imu, temp };
    }),

  /** A call the gateway must refuse: an unknown part. */
  unknown: () => step(async () => new MotorClient(client, 'nosuchpart:motor1').isPowered({}, { timeoutMs: 5000 })),

  peer: () => step(peerView),

  close: () =>
    step(async () => {
      await client?.disconnect();
      client = undefined;
    }),
};

/** Diagnostics: which ICE candidates this browser gathers on its own (no server involved). */
window.partgate.gather = (iceServers = []) =>
  step(async () => {
    const pc = new RTCPeerConnection({ iceServers });
    pc.createDataChannel('probe');
    const cands = [];
    const done = new Promise((resolve) => {
      pc.onicecandidate = (e) => (e.candidate ? cands.push(e.candidate.candidate) : resolve());
      setTimeout(resolve, 5000);
    });
    await pc.setLocalDescription(await pc.createOffer());
    await done;
    pc.close();
    return cands;
  });
