"""The official Python SDK (viam-sdk) driving a fleet through the partgate gateway.

Fleet (see conftest.FLEET_SPEC): Python SDK parts `main` (main part), `sub1`, `sub2`, and `cell`
(prefix `cell-`), each a part_server.py process, behind `partgate run --config`.
"""

import asyncio

import pytest
from grpclib import Status

from viam.components.generic import Generic, GenericClient
from viam.components.motor import Motor, MotorClient
from viam.components.sensor import Sensor, SensorClient
from viam.errors import ResourceNotFoundError

from sdk_helpers import CALL_TIMEOUT, assert_status, describe, expect_grpc_error, names_of, poll_until, stop_all

T = CALL_TIMEOUT

FLEET_MOTORS = ["motor1", "wheel", "sub1:motor1", "sub1:lift", "sub1:solo", "sub2:lift", "cell-m1"]
FLEET_NAMES = {
    # main part: bare
    "motor1", "wheel", "temp", "gen1",
    # sub1 / sub2: "<remote>:<name>"
    "sub1:motor1", "sub1:lift", "sub1:solo", "sub1:imu", "sub1:gen1",
    "sub2:lift", "sub2:imu",
    # cell: prefix
    "cell-m1", "cell-temp",
}  # fmt: skip


async def calls_on(robot, name: str):
    """Methods the part behind `name` recorded on that motor (part_server.py's DoCommand {"calls": true})."""
    res = await Motor.from_robot(robot, name).do_command({"calls": True}, timeout=T)
    return res["part"], res["name"], list(res["calls"])


# ------------------------------------------------------------------------------------------
# Names
# ------------------------------------------------------------------------------------------


async def test_resource_names(fleet, connect):
    robot = await connect(fleet.address)
    names = names_of(robot)
    assert FLEET_NAMES <= names, f"missing: {sorted(FLEET_NAMES - names)}; got {sorted(names)}"
    # nothing but the contract's names (a bare `lift`/`imu`/`m1` must not be listed)
    assert names == FLEET_NAMES, f"unexpected extra names: {sorted(names - FLEET_NAMES)}"
    by_name = {(rn.subtype, rn.name) for rn in robot.resource_names}
    assert ("motor", "sub1:motor1") in by_name
    assert ("sensor", "cell-temp") in by_name
    assert ("generic", "sub1:gen1") in by_name
    for rn in robot.resource_names:
        if rn.subtype != "remote":
            assert (rn.namespace, rn.type) == ("rdk", "component"), rn


async def test_names_complete_right_after_listening(fleet_unready, connect):
    """A client that connects as soon as the gateway logs `listening on` must see the whole fleet:
    RobotClient fetches ResourceNames once at connect and (by default, refresh_interval=0) never again,
    so names missing at that moment stay missing for that client (from_robot raises)."""
    robot = await connect(fleet_unready.address)
    names = names_of(robot)
    assert FLEET_NAMES <= names, (
        f"first ResourceNames after `listening on` is incomplete: missing {sorted(FLEET_NAMES - names)}"
    )


