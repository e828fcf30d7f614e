"""Sanity checks of the harness itself: the official SDK client talking DIRECTLY to a
part_server.py process (no gateway). If these fail, the gateway tests' failures mean nothing."""

import asyncio

from grpclib import GRPCError, Status
from grpclib.exceptions import StreamTerminatedError

from viam.components.generic import Generic
from viam.components.motor import Motor, MotorClient
from viam.components.sensor import Sensor

from sdk_helpers import CALL_TIMEOUT as T
from sdk_helpers import assert_status, expect_grpc_error, names_of, poll_until, stop_all  # noqa: F401


async def test_sdk_client_against_part_directly(part_factory, connect):
    part = part_factory("sub1", motors=["motor1", "lift"], sensors=["imu"], generics=["gen1"])
    robot = await connect(part.address)
    assert names_of(robot) == {"motor1", "lift", "imu", "gen1"}

    m = Motor.from_robot(robot, "motor1")
    await m.set_power(0.5, timeout=T)
    assert await m.is_powered(timeout=T) == (True, 0.5)
    assert await m.is_moving() is True
    assert await Motor.from_robot(robot, "lift").is_powered(timeout=T) == (False, 0.0)

    res = await m.do_command({"x": 1}, timeout=T)
    assert res == {"part": "sub1", "name": "motor1", "command": {"x": 1}}
    res = await m.do_command({"calls": True}, timeout=T)
    assert res["calls"] == ["set_power", "is_powered", "is_moving", "do_command"]

    assert await Sensor.from_robot(robot, "imu").get_readings(timeout=T) == {"part": "sub1", "name": "imu", "value": 42}
    assert (await Generic.from_robot(robot, "gen1").do_command({"a": "b"}, timeout=T))["name"] == "gen1"

    await stop_all(robot)
    assert await m.is_powered(timeout=T) == (False, 0.0)
    assert "stop" in (await m.do_command({"calls": True}, timeout=T))["calls"]

    err, _ = await expect_grpc_error(MotorClient("nosuch", robot._channel).is_powered(timeout=T))
    assert_status(err, Status.NOT_FOUND, "direct: unknown motor")

    # The SDK called these on the part (connect = ResourceNames; SetPower is preceded by StartSession).
    seen = part.calls_seen()
    assert seen[0] == "/viam.robot.v1.RobotService/ResourceNames", seen
    assert "/viam.robot.v1.RobotService/StartSession" in seen, seen


async def test_part_restart_on_same_port(part_factory, connect):
    part = part_factory("sub1", motors=["motor1"])
    port = part.port
    robot = await connect(part.address)
    m = Motor.from_robot(robot, "motor1")
    await m.set_power(0.3, timeout=T)
    part.kill()
    # Direct to a dead server, grpclib (under the SDK) does NOT produce a gRPC status: the first call
    # raises StreamTerminatedError("Connection lost") (request raced the teardown) and later ones
    # ConnectionRefusedError (a plain OSError) when it redials.
    seen = []
    for _ in range(3):
        try:
            await asyncio.wait_for(m.is_powered(timeout=T), timeout=10)
            raise AssertionError("call to a killed part succeeded")
        except (StreamTerminatedError, ConnectionRefusedError, GRPCError) as e:
            seen.append(type(e).__name__)
    assert "ConnectionRefusedError" in seen, seen
    part.start()
    assert part.port == port
    (powered, _), _ = await poll_until(lambda: m.is_powered(timeout=2), deadline_s=10)
    assert powered is False
