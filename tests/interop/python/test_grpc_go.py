"""A real grpc-go server as a part, through the gateway (issue 26).

grpc-go is what viam-server is built on. Its server ends a client stream's `Recv()` with io.EOF
only when END_STREAM arrives on a DATA frame: a stream whose end comes as END_STREAM on the
HEADERS frame (legal HTTP/2, and what a client stream with no message may look like) leaves the
handler blocked in `Recv()` for good (grpc-go 1.33, Debian's; `internal/transport/http2_server.go`
marks the stream read-done without waking the reader). The gateway once forwarded such a stream
that way, so the call hung. It now ends every forwarded request body with an empty DATA frame
carrying END_STREAM. These tests prove it against grpc-go itself.

The part is tests/interop/go/part/main.go, built by `scripts/go-part build` into
target/tools/go-part (GO_PART_BIN overrides the path). Without it these tests skip, except when
the environment variable CI is set: there a missing binary fails, because CI must build it.

The client is a raw HTTP/2 client (the `h2` package grpclib uses, driven by hand over a socket),
so each test chooses the exact frames of its request; every test checks the frames it wrote.
Every call carries `grpc-timeout: 5S` and has an 8 s client deadline, so a regression fails
(DEADLINE_EXCEEDED from the gateway, or no answer) instead of hanging.
"""

import asyncio
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h2.config
import h2.connection
import h2.events
import pytest
import pytest_asyncio
from hyperframe.frame import DataFrame, Frame, HeadersFrame

from viam.gen.component.testecho.v1 import testecho_pb2
from viam.proto.common import DoCommandRequest, DoCommandResponse
from viam.proto.robot import TunnelRequest, TunnelResponse
from viam.utils import dict_to_struct, struct_to_dict

import conftest
from conftest import REPO, Gateway, _Drainer, _stop_process, start_ready_process, wait_until_listed

GO_PART_BIN = Path(os.environ.get("GO_PART_BIN", str(REPO / "target" / "tools" / "go-part")))

TUNNEL = "/viam.robot.v1.RobotService/Tunnel"  # bidi; forwarded untouched to the main part
ECHO_BIDI = "/viam.component.testecho.v1.TestEchoService/EchoBiDi"  # bidi; routed by name
DO_COMMAND = "/viam.component.generic.v1.GenericService/DoCommand"  # unary; routed by name

GRPC_TIMEOUT = "5S"  # sent on every call: the gateway enforces it and forwards it to the part
CLIENT_DEADLINE = 8.0  # the test's own bound on every call
# How long a call straight to the part is given to show it hangs (no answer at all).
HANG_WINDOW = 2.0

# Request shapes: how the request body's end is framed.
#   "es-on-empty-data": HEADERS, one DATA per message, then an empty DATA with END_STREAM, in one write
#   "es-on-empty-data-later": the same, with the empty DATA written 300 ms after the rest
#   "es-on-headers": HEADERS with END_STREAM (no message only)
#   "es-on-last-data": END_STREAM on the last message's DATA (what unary clients send)
SHAPES = ("es-on-empty-data", "es-on-empty-data-later", "es-on-headers", "es-on-last-data")


# --------------------------------------------------------------------------------------------
# The grpc-go part
# --------------------------------------------------------------------------------------------


@dataclass
class GoPart:
    name: str
    port: int = 0
    proc: Optional[subprocess.Popen] = None
    stdout: Optional[_Drainer] = None
    stderr: Optional[_Drainer] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc, self.stdout, self.stderr, self.port = start_ready_process(
            [str(GO_PART_BIN), "-port", str(self.port)], self.name, f"go part {self.name}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)

    def calls_seen(self) -> List[str]:
        """`/pkg.Service/Method messages=N` for every call the part answered (its stderr)."""
        text = self.stderr.text() if self.stderr else ""
        return [ln[5:] for ln in text.splitlines() if ln.startswith("CALL ")]


@pytest.fixture
def go_part_bin() -> Path:
    if not GO_PART_BIN.is_file():
        reason = f"go-part not found at {GO_PART_BIN}: run `scripts/go-part build` (or set GO_PART_BIN)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must build it before the tests", pytrace=False)
        pytest.skip(reason)
    return GO_PART_BIN


@pytest.fixture
def go_part_factory(request, go_part_bin):
    parts: List[GoPart] = []
    # conftest's report hook lists each part's received calls under a failing test.
    conftest._RUNNING_PARTS[request.node.nodeid] = parts  # type: ignore[assignment]

    def make(name: str) -> GoPart:
        p = GoPart(name)
        parts.append(p)
        p.start()
        return p

    yield make
    for p in parts:
        p.stop()
    conftest._RUNNING_PARTS.pop(request.node.nodeid, None)