async def test_demo_fleet(demo_gateway, connect):
    robot = await connect(demo_gateway.address)
    expected = {
        "motor1", "wheel", "temp", "gen1", "echo1",
        "sub1:motor1", "sub1:lift", "sub1:imu", "sub1:gen1",
        "sub2:lift", "sub2:imu",
        "cell-m1", "cell-temp",
    }  # fmt: skip  (docs/contracts.md)
    names = names_of(robot)
    assert expected <= names, f"missing {sorted(expected - names)}"
    extra = names - expected
    if extra:
        print(f"demo lists names beyond docs/contracts.md: {sorted(extra)}")
    # every extra name still follows the naming rules: no bare non-main names
    for n in extra:
        assert n.startswith(("sub1:", "sub2:", "cell-")), f"demo lists {n!r}, which is neither a main-part nor a qualified name"
    assert not {"lift", "imu", "m1"} & names

    res = await Motor.from_robot(robot, "sub1:motor1").do_command({"hello": "demo"}, timeout=T)
    assert (res["part"], res["name"], res["command"]) == ("sub1", "motor1", {"hello": "demo"})
    res = await Motor.from_robot(robot, "cell-m1").do_command({"x": 1}, timeout=T)
    assert (res["part"], res["name"]) == ("cell", "m1")
    res = await Generic.from_robot(robot, "gen1").do_command({}, timeout=T)
    assert (res["part"], res["name"]) == ("main", "gen1")

    m = Motor.from_robot(robot, "sub2:lift")
    await m.set_power(0.25, timeout=T)
    assert await m.is_powered(timeout=T) == (True, 0.25)
    assert await Motor.from_robot(robot, "sub1:lift").is_powered(timeout=T) == (False, 0.0)
    await stop_all(robot)
    assert await m.is_powered(timeout=T) == (False, 0.0)

    readings = await Sensor.from_robot(robot, "sub1:imu").get_readings(timeout=T)
    assert (readings["part"], readings["name"]) == ("sub1", "imu")
    assert isinstance(readings["value"], (int, float))

    err, _ = await expect_grpc_error(MotorClient("lift", robot._channel).is_powered(timeout=T))
    assert_status(err, Status.FAILED_PRECONDITION, "demo: bare ambiguous `lift`")


# ------------------------------------------------------------------------------------------
# Routing
# ------------------------------------------------------------------------------------------


async def test_set_power_reaches_only_the_named_part(fleet, connect):
    robot = await connect(fleet.address)
    sub1_motor = Motor.from_robot(robot, "sub1:motor1")
    await sub1_motor.set_power(0.5, timeout=T)
    assert await sub1_motor.is_powered(timeout=T) == (True, 0.5)
    assert await sub1_motor.is_moving() is True

    part, name, calls = await calls_on(robot, "sub1:motor1")
    assert (part, name) == ("sub1", "motor1")
    assert "set_power" in calls, calls

    # the main part's motor1 is untouched
    part, name, calls = await calls_on(robot, "motor1")
    assert (part, name) == ("main", "motor1")
    assert "set_power" not in calls, calls
    assert await Motor.from_robot(robot, "motor1").is_powered(timeout=T) == (False, 0.0)

    await sub1_motor.stop(timeout=T)
    assert await sub1_motor.is_powered(timeout=T) == (False, 0.0)


async def test_do_command_pops_prefix(fleet, connect):
    robot = await connect(fleet.address)
    cases = [
        (Motor, "sub1:motor1", "sub1", "motor1"),
        (Motor, "cell-m1", "cell", "m1"),
        (Motor, "motor1", "main", "motor1"),
        (Motor, "sub2:lift", "sub2", "lift"),
        (Generic, "gen1", "main", "gen1"),
        (Generic, "sub1:gen1", "sub1", "gen1"),
        (Sensor, "cell-temp", "cell", "temp"),
    ]
    for cls, gw_name, part, name in cases:
        cmd = {"probe": gw_name, "n": 3, "nested": {"list": [1, "two", True]}}
        res = await cls.from_robot(robot, gw_name).do_command(cmd, timeout=T)
        assert (res["part"], res["name"]) == (part, name), f"{gw_name}: {res}"
        assert res["command"] == cmd, f"{gw_name}: command not passed through intact: {res['command']}"


async def test_sensor_readings(fleet, connect):
    robot = await connect(fleet.address)
    for gw_name, part, name in [("temp", "main", "temp"), ("sub1:imu", "sub1", "imu"), ("sub2:imu", "sub2", "imu"), ("cell-temp", "cell", "temp")]:
        readings = await Sensor.from_robot(robot, gw_name).get_readings(timeout=T)
        assert readings == {"part": part, "name": name, "value": 42}, f"{gw_name}: {readings}"


async def test_motor_api_through_gateway(fleet, connect):
    """GoFor/GoTo/SetPower are 'safety heartbeat monitored': the SDK calls RobotService.StartSession
    on the gateway before the first of them (UNIMPLEMENTED is fine, any other error breaks the call)."""
    robot = await connect(fleet.address)
    m = Motor.from_robot(robot, "cell-m1")
    await m.go_for(60, 2, timeout=T)
    assert await m.get_position(timeout=T) == 2.0
    await m.go_to(60, -1.5, timeout=T)
    assert await m.get_position(timeout=T) == -1.5
    await m.reset_zero_position(0.5, timeout=T)
    assert await m.get_position(timeout=T) == -0.5
    props = await m.get_properties(timeout=T)
    assert props.position_reporting is True
    _, _, calls = await calls_on(robot, "cell-m1")
    assert calls[:6] == ["go_for", "get_position", "go_to", "get_position", "reset_zero_position", "get_position"], calls


