#!/usr/bin/env python3
"""A standalone Viam "part" built only from the official Python SDK's own server classes.

Usage:
    part_server.py --part NAME [--motors a,b] [--sensors x] [--generics g] [--port N]

Binds 127.0.0.1 (port 0 = the OS picks a free port, or the given --port, which is how the
interop tests restart a killed part on the same address), then prints exactly one line
`READY 127.0.0.1:<port>` on stdout (flushed) once it accepts connections.

Every resource answers DoCommand(cmd) with {"part": NAME, "name": <its own name>, "command": cmd}.
Sensors' GetReadings return {"part": NAME, "name": <name>, "value": 42}.
Motors keep state (power, position, is_moving) and record every call; DoCommand({"calls": true})
on a motor returns {"part", "name", "calls": [method names called so far]} instead.
"""

import argparse
import asyncio
import logging as pylogging
import signal
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

from grpclib.events import RecvRequest, listen

from viam import logging as viam_logging
from viam.components.generic import Generic
from viam.components.motor import Motor
from viam.components.sensor import Sensor
from viam.rpc.server import Server


def _split(value: Optional[str]) -> List[str]:
    if not value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


class FakeMotor(Motor):
    def __init__(self, name: str, part: str):
        super().__init__(name)
        self.part = part
        self.power = 0.0
        self.position = 0.0
        self.calls: List[str] = []

    def _record(self, method: str) -> None:
        self.calls.append(method)

    async def set_power(self, power: float, *, extra: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None, **kwargs):
        self._record("set_power")
        self.power = float(power)

    async def go_for(
        self, rpm: float, revolutions: float, *, extra: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None, **kwargs
    ):
        self._record("go_for")
        # Instantaneous simulated move: direction is sign(rpm) * sign(revolutions).
        direction = -1.0 if (rpm < 0) != (revolutions < 0) else 1.0
        self.position += direction * abs(revolutions)
        self.power = 0.0

    async def go_to(
        self, rpm: float, position_revolutions: float, *, extra: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None, **kwargs
    ):
        self._record("go_to")
        self.position = float(position_revolutions)
        self.power = 0.0

    async def set_rpm(self, rpm: float, *, extra: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None, **kwargs):
        self._record("set_rpm")
        # Treat rpm as a signed "moving" indicator; clamp to a power-like value.
        self.power = max(-1.0, min(1.0, float(rpm) / 100.0)) if rpm else 0.0

    async def reset_zero_position(
        self, offset: float, *, extra: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None, **kwargs
    ):
        self._record("reset_zero_position")
        self.position = -float(offset)

    async def get_position(self, *, extra: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None, **kwargs) -> float:
        self._record("get_position")
        return self.position

    async def get_properties(
        self, *, extra: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None, **kwargs
    ) -> Motor.Properties:
        self._record("get_properties")
        return Motor.Properties(position_reporting=True)

    async def stop(self, *, extra: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None, **kwargs):
        self._record("stop")
        self.power = 0.0

    async def is_powered(
        self, *, extra: Optional[Dict[str, Any]] = None, timeout: Optional[float] = None, **kwargs
    ) -> Tuple[bool, float]:
        self._record("is_powered")
        return (self.power != 0.0, self.power)

    async def is_moving(self) -> bool:
        self._record("is_moving")
        return self.power != 0.0

    async def do_command(self, command: Mapping[str, Any], *, timeout: Optional[float] = None, **kwargs) -> Mapping[str, Any]:
        if command.get("calls") is True:
            return {"part": self.part, "name": self.name, "calls": list(self.calls)}
        self._record("do_command")
        return {"part": self.part, "name": self.name, "command": dict(command)}


class FakeSensor(Sensor):
    def __init__(self, name: str, part: str):
        super().__init__(name)
        self.part = part

    async def get_readings(
        self, *, extra: Optional[Mapping[str, Any]] = None, timeout: Optional[float] = None, **kwargs
    ) -> Mapping[str, Any]:
        return {"part": self.part, "name": self.name, "value": 42}

    async def do_command(self, command: Mapping[str, Any], *, timeout: Optional[float] = None, **kwargs) -> Mapping[str, Any]:
        return {"part": self.part, "name": self.name, "command": dict(command)}


class FakeGeneric(Generic):
    def __init__(self, name: str, part: str):
        super().__init__(name)
        self.part = part

    async def do_command(self, command: Mapping[str, Any], *, timeout: Optional[float] = None, **kwargs) -> Mapping[str, Any]:
        return {"part": self.part, "name": self.name, "command": dict(command)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", required=True)
    parser.add_argument("--motors", default="")
    parser.add_argument("--sensors", default="")
    parser.add_argument("--generics", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--trace", action="store_true", help="print `CALL <method>` on stderr for every gRPC request")
    args = parser.parse_args()

    # The SDK logs INFO to stdout by default; keep stdout for the READY line.
    viam_logging.setLevel(getattr(pylogging, args.log_level.upper(), pylogging.WARNING))

    resources = (
        [FakeMotor(n, args.part) for n in _split(args.motors)]
        + [FakeSensor(n, args.part) for n in _split(args.sensors)]
        + [FakeGeneric(n, args.part) for n in _split(args.generics)]
    )
    server = Server(resources)
    grpc_server = server._server  # grpclib.server.Server built by the SDK (plain h2c over TCP)
    # Same request hook the SDK installs in Server.serve() (error logging / tracing wrapper).
    listen(grpc_server, RecvRequest, server._grpc_recvrequest_handler)
    if args.trace:

        async def _trace(event: RecvRequest) -> None:
            print(f"CALL {event.method_name}", file=sys.stderr, flush=True)

        listen(grpc_server, RecvRequest, _trace)

    # grpclib -> asyncio.loop.create_server: SO_REUSEADDR is set, so a restart on the same port works.
    await grpc_server.start(args.host, args.port)
    sockets = grpc_server._server.sockets if grpc_server._server is not None else []
    host, port = sockets[0].getsockname()[:2]
    print(f"READY {host}:{port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    grpc_server.close()
    try:
        await asyncio.wait_for(grpc_server.wait_closed(), timeout=2)
    except asyncio.TimeoutError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