@dataclass
class GoFleet:
    gateway: Gateway
    main: GoPart
    sub: GoPart

    @property
    def address(self) -> str:
        return self.gateway.address


GO_NAMES = {"m1", "gen1", "echo1", "gosub:m1", "gosub:gen1", "gosub:echo1"}


@pytest_asyncio.fixture
async def go_fleet(go_part_factory, gateway_from_config) -> GoFleet:
    """Two grpc-go parts behind `partgate run`: `gomain` (the main part: bare names, and the
    RobotService methods the gateway does not answer itself) and `gosub` (`gosub:name`),
    yielded once the gateway lists both parts' resources (each has passed a health check)."""
    main, sub = go_part_factory("gomain"), go_part_factory("gosub")
    gw = gateway_from_config(
        {
            "network": {"bind_address": "127.0.0.1:0"},
            "remotes": [{"name": p.name, "address": p.address, "insecure": True} for p in (main, sub)],
            "gateway": {"main_part": "gomain"},
        }
    )
    await wait_until_listed(gw.address, GO_NAMES)
    return GoFleet(gateway=gw, main=main, sub=sub)


# --------------------------------------------------------------------------------------------
# A raw HTTP/2 gRPC client
# --------------------------------------------------------------------------------------------


@dataclass
class Sent:
    """One frame this client wrote on the call's stream, read back from the bytes it wrote."""

    kind: str  # "HEADERS" or "DATA"
    length: int
    end_stream: bool

    def __str__(self) -> str:
        return f"{self.kind}(len={self.length}{', END_STREAM' if self.end_stream else ''})"


@dataclass
class Result:
    sent: List[Sent] = field(default_factory=list)
    headers: Dict[str, str] = field(default_factory=dict)
    messages: List[bytes] = field(default_factory=list)
    trailers: Dict[str, str] = field(default_factory=dict)
    reset: Optional[int] = None  # RST_STREAM code from the server
    ended: bool = False  # the response ended (END_STREAM or reset)
    elapsed: float = 0.0

    @property
    def grpc_status(self) -> Optional[str]:
        # A trailers-only response carries grpc-status in its (only) header block.
        return self.trailers.get("grpc-status", self.headers.get("grpc-status"))

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))

    def describe(self) -> str:
        return (
            f"sent {[str(s) for s in self.sent]}; after {self.elapsed:.2f}s: ended={self.ended} "
            f"headers={self.headers} messages={self.messages} trailers={self.trailers} reset={self.reset}"
        )


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def split_grpc(body: bytes) -> List[bytes]:
    out = []
    while body:
        assert len(body) >= 5 and body[0] == 0, f"not an uncompressed gRPC frame: {body[:16]!r}"
        n = int.from_bytes(body[1:5], "big")
        assert len(body) >= 5 + n, f"truncated gRPC message: {body!r}"
        out.append(body[5 : 5 + n])
        body = body[5 + n :]
    return out


def frames_on(stream_id: int, wire: bytes) -> List[Sent]:
    """The HEADERS and DATA frames on `stream_id` in bytes this client wrote (after the preface)."""
    out = []
    while len(wire) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(wire[:9]))
        if len(wire) < 9 + length:
            break
        frame.parse_body(memoryview(wire[9 : 9 + length]))
        wire = wire[9 + length :]
        if frame.stream_id != stream_id:
            continue
        if isinstance(frame, HeadersFrame):
            out.append(Sent("HEADERS", length, "END_STREAM" in frame.flags))
        elif isinstance(frame, DataFrame):
            out.append(Sent("DATA", length, "END_STREAM" in frame.flags))
    return out


