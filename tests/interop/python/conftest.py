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


def start_ready_process(cmd, name: str, what: str):
    """Starts a part process that prints `READY host:port` once it listens; returns the process,
    its stdout and stderr drainers (named after `name`), and the port. Stops it and raises,
    naming it as `what`, if READY does not come."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    stdout = _Drainer(proc.stdout, f"{name}-out")
    stderr = _Drainer(proc.stderr, f"{name}-err")
    m = stdout.wait_for(READY_RE, PART_START_TIMEOUT, proc)
    if not m:
        _stop_process(proc)
        raise RuntimeError(
            f"{what} did not become READY within {PART_START_TIMEOUT}s.\n"
            f"stdout:\n{stdout.text()}\nstderr:\n{stderr.text()}"
        )
    return proc, stdout, stderr, int(m.group(1).rsplit(":", 1)[1])
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
        self.proc, self.stdout, self.stderr, self.port = start_ready_process(
            cmd, self.name, f"part {self.name} (port {self.port})"
        )

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


def _start_gateway(args: List[str], nodeid: str, env: Optional[Dict[str, str]] = None) -> Gateway:
    binary = partgate_bin()
    if not binary.exists():
        pytest.fail(f"partgate binary not found at {binary} (build it with `cargo build` or set PARTGATE_BIN)", pytrace=False)
    extra_env = env or {}
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    env.setdefault("RUST_LOG", "info")
    env.update(extra_env)
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


# --------------------------------------------------------------------------------------------
# Authentication and TLS (issue 3; docs/contracts.md "Authentication and TLS")
# --------------------------------------------------------------------------------------------

# A name that resolves nowhere: tests that need the SDK to *verify* the certificate map it to 127.0.0.1
# in-process (see test_auth_tls.py), because the SDK never verifies localhost / 127.x (see README).
AUTH_FQDN = "gateway.partgate.test"
SERVER_SANS = ["DNS:localhost", "IP:127.0.0.1", f"DNS:{AUTH_FQDN}"]


@dataclass
class TLSCerts:
    dir: Path
    ca: Path  # the throwaway CA that signed `cert`
    ca_key: Path
    cert: Path  # server cert: SAN DNS:localhost, IP:127.0.0.1, DNS:gateway.partgate.test
    key: Path
    other_ca: Path  # an unrelated CA (for "verification really happens" tests)
    other_ca_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=str(cwd), capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")


def make_ca(directory: Path, name: str) -> "tuple[Path, Path]":
    """A self-signed CA (EC P-256). Returns (ca.pem, ca.key)."""
    pem, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(pem), "-days", "2", "-subj", f"/CN=partgate interop {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return pem, key


def issue_server_cert(directory: Path, name: str, ca: Path, ca_key: Path, sans=SERVER_SANS) -> "tuple[Path, Path]":
    """A server cert (EC P-256, PKCS#8 key) for `sans`, signed by `ca`. Returns (cert.pem, key.pem)."""
    cert, key, csr, ext = (directory / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(
        f"subjectAltName={','.join(sans)}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory) -> TLSCerts:
    """Throwaway CA + server cert for localhost/127.0.0.1 (generated with the openssl CLI), plus an unrelated CA."""
    d = tmp_path_factory.mktemp("tls")
    ca, ca_key = make_ca(d, "ca")
    other_ca, other_ca_key = make_ca(d, "other-ca")
    cert, key = issue_server_cert(d, "server", ca, ca_key)
    return TLSCerts(dir=d, ca=ca, ca_key=ca_key, cert=cert, key=key, other_ca=other_ca, other_ca_key=other_ca_key)


@dataclass
class AuthConfig:
    """The credentials the auth fleet's gateway accepts."""

    old_secret: str = "old-location-secret-3f9a"
    new_secret: str = "new-location-secret-7c21"
    key_id: str = "0b7e4a52-6a55-4c8e-9d0f-2f4d2a7c1e01"  # api-key ids must be UUIDs for the Python SDK
    key: str = "full-access-api-key-5d3b9e"
    scoped_key_id: str = "6f1c9d3e-2b8a-4f7d-a1e5-9c4b7d2e8a10"
    scoped_key: str = "sub1-only-api-key-8e2a4c"
    scoped_parts: tuple = ("sub1",)
    fqdn: str = AUTH_FQDN


AUTH_FLEET_PARTS = ("main", "sub1", "sub2")


def part_names(part: str) -> set:
    """The gateway names of one FLEET_SPEC part's resources (main part: bare; others: `part:name`)."""
    spec = FLEET_SPEC[part]
    local = spec["motors"] + spec["sensors"] + spec["generics"]
    return set(local) if part == "main" else {f"{part}:{n}" for n in local}


def auth_fleet_names() -> set:
    return set().union(*(part_names(p) for p in AUTH_FLEET_PARTS))


def auth_gateway_config(parts: List[Part], certs: TLSCerts, auth: AuthConfig) -> dict:
    config = {
        "network": {
            "bind_address": "127.0.0.1:0",
            "fqdn": auth.fqdn,
            "tls_cert_file": str(certs.cert),
            "tls_key_file": str(certs.key),
        },
        "auth": {
            "handlers": [
                {"type": "robot-location-secret", "config": {"secrets": [auth.old_secret, auth.new_secret]}},
                {"type": "api-key", "config": {auth.key_id: auth.key, auth.scoped_key_id: auth.scoped_key}},
            ]
        },
        "remotes": [{"name": p.name, "address": p.address, "insecure": True} for p in parts],
        "gateway": {"main_part": "main", "api_key_parts": {auth.scoped_key_id: list(auth.scoped_parts)}},
    }
    if not set(auth.scoped_parts) <= {p.name for p in parts}:  # api_key_parts must name configured remotes
        del config["gateway"]["api_key_parts"]
    return config


@pytest.fixture
def gateway_from_config(request, tmp_path):
    """`make(config: dict, env=None) -> Gateway`: writes the config JSON as given and runs
    `partgate run --config` (extra `env` entries are added to the gateway's environment)."""
    started: List[Gateway] = []

    def make(config: dict, env: Optional[Dict[str, str]] = None) -> Gateway:
        path = tmp_path / f"partgate-cfg-{len(started)}.json"
        path.write_text(json.dumps(config, indent=2))
        gw = _start_gateway(["run", "--config", str(path)], request.node.nodeid, env=env)
        gw.config_path = path
        started.append(gw)
        return gw

    yield make
    for gw in started:
        _stop_process(gw.proc)
    _RUNNING_GATEWAYS.pop(request.node.nodeid, None)


@dataclass
class AuthFleet:
    gateway: Gateway
    parts: Dict[str, Part]
    certs: TLSCerts
    auth: AuthConfig

    @property
    def address(self) -> str:
        return self.gateway.address

    @property
    def port(self) -> int:
        return int(self.gateway.address.rsplit(":", 1)[1])

    @property
    def localhost(self) -> str:
        return f"localhost:{self.port}"


async def wait_until_listed_tls(address: str, secret: str, expected: set, deadline_s: float = 15.0) -> float:
    """Like wait_until_listed, over TLS with a location secret (SDK dial: Authenticate, then bearer token)."""
    import asyncio

    from viam.proto.robot import ResourceNamesRequest, RobotServiceStub
    from viam.rpc.dial import Credentials, dial

    t0 = time.monotonic()
    last: object = None
    chan = None
    try:
        while time.monotonic() - t0 < deadline_s:
            try:
                if chan is None:
                    opts = DialOptions(
                        credentials=Credentials(type="robot-location-secret", payload=secret),
                        disable_webrtc=True,
                        timeout=3,
                        initial_connection_attempts=1,
                    )
                    chan = await asyncio.wait_for(dial(address, opts), timeout=5)
                resp = await RobotServiceStub(chan.channel).ResourceNames(ResourceNamesRequest(), timeout=2)
                last = sorted(rn.name for rn in resp.resources)
                if expected <= set(last):
                    return time.monotonic() - t0
            except Exception as e:  # noqa: BLE001
                last = e
                if chan is not None:
                    chan.close()
                    chan = None
            await asyncio.sleep(0.2)
    finally:
        if chan is not None:
            chan.close()
    pytest.fail(
        f"TLS+auth gateway {address} never listed {sorted(expected)} within {deadline_s}s "
        f"(dialing with the location secret); last: {last!r}",
        pytrace=False,
    )


@pytest_asyncio.fixture
async def auth_fleet(part_factory, gateway_from_config, tls_certs) -> AuthFleet:
    """Python SDK parts main, sub1, sub2 behind a gateway that speaks TLS only and requires auth:
    robot-location-secret (two secrets: rotation), api-key (a full key and a key scoped to sub1).
    Yielded once the gateway lists every part's resources to a location-secret client."""
    auth = AuthConfig()
    parts = {name: part_factory(name, **FLEET_SPEC[name]) for name in AUTH_FLEET_PARTS}
    gw = gateway_from_config(auth_gateway_config(list(parts.values()), tls_certs, auth))
    fleet = AuthFleet(gateway=gw, parts=parts, certs=tls_certs, auth=auth)
    await wait_until_listed_tls(fleet.localhost, auth.new_secret, auth_fleet_names())
    return fleet


# --------------------------------------------------------------------------------------------
# Sessions and safety (issue 7)
# --------------------------------------------------------------------------------------------

# A client process: the official SDK connects to the gateway, drives motors with set_power (which
# starts a session and its heartbeat thread), prints `POWERED <session id>`, then idles until killed.
SESSION_CLIENT = r"""
import asyncio, sys
from viam.components.motor import Motor
from viam.robot.client import RobotClient
from viam.rpc.dial import DialOptions

async def main(address, names):
    opts = RobotClient.Options(
        dial_options=DialOptions(insecure=True, disable_webrtc=True, timeout=5, initial_connection_attempts=1),
        check_connection_interval=0,
        attempt_reconnect_interval=0,
    )
    robot = await asyncio.wait_for(RobotClient.at_address(address, opts), timeout=15)
    for name in names:
        await Motor.from_robot(robot, name).set_power(0.7, timeout=5)
    print("POWERED", robot._sessions_client._current_id, flush=True)
    while True:
        await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2].split(",")))
"""

POWERED_RE = re.compile(r"^POWERED (\S*)$")


@dataclass
class ClientProcess:
    proc: subprocess.Popen
    stdout: _Drainer
    stderr: _Drainer
    session_id: str


@pytest.fixture
def sdk_client_process():
    """`start(address, names) -> ClientProcess`: a separate Python process whose SDK client
    set_power()s the named motors through the gateway and then idles (heartbeating) until the
    test kills it by its PID. Processes still running at teardown are killed."""
    started: List[ClientProcess] = []

    def start(address: str, names: List[str]) -> ClientProcess:
        proc = subprocess.Popen(
            [sys.executable, "-c", SESSION_CLIENT, address, ",".join(names)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        out, err = _Drainer(proc.stdout, "client-out"), _Drainer(proc.stderr, "client-err")
        m = out.wait_for(POWERED_RE, 30.0, proc)
        if not m:
            _stop_process(proc)
            raise RuntimeError(f"client process never powered its motors.\nstdout:\n{out.text()}\nstderr:\n{err.text()}")
        client = ClientProcess(proc=proc, stdout=out, stderr=err, session_id=m.group(1))
        started.append(client)
        return client

    yield start
    for client in started:
        if client.proc.poll() is None:
            client.proc.kill()
            client.proc.wait(timeout=5)
