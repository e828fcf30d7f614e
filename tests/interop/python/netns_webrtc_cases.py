"""Issue 4 interop cases: the official Python SDK reaches the fleet over WebRTC.

Not collected on its own (the file name does not match `test_*.py`): `test_webrtc.py` runs these
cases inside a network namespace that has only loopback, because the SDK's WebRTC stack (the Rust
library viam-rust-utils inside viam-sdk) sends mDNS queries and STUN requests to public servers;
in the namespace they cannot leave the machine. That namespace also has its own /etc/hosts
(`/etc/netns/<ns>/hosts`) mapping the test host names below to 127.0.0.1, because the Rust dialer
resolves names itself (monkeypatching Python's resolver would not reach it).

SDK facts these cases rely on (viam-sdk 0.85.1, rust-utils `dial_ffi.rs`, `dial.rs`): WebRTC is
tried unless the host contains `localhost` or `.local`; signaling goes to the address itself with
`rpc-host` = that address; any WebRTC failure falls back to the already-authenticated direct
channel. So "the SDK worked" proves nothing about WebRTC: each case reads the gateway's own
counters (`partgate_webrtc_*` on /metrics) before and after, and a negative control shows those
counters stay flat when the SDK falls back to direct gRPC.
"""

import asyncio
import os
import re
import ssl
import time
import urllib.request
from typing import Dict, Optional

import pytest

from viam.components.motor import Motor
from viam.components.sensor import Sensor
from viam.robot.client import RobotClient
from viam.rpc.dial import Credentials, DialOptions

from conftest import (
    AUTH_FQDN,
    FLEET_SPEC,
    AuthConfig,
    auth_gateway_config,
    part_names,
    wait_until_listed,
    wait_until_listed_tls,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("PARTGATE_IN_NETNS") != "1",
    reason="run by test_webrtc.py inside its loopback-only network namespace",
)

# Resolved to 127.0.0.1 by the namespace's /etc/hosts (test_webrtc.py writes it).
PLAIN_HOST = "plain.partgate.test"
UNLISTED_HOST = "unlisted.partgate.test"
T = 5.0
CONNECT_TIMEOUT = 30.0
PARTS = ("main", "sub1", "sub2")
METRIC_RE = re.compile(r"^(partgate_webrtc_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$")


def webrtc_metrics(url: str, context: Optional[ssl.SSLContext] = None) -> Dict[str, float]:
    """The gateway's `partgate_webrtc_*` series (labels summed away) from its /metrics page."""
    with urllib.request.urlopen(url, timeout=5, context=context) as resp:
        text = resp.read().decode()
    out: Dict[str, float] = {}
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def opened(metrics: Dict[str, float]) -> float:
    return metrics.get("partgate_webrtc_streams_opened_total", 0.0)


async def drive_fleet(robot: RobotClient, motor: str = "sub1:motor1") -> int:
    """Drives components on two non-main parts and the main part; returns how many component
    calls it made (each one a stream on the data channel when WebRTC is in use). Clients driving
    the fleet at the same time need a motor each: another's `stop` would land between this one's
    `set_power` and `is_powered`."""
    names = {str(n.name) for n in robot.resource_names}
    expected = {*part_names("main"), *part_names("sub1"), *part_names("sub2")}
    assert expected <= {n.split("/")[-1] if "/" in n else n for n in names} or expected <= names, names
    m = Motor.from_robot(robot, motor)
    await m.set_power(0.4, timeout=T)
    powered, power = await m.is_powered(timeout=T)
    assert powered and abs(power - 0.4) < 1e-9, (powered, power)
    await m.stop(timeout=T)
    readings = await Sensor.from_robot(robot, "sub2:imu").get_readings(timeout=T)
    assert (readings["part"], readings["name"]) == ("sub2", "imu"), readings
    readings = await Sensor.from_robot(robot, "temp").get_readings(timeout=T)
    assert (readings["part"], readings["name"]) == ("main", "temp"), readings
    return 5


def webrtc_gateway_config(parts, tls: bool, certs=None, auth: Optional[AuthConfig] = None) -> dict:
    if tls:
        config = auth_gateway_config(parts, certs, auth)
    else:
        config = {
            "network": {"bind_address": "127.0.0.1:0"},
            "remotes": [{"name": p.name, "address": p.address, "insecure": True} for p in parts],
            "gateway": {"main_part": "main"},
        }
    config["gateway"]["webrtc"] = {"enabled": True, "udp_bind_ip": "127.0.0.1", "hosts": [PLAIN_HOST]}
    return config


async def connect(address: str, dial: DialOptions) -> RobotClient:
    opts = RobotClient.Options(dial_options=dial, check_connection_interval=0, attempt_reconnect_interval=0)
    return await asyncio.wait_for(RobotClient.at_address(address, opts), timeout=CONNECT_TIMEOUT)


async def wait_for_peers(url: str, want: float, context=None, within: float = 15.0) -> Dict[str, float]:
    deadline = time.monotonic() + within
    while True:
        m = webrtc_metrics(url, context)
        if m.get("partgate_webrtc_peers", 0.0) == want or time.monotonic() > deadline:
            return m
        await asyncio.sleep(0.2)


