"""Fixtures for the Python-SDK interop suite.

Processes started here (part_server.py parts, the partgate gateway) are tracked by their
Popen handle and only those are terminated/killed at teardown.
"""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import pytest_asyncio

from viam.robot.client import RobotClient
from viam.rpc.dial import DialOptions

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PART_SERVER = HERE / "part_server.py"
DEFAULT_BIN = REPO / "target" / "debug" / "partgate"
LISTEN_RE = re.compile(r"listening on (\d+\.\d+\.\d+\.\d+:\d+)")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
GATEWAY_START_TIMEOUT = 30.0
PART_START_TIMEOUT = 15.0

# The fleet used by most tests. It mirrors the demo fleet of docs/contracts.md, plus a motor
# `solo` that only sub1 has (to test a bare name unique to one non-main part).
FLEET_SPEC = {
    "main": dict(motors=["motor1", "wheel"], sensors=["temp"], generics=["gen1"], prefix=None),
    "sub1": dict(motors=["motor1", "lift", "solo"], sensors=["imu"], generics=["gen1"], prefix=None),
    "sub2": dict(motors=["lift"], sensors=["imu"], generics=[], prefix=None),
    "cell": dict(motors=["m1"], sensors=["temp"], generics=[], prefix="cell-"),
}


def partgate_bin() -> Path:
    return Path(os.environ.get("PARTGATE_BIN", str(DEFAULT_BIN)))


class _Drainer:
    """Reads a pipe line by line in a daemon thread, keeps every line, and hands them to a queue."""

    def __init__(self, pipe, label: str):
        self.lines: List[str] = []
        self.queue: "queue.Queue[Optional[str]]" = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(pipe,), name=f"drain-{label}", daemon=True)
        self._thread.start()

    def _run(self, pipe) -> None:
        try:
            for raw in iter(pipe.readline, ""):
                line = ANSI_RE.sub("", raw.rstrip("\n"))
                with self._lock:
                    self.lines.append(line)
                self.queue.put(line)
        except (ValueError, OSError):
            pass
        finally:
            self.queue.put(None)

    def text(self, last: Optional[int] = None) -> str:
        with self._lock:
            lines = list(self.lines)
        if last is not None:
            lines = lines[-last:]
        return "\n".join(lines)

    def wait_for(self, pattern: "re.Pattern[str]", timeout: float, proc: subprocess.Popen) -> Optional["re.Match[str]"]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                line = self.queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if proc.poll() is not None and self.queue.empty():
                    return None
                continue
            if line is None:
                return None
            m = pattern.search(line)
            if m:
                return m