# ------------------------------------------------------------------------------------------
# Bare names, ambiguity, unknown names (clients built directly: see the SDK note below)
# ------------------------------------------------------------------------------------------


async def test_bare_name_unique_to_one_non_main_part(fleet, connect):
    robot = await connect(fleet.address)
    # Sent to the gateway exactly as `solo` (bypassing the SDK's own client-side short-name lookup).
    solo = MotorClient("solo", robot._channel)
    res = await solo.do_command({"bare": True}, timeout=T)
    assert (res["part"], res["name"]) == ("sub1", "solo")
    await solo.set_power(-0.3, timeout=T)
    assert await Motor.from_robot(robot, "sub1:solo").is_powered(timeout=T) == (True, -0.3)
    # The SDK's from_robot also accepts it (resolved client-side to `sub1:solo`).
    assert await Motor.from_robot(robot, "solo").is_powered(timeout=T) == (True, -0.3)


async def test_bare_name_main_part_wins(fleet, connect):
    robot = await connect(fleet.address)
    res = await MotorClient("motor1", robot._channel).do_command({}, timeout=T)
    assert (res["part"], res["name"]) == ("main", "motor1")
    res = await GenericClient("gen1", robot._channel).do_command({}, timeout=T)
    assert (res["part"], res["name"]) == ("main", "gen1")


async def test_ambiguous_bare_name_is_failed_precondition(fleet, connect):
    robot = await connect(fleet.address)
    lift = MotorClient("lift", robot._channel)  # sub1:lift and sub2:lift
    for what, call in [
        ("MotorService/IsPowered lift", lift.is_powered(timeout=T)),
        ("MotorService/SetPower lift", lift.set_power(1.0, timeout=T)),
        ("MotorService/DoCommand lift", lift.do_command({}, timeout=T)),
        ("SensorService/GetReadings imu", SensorClient("imu", robot._channel).get_readings(timeout=T)),
    ]:
        err, _ = await expect_grpc_error(call)
        assert_status(err, Status.FAILED_PRECONDITION, what)
    # and nothing moved
    for name in ["sub1:lift", "sub2:lift"]:
        assert await Motor.from_robot(robot, name).is_powered(timeout=T) == (False, 0.0)
        _, _, calls = await calls_on(robot, name)
        assert "set_power" not in calls, (name, calls)


async def test_unknown_name_is_not_found(fleet, connect):
    robot = await connect(fleet.address)
    for name in ["nosuch", "sub1:nosuch", "nopart:motor1", "cell-nosuch"]:
        err, _ = await expect_grpc_error(MotorClient(name, robot._channel).is_powered(timeout=T))
        assert_status(err, Status.NOT_FOUND, f"MotorService/IsPowered {name!r}")


async def test_sdk_resolves_short_names_client_side(fleet, connect):
    """Documents SDK behaviour: RobotClient keeps a client-side map short name -> `remote:name`,
    so from_robot("solo") works and from_robot("lift") (ambiguous) fails locally without any RPC."""
    robot = await connect(fleet.address)
    assert Motor.from_robot(robot, "solo").name == "sub1:solo"
    with pytest.raises(ResourceNotFoundError):
        Motor.from_robot(robot, "lift")
    with pytest.raises(ResourceNotFoundError):
        Motor.from_robot(robot, "nosuch")


# ------------------------------------------------------------------------------------------
# StopAll
# ------------------------------------------------------------------------------------------