async def test_sdk_over_webrtc_with_verified_tls_and_location_secret(part_factory, gateway_from_config, tls_certs, monkeypatch):
    """The SDK dials `gateway.partgate.test:PORT` with a location secret, verifying the gateway's
    certificate against the test CA (SSL_CERT_FILE), signals on the gateway's own port and carries
    every component call over the data channel: the gateway's WebRTC stream counter grows by at
    least the number of calls, and the parts received them (routing by name works the same)."""
    auth = AuthConfig()
    parts = {name: part_factory(name, **FLEET_SPEC[name]) for name in PARTS}
    gw = gateway_from_config(webrtc_gateway_config(list(parts.values()), True, tls_certs, auth))
    port = int(gw.address.rsplit(":", 1)[1])
    await wait_until_listed_tls(f"localhost:{port}", auth.new_secret, {*part_names("main"), *part_names("sub1"), *part_names("sub2")})
    ctx = ssl.create_default_context(cafile=str(tls_certs.ca))
    url = f"https://localhost:{port}/metrics"
    before = webrtc_metrics(url, ctx)

    monkeypatch.setenv("SSL_CERT_FILE", str(tls_certs.ca))
    dial = DialOptions(
        credentials=Credentials(type="robot-location-secret", payload=auth.old_secret),
        auth_entity=AUTH_FQDN,
        disable_webrtc=False,
        timeout=20,
    )
    robot = await connect(f"{AUTH_FQDN}:{port}", dial)
    try:
        during = webrtc_metrics(url, ctx)
        assert during.get("partgate_webrtc_peers", 0.0) >= 1, f"no WebRTC peer after the SDK connected: {during}\n{gw.log(80)}"
        calls = await drive_fleet(robot)
        after = webrtc_metrics(url, ctx)
        assert opened(after) - opened(before) >= calls, f"component calls did not go over WebRTC: before {before}, after {after}"
        assert any(c.endswith("MotorService/SetPower") for c in parts["sub1"].calls_seen())
        assert not any(c.endswith("MotorService/SetPower") for c in parts["main"].calls_seen())
    finally:
        await robot.close()
    gone = await wait_for_peers(url, 0.0, ctx)
    assert gone.get("partgate_webrtc_peers", 0.0) == 0.0, f"peer not cleaned up after the SDK closed: {gone}"
    assert gone.get("partgate_webrtc_streams", 0.0) == 0.0, f"streams left open: {gone}"


async def test_several_sdk_clients_over_webrtc_at_once(part_factory, gateway_from_config):
    """Three SDK clients (plaintext, no auth) connect over WebRTC at once and drive the fleet
    concurrently; each gets its own peer, and all of them are cleaned up when they close."""
    parts = {name: part_factory(name, **FLEET_SPEC[name]) for name in PARTS}
    config = webrtc_gateway_config(list(parts.values()), False)
    gw = gateway_from_config(config)
    port = int(gw.address.rsplit(":", 1)[1])
    await wait_until_listed(gw.address, {*part_names("main"), *part_names("sub1"), *part_names("sub2")})
    url = f"http://127.0.0.1:{port}/metrics"
    before = webrtc_metrics(url)

    dial = DialOptions(insecure=True, disable_webrtc=False, timeout=20)
    robots = await asyncio.gather(*(connect(f"127.0.0.1:{port}", dial) for _ in range(3)))
    try:
        during = webrtc_metrics(url)
        assert during.get("partgate_webrtc_peers", 0.0) == 3, f"want 3 WebRTC peers: {during}\n{gw.log(80)}"
        motors = ["sub1:motor1", "sub1:lift", "sub1:solo"]
        counts = await asyncio.gather(*(drive_fleet(r, m) for r, m in zip(robots, motors)))
        after = webrtc_metrics(url)
        assert opened(after) - opened(before) >= sum(counts), f"before {before}, after {after}"
    finally:
        for r in robots:
            await r.close()
    gone = await wait_for_peers(url, 0.0)
    assert gone.get("partgate_webrtc_peers", 0.0) == 0.0, gone


async def test_unlisted_host_falls_back_to_direct_and_counters_stay_flat(part_factory, gateway_from_config):
    """Negative control for the proof above: a host name the gateway does not serve gets INVALID_ARGUMENT
    "host not preconfigured" from signaling, the SDK falls back to direct gRPC, the calls still
    work, and the WebRTC counters do not move."""
    parts = {name: part_factory(name, **FLEET_SPEC[name]) for name in PARTS}
    gw = gateway_from_config(webrtc_gateway_config(list(parts.values()), False))
    port = int(gw.address.rsplit(":", 1)[1])
    await wait_until_listed(gw.address, {*part_names("main"), *part_names("sub1"), *part_names("sub2")})
    url = f"http://127.0.0.1:{port}/metrics"
    before = webrtc_metrics(url)
    robot = await connect(f"{UNLISTED_HOST}:{port}", DialOptions(insecure=True, disable_webrtc=False, timeout=20))
    try:
        await drive_fleet(robot)
        after = webrtc_metrics(url)
        assert opened(after) == opened(before), f"fallback calls counted as WebRTC: {before} -> {after}"
        assert after.get("partgate_webrtc_peers", 0.0) == 0.0, after
    finally:
        await robot.close()


async def test_listed_extra_host_uses_webrtc(part_factory, gateway_from_config):
    """`gateway.webrtc.hosts` adds accepted rpc-host values: the same gateway reached as
    `plain.partgate.test:PORT` (listed) is served over WebRTC."""
    parts = {name: part_factory(name, **FLEET_SPEC[name]) for name in PARTS}
    config = webrtc_gateway_config(list(parts.values()), False)
    gw = gateway_from_config(config)
    port = int(gw.address.rsplit(":", 1)[1])
    await wait_until_listed(gw.address, {*part_names("main"), *part_names("sub1"), *part_names("sub2")})
    url = f"http://127.0.0.1:{port}/metrics"
    before = webrtc_metrics(url)
    robot = await connect(f"{PLAIN_HOST}:{port}", DialOptions(insecure=True, disable_webrtc=False, timeout=20))
    try:
        calls = await drive_fleet(robot)
        after = webrtc_metrics(url)
        assert opened(after) - opened(before) >= calls, f"before {before}, after {after}"
    finally:
        await robot.close()