def call(
    address: str,
    path: str,
    messages: List[bytes],
    shape: str,
    deadline: float = CLIENT_DEADLINE,
    grpc_timeout: Optional[str] = GRPC_TIMEOUT,
) -> Result:
    """One gRPC call on a fresh h2c connection, its request framed as `shape` (see SHAPES).
    Returns what came back within `deadline` seconds (blocking: run it in a thread)."""
    assert shape in SHAPES, shape
    assert shape != "es-on-headers" or not messages, "END_STREAM on HEADERS leaves no room for a message"
    assert shape != "es-on-last-data" or messages, "no DATA frame to carry END_STREAM"
    host, port = address.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    result = Result()
    wrote = bytearray()
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=deadline) as sock:

        def flush() -> None:
            data = conn.data_to_send()
            if data:
                wrote.extend(data)
                sock.sendall(data)

        conn.initiate_connection()
        flush()
        sid = conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", address),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if grpc_timeout:
            headers.append(("grpc-timeout", grpc_timeout))
        conn.send_headers(sid, headers, end_stream=shape == "es-on-headers")
        for i, m in enumerate(messages):
            conn.send_data(sid, grpc_frame(m), end_stream=shape == "es-on-last-data" and i == len(messages) - 1)
        if shape == "es-on-empty-data-later":
            flush()
            time.sleep(0.3)
        if shape.startswith("es-on-empty-data"):
            conn.send_data(sid, b"", end_stream=True)
        flush()

        body = bytearray()
        while not result.ended:
            remaining = deadline - (time.monotonic() - t0)
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    result.headers = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body.extend(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    result.trailers = dict(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    result.ended = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    result.reset, result.ended = int(ev.error_code), True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    result.ended = True
            flush()
        result.elapsed = time.monotonic() - t0
        result.messages = split_grpc(bytes(body))
    # The frames that really went out on the call's stream (the 24-byte preface first).
    result.sent = frames_on(sid, bytes(wrote[24:]))
    return result


def expected_frames(n_messages: int, shape: str) -> List[Tuple[str, bool]]:
    """(kind, END_STREAM) of each frame `call` must have written for this shape."""
    if shape == "es-on-headers":
        return [("HEADERS", True)]
    frames = [("HEADERS", False)] + [("DATA", shape == "es-on-last-data" and i == n_messages - 1) for i in range(n_messages)]
    if shape.startswith("es-on-empty-data"):
        frames.append(("DATA", True))
    return frames


def check_sent(result: Result, n_messages: int, shape: str) -> None:
    """The request really had the shape under test: the client library is not trusted blindly."""
    got = [(s.kind, s.end_stream) for s in result.sent]
    assert got == expected_frames(n_messages, shape), f"the client wrote another shape than {shape}: {result.describe()}"
    if shape.startswith("es-on-empty-data"):
        assert result.sent[-1].length == 0, result.describe()


async def acall(*args, **kwargs) -> Result:
    return await asyncio.to_thread(call, *args, **kwargs)


def tunnel_request(data: bytes) -> bytes:
    return TunnelRequest(destination_port=0, data=data).SerializeToString()


def tunnel_answer(result: Result) -> bytes:
    assert result.ended and result.grpc_status == "0", f"call did not end OK: {result.describe()}"
    assert len(result.messages) == 1, result.describe()
    return TunnelResponse.FromString(result.messages[0]).data


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


async def test_grpc_go_itself_never_ends_recv_on_end_stream_in_headers(go_part_factory):
    """The premise, straight to the part (no gateway): grpc-go answers a zero-message client
    stream that ends with an empty DATA frame, and never answers one that ends with END_STREAM on
    its HEADERS. This is what makes the gateway tests below able to fail: a gateway that forwarded
    the second shape would hang them. If a newer grpc-go answers both, this test says so."""
    part = go_part_factory("direct")

    ok = await acall(part.address, TUNNEL, [], "es-on-empty-data", grpc_timeout=None)
    check_sent(ok, 0, "es-on-empty-data")
    assert tunnel_answer(ok) == f"go-part {part.port}: 0 messages: ".encode(), ok.describe()

    hung = await acall(part.address, TUNNEL, [], "es-on-headers", deadline=HANG_WINDOW, grpc_timeout=None)
    check_sent(hung, 0, "es-on-headers")
    assert not hung.ended and not hung.headers and not hung.messages, (
        f"grpc-go answered a stream ended by END_STREAM on HEADERS (fixed in this grpc-go?): {hung.describe()}"
    )
    assert part.calls_seen() == [f"{TUNNEL} messages=0"], part.calls_seen()


@pytest.mark.parametrize("shape", ["es-on-empty-data", "es-on-empty-data-later", "es-on-headers"])
async def test_zero_message_client_stream_through_gateway(go_fleet, shape):
    """A client stream with no message completes OK with grpc-go's answer, however the client
    frames its end: the gateway always forwards HEADERS + an empty DATA frame with END_STREAM
    (including for a client that put END_STREAM on its HEADERS, which grpc-go alone would hang on)."""
    result = await acall(go_fleet.address, TUNNEL, [], shape)
    check_sent(result, 0, shape)
    # Forwarded to the main part (its port is in the answer), which saw no message.
    assert tunnel_answer(result) == f"go-part {go_fleet.main.port}: 0 messages: ".encode(), result.describe()
    assert result.trailers.get("go-part-messages") == "0", result.describe()
    assert result.elapsed < 4.0, f"took {result.elapsed:.2f}s: {result.describe()}"
    assert go_fleet.main.calls_seen().count(f"{TUNNEL} messages=0") == 1, go_fleet.main.calls_seen()
    assert not any(c.startswith(TUNNEL) for c in go_fleet.sub.calls_seen()), go_fleet.sub.calls_seen()


@pytest.mark.parametrize("shape", ["es-on-empty-data", "es-on-last-data"])
async def test_three_message_client_streams_through_gateway(go_fleet, shape):
    """For contrast, streams with three messages: forwarded untouched to the main part (Tunnel),
    and routed by name to `gosub` (EchoBiDi on `gosub:echo1`, the name rewritten to `echo1` in
    every message: the part rejects a stream whose messages name different resources)."""
    data = [b"alpha", b"\x00\x01binary", b"gamma" * 1000]
    tunnel = await acall(go_fleet.address, TUNNEL, [tunnel_request(d) for d in data], shape)
    check_sent(tunnel, 3, shape)
    expected = f"go-part {go_fleet.main.port}: 3 messages: ".encode() + b"|".join(data)
    assert tunnel_answer(tunnel) == expected, tunnel.describe()
    assert tunnel.trailers.get("go-part-messages") == "3", tunnel.describe()

    words = ["one", "two", "three"]
    echo = await acall(
        go_fleet.address,
        ECHO_BIDI,
        [testecho_pb2.EchoBiDiRequest(name="gosub:echo1", message=w).SerializeToString() for w in words],
        shape,
    )
    check_sent(echo, 3, shape)
    assert echo.ended and echo.grpc_status == "0", echo.describe()
    assert [testecho_pb2.EchoBiDiResponse.FromString(m).message for m in echo.messages] == ["echo1 got 3: one,two,three"]
    assert f"{ECHO_BIDI} messages=3" in go_fleet.sub.calls_seen(), go_fleet.sub.calls_seen()
    assert not any(c.startswith(ECHO_BIDI) for c in go_fleet.main.calls_seen()), go_fleet.main.calls_seen()


@pytest.mark.parametrize("name, part, local", [("gen1", "gomain", "gen1"), ("gosub:gen1", "gosub", "gen1")])
async def test_unary_call_through_gateway(go_fleet, name, part, local):
    """A unary DoCommand, routed by name to the grpc-go part that owns it, answered OK with the
    part's struct (the name it received, the command intact)."""
    command = {"action": "spin", "speed": 0.5, "nested": {"list": [1, "two", True]}}
    req = DoCommandRequest(name=name, command=dict_to_struct(command)).SerializeToString()
    result = await acall(go_fleet.address, DO_COMMAND, [req], "es-on-last-data")
    check_sent(result, 1, "es-on-last-data")
    assert result.ended and result.grpc_status == "0", result.describe()
    assert len(result.messages) == 1, result.describe()
    answer = struct_to_dict(DoCommandResponse.FromString(result.messages[0]).result)
    assert answer["part"] == "go-part" and answer["name"] == local, answer
    assert answer["command"] == command, answer
    assert re.fullmatch(r"\d+\.\d+\.\d+", answer["grpc_go"]), answer
    owner = go_fleet.main if part == "gomain" else go_fleet.sub
    other = go_fleet.sub if part == "gomain" else go_fleet.main
    assert owner.calls_seen().count(f"{DO_COMMAND} messages=1") == 1, owner.calls_seen()
    assert not any(c.startswith(DO_COMMAND) for c in other.calls_seen()), other.calls_seen()


async def test_health_checks_reach_grpc_go(go_fleet):
    """The gateway marked both parts up from grpc-go's ResourceNames and ResourceRPCSubtypes
    (the fixture waited for the listing), and routes by their APIs: a bare `echo1` on
    TestEchoService is the main part's."""
    for p in (go_fleet.main, go_fleet.sub):
        seen = p.calls_seen()
        assert "/viam.robot.v1.RobotService/ResourceNames messages=1" in seen, (p.name, seen)
        assert "/viam.robot.v1.RobotService/ResourceRPCSubtypes messages=1" in seen, (p.name, seen)
    req = testecho_pb2.EchoBiDiRequest(name="echo1", message="bare").SerializeToString()
    result = await acall(go_fleet.address, ECHO_BIDI, [req], "es-on-empty-data")
    assert result.ended and result.grpc_status == "0", result.describe()
    assert [testecho_pb2.EchoBiDiResponse.FromString(m).message for m in result.messages] == ["echo1 got 1: bare"]
    assert f"{ECHO_BIDI} messages=1" in go_fleet.main.calls_seen(), go_fleet.main.calls_seen()