async def test_stop_all_reaches_every_part(fleet, connect):
    robot = await connect(fleet.address)
    for i, name in enumerate(FLEET_MOTORS):
        await Motor.from_robot(robot, name).set_power(0.1 * (i + 1), timeout=T)
    for name in FLEET_MOTORS:
        powered, _ = await Motor.from_robot(robot, name).is_powered(timeout=T)
        assert powered, name

    await stop_all(robot)

    for name in FLEET_MOTORS:
        assert await Motor.from_robot(robot, name).is_powered(timeout=T) == (False, 0.0), name
        _, _, calls = await calls_on(robot, name)
        assert "stop" in calls, f"{name}: StopAll did not call stop() on it: {calls}"
    for part in fleet.parts.values():
        assert "/viam.robot.v1.RobotService/StopAll" in part.calls_seen() or any(
            c.endswith("MotorService/Stop") for c in part.calls_seen()
        ), f"part {part.name} saw neither StopAll nor Stop: {part.calls_seen()}"


# ------------------------------------------------------------------------------------------
# A part dies and comes back
# ------------------------------------------------------------------------------------------


async def test_dead_part_fails_fast_and_recovers(fleet, connect):
    robot = await connect(fleet.address)
    channel = robot._channel
    sub1 = fleet.parts["sub1"]
    port = sub1.port
    m_sub1 = Motor.from_robot(robot, "sub1:motor1")
    await m_sub1.set_power(0.7, timeout=T)
    assert await m_sub1.is_powered(timeout=T) == (True, 0.7)

    sub1.kill()  # SIGKILL: a crash, no goodbye

    # names stay listed
    await asyncio.wait_for(robot.refresh(), timeout=T)
    names = names_of(robot)
    assert {"sub1:motor1", "sub1:lift", "sub1:imu", "sub1:gen1"} <= names, sorted(names)
    from viam.proto.robot import ResourceNamesRequest

    resp = await robot._client.ResourceNames(ResourceNamesRequest(), timeout=T)
    assert "sub1:motor1" in {rn.name for rn in resp.resources}

    # calls to it fail fast with UNAVAILABLE (each of several calls, including the first)
    for what, call in [
        ("IsPowered sub1:motor1", m_sub1.is_powered(timeout=T)),
        ("DoCommand sub1:motor1", m_sub1.do_command({}, timeout=T)),
        ("GetReadings sub1:imu", Sensor.from_robot(robot, "sub1:imu").get_readings(timeout=T)),
        ("SetPower sub1:motor1", m_sub1.set_power(0.1, timeout=T)),
    ]:
        err, took = await expect_grpc_error(call)
        assert_status(err, Status.UNAVAILABLE, f"{what} with sub1 dead")
        assert took < 2.5, f"{what}: took {took:.2f}s to fail (want < ~2s); {describe(err)}"
        print(f"{what}: {describe(err)} after {took:.3f}s")

    # the other parts still work, over the same client
    assert await Motor.from_robot(robot, "motor1").is_powered(timeout=T) == (False, 0.0)
    res = await Motor.from_robot(robot, "cell-m1").do_command({}, timeout=T)
    assert res["part"] == "cell"
    assert (await Sensor.from_robot(robot, "sub2:imu").get_readings(timeout=T))["part"] == "sub2"

    # StopAll with a dead part: must not hang; other parts must still be stopped
    await Motor.from_robot(robot, "sub2:lift").set_power(0.4, timeout=T)
    try:
        await stop_all(robot, timeout=10)
    except Exception as e:  # an error naming the dead part is acceptable
        print(f"stop_all with a dead part raised: {e!r}")
    assert await Motor.from_robot(robot, "sub2:lift").is_powered(timeout=T) == (False, 0.0)

    # restart on the SAME port: calls recover without the client reconnecting
    sub1.start()
    assert sub1.port == port

    async def probe():
        return await m_sub1.do_command({"after": "restart"}, timeout=2)

    res, waited = await poll_until(probe, deadline_s=10)
    print(f"sub1 calls recovered {waited:.2f}s after restart")
    assert (res["part"], res["name"]) == ("sub1", "motor1")
    assert await m_sub1.is_powered(timeout=T) == (False, 0.0)  # fresh process, fresh state
    await m_sub1.set_power(0.2, timeout=T)
    assert await m_sub1.is_powered(timeout=T) == (True, 0.2)
    assert robot._channel is channel, "client channel was replaced (the client reconnected)"
