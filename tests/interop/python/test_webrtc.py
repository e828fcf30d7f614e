"""Issue 4 interop: the official Python SDK over WebRTC, inside a loopback-only network namespace.

Each case of `netns_webrtc_cases.py` runs in its own pytest process inside a fresh network
namespace (`ip netns add`, only `lo` up, its own /etc/hosts), so the SDK's mDNS and STUN packets
cannot leave the machine. The namespace is removed afterwards, whatever happened. Needs root and
iproute2 (`.ci/run` installs it); without them the cases are skipped locally and fail under CI.
"""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CASES = HERE / "netns_webrtc_cases.py"
HOSTS = ["gateway.partgate.test", "plain.partgate.test", "unlisted.partgate.test"]
CASE_NAMES = [
    "test_sdk_over_webrtc_with_verified_tls_and_location_secret",
    "test_several_sdk_clients_over_webrtc_at_once",
    "test_unlisted_host_falls_back_to_direct_and_counters_stay_flat",
    "test_listed_extra_host_uses_webrtc",
]


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")


@pytest.fixture
def netns():
    """A fresh namespace with only loopback and an /etc/hosts that maps the test names to 127.0.0.1."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        why = "network namespaces need root and iproute2"
        if os.environ.get("CI") or os.environ.get("PARTGATE_REQUIRE_NETNS") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    name = f"partgate-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    etc = Path("/etc/netns") / name
    _ip("netns", "add", name)
    try:
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text("127.0.0.1 localhost " + " ".join(HOSTS) + "\n::1 localhost\n")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        links = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link"], capture_output=True, text=True, timeout=10)
        assert [ln.split(":")[1].strip() for ln in links.stdout.splitlines()] == ["lo"], links.stdout
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        shutil.rmtree(etc, ignore_errors=True)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_python_sdk_over_webrtc(netns, case):
    env = dict(os.environ, PARTGATE_IN_NETNS="1")
    cmd = [
        "ip", "netns", "exec", netns,
        sys.executable, "-m", "pytest", f"{CASES}::{case}", "-q", "-p", "no:cacheprovider",
        "--rootdir", str(HERE), "-c", str(HERE / "pytest.ini"),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env, cwd=str(HERE))
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "1 passed" in out, f"{case} inside {netns} (exit {res.returncode}):\n{out[-6000:]}"
