"""Sessions and safety through the gateway (issue 7), with the official Python SDK.

The SDK starts a session before its first safety-monitored call (SetPower), heartbeats it from a
thread every window/5 and sends `viam-sid` on monitored calls; the gateway owns those sessions.
The Python SDK parts have no sessions (UNIMPLEMENTED), so the gateway's own stop-on-expiry is what
stops a motor whose client vanished.
"""

import asyncio
import os
import signal
import time

from grpclib.client import Channel

from viam.components.motor import Motor
from viam.proto.robot import GetSessionsRequest, RobotServiceStub

from sdk_helpers import CALL_TIMEOUT

T = CALL_TIMEOUT
WINDOW_S = 2.0  # the gateway's heartbeat window


async def gateway_sessions(address: str) -> list:
    """Session ids GetSessions reports (all anonymous callers share one owner without auth)."""
    host, port = address.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        resp = await RobotServiceStub(channel).GetSessions(GetSessionsRequest(), timeout=T)
        return [s.id for s in resp.sessions]
    finally:
        channel.close()


async def calls_on(robot, name: str) -> list:
    res = await Motor.from_robot(robot, name).do_command({"calls": True}, timeout=T)
    return list(res["calls"])


async def test_sdk_session_machinery_works_through_the_gateway(fleet, connect):
    robot = await connect(fleet.address)
    motor = Motor.from_robot(robot, "sub1:motor1")
    await motor.set_power(0.5, timeout=T)
    sid = robot._sessions_client._current_id
    assert sid, "the SDK started a session with the gateway (StartSession answered)"
    assert sid in await gateway_sessions(fleet.address)
    # The heartbeat thread keeps it alive well past the window; the motor keeps running.
    await asyncio.sleep(WINDOW_S * 2)
    assert sid in await gateway_sessions(fleet.address)
    assert robot._sessions_client._current_id == sid, "no SESSION_EXPIRED reset happened"
    await motor.set_power(0.6, timeout=T)
    powered, power = await motor.is_powered(timeout=T)
    assert (powered, power) == (True, 0.6)
    assert "stop" not in await calls_on(robot, "sub1:motor1")
    # The parts never see the client's session id; they have no sessions of their own.
    assert any(c.endswith("RobotService/StartSession") for c in fleet.parts["sub1"].calls_seen())
    await motor.stop(timeout=T)


async def test_killing_the_client_process_stops_its_motors(fleet, connect, sdk_client_process):
    observer = await connect(fleet.address)
    await Motor.from_robot(observer, "wheel").set_power(0.3, timeout=T)  # driven by someone else
    client = sdk_client_process(fleet.address, ["sub1:motor1", "cell-m1"])
    assert client.session_id, "the client process started a session"
    for name in ["sub1:motor1", "cell-m1"]:
        assert await Motor.from_robot(observer, name).is_powered(timeout=T) == (True, 0.7)
    await asyncio.sleep(WINDOW_S)  # its heartbeats keep the motors running
    assert "stop" not in await calls_on(observer, "sub1:motor1")

    os.kill(client.proc.pid, signal.SIGKILL)
    client.proc.wait(timeout=5)
    killed = time.monotonic()
    stopped = {}
    while len(stopped) < 2 and time.monotonic() - killed < WINDOW_S + 3:
        for name in ["sub1:motor1", "cell-m1"]:
            if name not in stopped and "stop" in await calls_on(observer, name):
                stopped[name] = time.monotonic() - killed
        await asyncio.sleep(0.05)
    assert set(stopped) == {"sub1:motor1", "cell-m1"}, f"stopped: {stopped}"
    # Heartbeats were sent every window/5 until the kill: the stop lands within the window + margin.
    assert max(stopped.values()) <= WINDOW_S + 1.0, f"took {stopped}"
    for name in ["sub1:motor1", "cell-m1"]:
        assert await Motor.from_robot(observer, name).is_powered(timeout=T) == (False, 0.0)
    assert "stop" not in await calls_on(observer, "wheel")
    assert await Motor.from_robot(observer, "wheel").is_powered(timeout=T) == (True, 0.3)
    assert client.session_id not in await gateway_sessions(fleet.address)