def _stop_process(proc: subprocess.Popen, grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------
# Python SDK parts
# --------------------------------------------------------------------------------------------

READY_RE = re.compile(r"^READY (\S+:\d+)$")
_RUNNING_PARTS: Dict[str, List["Part"]] = {}


@dataclass
class Part:
    name: str
    motors: List[str]
    sensors: List[str]
    generics: List[str]
    prefix: Optional[str] = None
    port: int = 0
    proc: Optional[subprocess.Popen] = None
    stdout: Optional[_Drainer] = None
    stderr: Optional[_Drainer] = None
    history: List[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart, on the same port once one was assigned) the part process."""
        assert self.proc is None or self.proc.poll() is not None, "part already running"
        cmd = [
            sys.executable,
            str(PART_SERVER),
            "--part",
            self.name,
            "--motors",
            ",".join(self.motors),
            "--sensors",
            ",".join(self.sensors),
            "--generics",
            ",".join(self.generics),
            "--port",
            str(self.port),
            "--trace",
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        self.stdout = _Drainer(self.proc.stdout, f"{self.name}-out")
        self.stderr = _Drainer(self.proc.stderr, f"{self.name}-err")
        m = self.stdout.wait_for(READY_RE, PART_START_TIMEOUT, self.proc)
        if not m:
            _stop_process(self.proc)
            raise RuntimeError(
                f"part {self.name} did not become READY within {PART_START_TIMEOUT}s (port {self.port}).\n"
                f"stdout:\n{self.stdout.text()}\nstderr:\n{self.stderr.text()}"
            )
        self.port = int(m.group(1).rsplit(":", 1)[1])

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.history.append(self.stderr.text() if self.stderr else "")
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)

    def calls_seen(self) -> List[str]:
        """gRPC method names this part process received (from its --trace output)."""
        text = self.stderr.text() if self.stderr else ""
        return [ln[5:] for ln in text.splitlines() if ln.startswith("CALL ")]


@pytest.fixture
def part_factory(request):
    parts: List[Part] = []
    _RUNNING_PARTS[request.node.nodeid] = parts

    def make(name: str, motors=(), sensors=(), generics=(), prefix=None) -> Part:
        p = Part(name=name, motors=list(motors), sensors=list(sensors), generics=list(generics), prefix=prefix)
        parts.append(p)
        p.start()
        return p

    yield make
    for p in parts:
        p.stop()
    _RUNNING_PARTS.pop(request.node.nodeid, None)


# --------------------------------------------------------------------------------------------
# Gateway
# --------------------------------------------------------------------------------------------


@dataclass
class Gateway:
    address: str
    proc: subprocess.Popen
    stderr: _Drainer
    stdout: _Drainer
    config_path: Optional[Path] = None

    def log(self, last: Optional[int] = 200) -> str:
        return self.stderr.text(last)


_RUNNING_GATEWAYS: Dict[str, List[Gateway]] = {}


def _start_gateway(args: List[str], nodeid: str) -> Gateway:
    binary = partgate_bin()
    if not binary.exists():
        pytest.fail(f"partgate binary not found at {binary} (build it with `cargo build` or set PARTGATE_BIN)", pytrace=False)
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    env.setdefault("RUST_LOG", "info")
    proc = subprocess.Popen(
        [str(binary), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=env,
    )
    stderr = _Drainer(proc.stderr, "gateway-err")
    stdout = _Drainer(proc.stdout, "gateway-out")
    m = stderr.wait_for(LISTEN_RE, GATEWAY_START_TIMEOUT, proc)
    if not m:
        _stop_process(proc)
        time.sleep(0.1)
        pytest.fail(
            f"gateway `{binary} {' '.join(args)}` did not log `listening on ADDR` within {GATEWAY_START_TIMEOUT}s "
            f"(exit code {proc.returncode}).\n--- stderr ---\n{stderr.text()}\n--- stdout ---\n{stdout.text()}",
            pytrace=False,
        )
    gw = Gateway(address=m.group(1), proc=proc, stderr=stderr, stdout=stdout)
    _RUNNING_GATEWAYS.setdefault(nodeid, []).append(gw)
    return gw


@pytest.fixture
def gateway_factory(request, tmp_path):
    started: List[Gateway] = []

    def make(parts: List[Part], main_part: Optional[str] = "main") -> Gateway:
        remotes = []
        for p in parts:
            r = {"name": p.name, "address": p.address, "insecure": True}
            if p.prefix:
                r["prefix"] = p.prefix
            remotes.append(r)
        config = {"network": {"bind_address": "127.0.0.1:0"}, "remotes": remotes}
        if main_part:
            config["gateway"] = {"main_part": main_part}
        path = tmp_path / f"partgate-{len(started)}.json"
        path.write_text(json.dumps(config, indent=2))
        gw = _start_gateway(["run", "--config", str(path)], request.node.nodeid)
        gw.config_path = path
        started.append(gw)
        return gw

    yield make
    for gw in started:
        _stop_process(gw.proc)
    _RUNNING_GATEWAYS.pop(request.node.nodeid, None)


@dataclass
class Fleet:
    gateway: Gateway
    parts: Dict[str, Part]
    ready_after: Optional[float] = None

    @property
    def address(self) -> str:
        return self.gateway.address


async def wait_until_listed(address: str, expected: set, deadline_s: float = 10.0) -> float:
    """Poll the gateway's RobotService/ResourceNames (raw grpclib, no SDK) until every name in
    `expected` is listed. Returns the seconds waited; fails the test with the last listing otherwise."""
    import asyncio

    from grpclib.client import Channel

    from viam.proto.robot import ResourceNamesRequest, RobotServiceStub

    host, port = address.rsplit(":", 1)
    channel = Channel(host, int(port))
    t0 = time.monotonic()
    last: object = None
    try:
        while time.monotonic() - t0 < deadline_s:
            try:
                resp = await RobotServiceStub(channel).ResourceNames(ResourceNamesRequest(), timeout=2)
                last = sorted(rn.name for rn in resp.resources)
                if expected <= set(last):
                    return time.monotonic() - t0
            except Exception as e:  # noqa: BLE001
                last = e
            await asyncio.sleep(0.1)
    finally:
        channel.close()
    pytest.fail(f"gateway {address} never listed {sorted(expected)} within {deadline_s}s; last: {last!r}", pytrace=False)


def fleet_names() -> set:
    out = set()
    for part, spec in FLEET_SPEC.items():
        for local in spec["motors"] + spec["sensors"] + spec["generics"]:
            if part == "main":
                out.add(local)
            elif spec["prefix"]:
                out.add(spec["prefix"] + local)
            else:
                out.add(f"{part}:{local}")
    return out


DEMO_NAMES = {
    "motor1", "wheel", "temp", "gen1", "echo1",
    "sub1:motor1", "sub1:lift", "sub1:imu", "sub1:gen1",
    "sub2:lift", "sub2:imu",
    "cell-m1", "cell-temp",
}  # fmt: skip  (docs/contracts.md)


@pytest.fixture
def fleet_unready(part_factory, gateway_factory) -> Fleet:
    """Like `fleet`, yielded as soon as the gateway logs `listening on` (no readiness wait)."""
    parts = {name: part_factory(name, **spec) for name, spec in FLEET_SPEC.items()}
    gw = gateway_factory(list(parts.values()), main_part="main")
    return Fleet(gateway=gw, parts=parts)


@pytest_asyncio.fixture
async def fleet(fleet_unready) -> Fleet:
    """Four Python SDK parts (main, sub1, sub2, cell with prefix `cell-`) behind one gateway,
    yielded once the gateway lists all their resources (the SDK caches names at connect)."""
    fleet_unready.ready_after = await wait_until_listed(fleet_unready.address, fleet_names())
    return fleet_unready


@pytest_asyncio.fixture
async def demo_gateway(request) -> Gateway:
    """`partgate demo --bind 127.0.0.1:0` (built-in simulated fleet), once it lists the demo names."""
    gw = _start_gateway(["demo", "--bind", "127.0.0.1:0"], request.node.nodeid)
    try:
        await wait_until_listed(gw.address, DEMO_NAMES)
        yield gw
    finally:
        _stop_process(gw.proc)
        _RUNNING_GATEWAYS.pop(request.node.nodeid, None)


# --------------------------------------------------------------------------------------------
# SDK client
# --------------------------------------------------------------------------------------------


def robot_options() -> RobotClient.Options:
    """Plain h2c, no auth, no WebRTC. Background connection checks/reconnects are disabled so that a
    test can prove the *same* channel keeps working (no client-side reconnect)."""
    return RobotClient.Options(
        dial_options=DialOptions(insecure=True, disable_webrtc=True, timeout=5, initial_connection_attempts=1),
        check_connection_interval=0,
        attempt_reconnect_interval=0,
    )


@pytest_asyncio.fixture
async def connect():
    """`await connect(addr)` -> RobotClient; every client is closed at teardown."""
    import asyncio

    clients: List[RobotClient] = []

    async def _connect(address: str) -> RobotClient:
        robot = await asyncio.wait_for(RobotClient.at_address(address, robot_options()), timeout=15)
        clients.append(robot)
        return robot

    yield _connect
    for robot in clients:
        try:
            await asyncio.wait_for(robot.close(), timeout=5)
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# Attach the gateway's stderr (and the parts' call traces) to failing tests.
# --------------------------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for i, gw in enumerate(_RUNNING_GATEWAYS.get(item.nodeid, [])):
            rep.sections.append((f"gateway #{i} stderr (last 200 lines)", gw.log(200) or "<empty>"))
        for p in _RUNNING_PARTS.get(item.nodeid, []):
            rep.sections.append((f"part {p.name} ({p.address}) gRPC calls received", "\n".join(p.calls_seen()) or "<none>"))
