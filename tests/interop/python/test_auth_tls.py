"""Issue 3 interop: the official Python SDK against a gateway that speaks TLS only and requires auth.

"The official Python SDK connects over TLS with a location secret and with an API key and drives
components through the gateway; a wrong secret fails to connect with UNAUTHENTICATED."

Fixture `auth_fleet` (conftest.py): Python SDK parts main, sub1, sub2 behind `partgate run` with
`network.tls_cert_file/tls_key_file` (a throwaway CA made with the openssl CLI), a
`robot-location-secret` handler with two secrets (rotation), an `api-key` handler with two keys, and
`gateway.api_key_parts` limiting the second key to `sub1`.

SDK facts these tests rely on (viam-sdk 0.85.1, viam/rpc/dial.py):
- With `insecure=False` (the default) the SDK dials TLS. For hosts starting with `localhost`, `127.`
  or `0.0.0.0` it uses `ssl._create_unverified_context()` (no chain or hostname check at all); for any
  other host `ssl.create_default_context()`, i.e. the system store, which honours `SSL_CERT_FILE`
  (read at each dial). ALPN offered: `h2` only. Before connecting it does a blocking probe handshake
  (TCP connect + TLS handshake + close) to decide on an insecure downgrade.
- With credentials it calls `proto.rpc.v1.AuthService/Authenticate` (no timeout!) with
  `entity = auth_entity or the address as given` (e.g. `localhost:PORT`), then sends
  `authorization: Bearer <token>` on every call. `with_api_key` sets `auth_entity = api_key_id`.
  For non-api-key credentials with an `auth_entity` different from the host, the TLS server name
  (SNI + verification) becomes `auth_entity`.
- An Authenticate failure propagates out of `RobotClient.at_address` as the raw `GRPCError`;
  a failure of the first ResourceNames (e.g. no credentials) is re-raised as
  `ConnectionError("Unable to establish a connection to the machine.")` with the GRPCError
  as `__context__` (implicit chaining, not `__cause__`).
"""

import asyncio
import dataclasses
import os
import socket
import ssl
import time
from typing import List, Optional

import pytest
from grpclib import GRPCError, Status
from grpclib.client import Channel

from viam.components.motor import Motor, MotorClient
from viam.components.sensor import Sensor, SensorClient
from viam.errors import ResourceNotFoundError
from viam.proto.robot import ResourceNamesRequest, RobotServiceStub
from viam.proto.rpc.auth import AuthenticateRequest, AuthServiceStub
from viam.proto.rpc.auth import Credentials as PBCredentials
from viam.robot.client import RobotClient
from viam.rpc.dial import Credentials, DialOptions, dial

from conftest import (
    AUTH_FQDN,
    FLEET_SPEC,
    AuthConfig,
    AuthFleet,
    auth_gateway_config,
    issue_server_cert,
    part_names,
    wait_until_listed_tls,
)
from sdk_helpers import CALL_TIMEOUT, assert_status, describe, expect_grpc_error, names_of, poll_until

T = CALL_TIMEOUT
CONNECT_TIMEOUT = 15.0  # outer cap on RobotClient.at_address (its Authenticate has no timeout)
LOCATION_SECRET = "robot-location-secret"


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def _robot_options(dial_options: DialOptions) -> RobotClient.Options:
    # No background connection checks / reconnects: a test sees exactly the calls it makes.
    return RobotClient.Options(dial_options=dial_options, check_connection_interval=0, attempt_reconnect_interval=0)


def secret_options(secret: str, *, auth_entity: Optional[str] = None, insecure: bool = False) -> RobotClient.Options:
    return _robot_options(
        DialOptions(
            credentials=Credentials(type=LOCATION_SECRET, payload=secret),
            auth_entity=auth_entity,
            insecure=insecure,
            disable_webrtc=True,
            timeout=5,
            initial_connection_attempts=1,
        )
    )


def api_key_options(key: str, key_id: str) -> RobotClient.Options:
    """Exactly what users write (`RobotClient.Options.with_api_key`), plus direct gRPC (no WebRTC)."""
    opts = RobotClient.Options.with_api_key(api_key=key, api_key_id=key_id, check_connection_interval=0, attempt_reconnect_interval=0)
    assert opts.dial_options.auth_entity == key_id  # the SDK uses the key id as the entity
    opts.dial_options.disable_webrtc = True
    opts.dial_options.timeout = 5
    opts.dial_options.initial_connection_attempt_timeout = 5
    opts.dial_options.initial_connection_attempts = 1
    return opts


def no_creds_options(*, insecure: bool) -> RobotClient.Options:
    return _robot_options(DialOptions(insecure=insecure, disable_webrtc=True, timeout=5, initial_connection_attempts=1))


@pytest.fixture
async def robots():
    """`await robots.connect(address, options)` -> RobotClient (closed at teardown)."""

    class _Robots:
        def __init__(self):
            self.clients: List[RobotClient] = []

        async def connect(self, address: str, options: RobotClient.Options) -> RobotClient:
            robot = await asyncio.wait_for(RobotClient.at_address(address, options), timeout=CONNECT_TIMEOUT)
            self.clients.append(robot)
            return robot

    r = _Robots()
    yield r
    for robot in r.clients:
        try:
            await asyncio.wait_for(robot.close(), timeout=5)
        except Exception:
            pass


def exception_chain(exc: BaseException) -> List[BaseException]:
    """exc, then its __cause__/__context__ chain (what the SDK wraps)."""
    out, seen = [], set()
    cur: Optional[BaseException] = exc
    while cur is not None and id(cur) not in seen:
        out.append(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return out


def describe_chain(exc: BaseException) -> str:
    return " <- ".join(f"{type(e).__name__}({describe(e) if isinstance(e, GRPCError) else str(e)!r})" for e in exception_chain(exc))


def grpc_error_in(exc: BaseException) -> Optional[GRPCError]:
    return next((e for e in exception_chain(exc) if isinstance(e, GRPCError)), None)


async def expect_connect_failure(robots, address: str, options: RobotClient.Options, *, within: float = 10.0) -> "tuple[BaseException, float]":
    """RobotClient.at_address must fail (not hang, not succeed). Returns (exception, seconds)."""
    t0 = time.monotonic()
    try:
        robot = await robots.connect(address, options)
    except asyncio.TimeoutError:
        raise AssertionError(f"RobotClient.at_address({address!r}) hung for {CONNECT_TIMEOUT}s instead of failing")
    except Exception as e:  # noqa: BLE001
        took = time.monotonic() - t0
        assert took < within, f"connect failed, but only after {took:.1f}s: {describe_chain(e)}"
        return e, took
    raise AssertionError(f"RobotClient.at_address({address!r}) unexpectedly connected; names: {sorted(names_of(robot))}")


async def assert_unauthenticated_connect(robots, address: str, options: RobotClient.Options, what: str) -> GRPCError:
    """A rejected Authenticate: the SDK raises the GRPCError itself (dial() re-raises the last attempt's error)."""
    exc, took = await expect_connect_failure(robots, address, options)
    err = grpc_error_in(exc)
    assert err is not None, f"{what}: expected a gRPC UNAUTHENTICATED, got {describe_chain(exc)}"
    assert_status(err, Status.UNAUTHENTICATED, what)
    assert isinstance(exc, GRPCError), f"{what}: SDK surfaced {describe_chain(exc)} (expected the bare GRPCError)"
    print(f"{what}: {describe_chain(exc)} after {took:.3f}s")
    return err


def tls_probe(port: int, server_hostname: str, cafile, alpn: List[str]) -> "tuple[Optional[str], bytes]":
    """Blocking TLS handshake to 127.0.0.1:port verifying against `cafile`. Returns (ALPN, peer cert DER)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        with ctx.wrap_socket(sock, server_hostname=server_hostname) as ss:
            return ss.selected_alpn_protocol(), ss.getpeercert(binary_form=True)


async def motor_calls(robot: RobotClient, name: str) -> "tuple[str, str, list]":
    res = await Motor.from_robot(robot, name).do_command({"calls": True}, timeout=T)
    return res["part"], res["name"], list(res["calls"])


async def drive_sub1_motor(robot: RobotClient, expected_names: set, what: str) -> None:
    """resource_names, then SetPower/IsPowered/DoCommand/Stop on sub1:motor1 through the gateway."""
    names = names_of(robot)
    assert names == expected_names, f"{what}: names {sorted(names)}, want {sorted(expected_names)}"
    m = Motor.from_robot(robot, "sub1:motor1")
    await m.set_power(0.5, timeout=T)
    assert await m.is_powered(timeout=T) == (True, 0.5), what
    res = await m.do_command({"via": what}, timeout=T)
    assert (res["part"], res["name"], res["command"]) == ("sub1", "motor1", {"via": what}), f"{what}: {res}"
    part, name, calls = await motor_calls(robot, "sub1:motor1")
    assert (part, name) == ("sub1", "motor1") and "set_power" in calls, f"{what}: {calls}"
    await m.stop(timeout=T)
    assert await m.is_powered(timeout=T) == (False, 0.0), what


@pytest.fixture
def resolve_fqdn_to_loopback(monkeypatch):
    """Make AUTH_FQDN resolve to 127.0.0.1 in this process only (asyncio and socket.create_connection
    both go through socket.getaddrinfo). Needed because the SDK verifies certificates only for hosts
    that do not start with localhost / 127. / 0.0.0.0."""
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        return real("127.0.0.1" if host == AUTH_FQDN else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


# ------------------------------------------------------------------------------------------
# TLS layer (plain Python ssl, no SDK)
# ------------------------------------------------------------------------------------------


async def test_tls_certificate_verifies_against_test_ca(auth_fleet: AuthFleet):
    certs = auth_fleet.certs
    for name in ["localhost", "127.0.0.1", AUTH_FQDN]:
        alpn, der = tls_probe(auth_fleet.port, name, certs.ca, ["h2", "http/1.1"])
        assert alpn == "h2", f"server_hostname={name}: ALPN {alpn!r}, want h2"
    alpn, _ = tls_probe(auth_fleet.port, "localhost", certs.ca, ["http/1.1"])
    assert alpn == "http/1.1", f"ALPN http/1.1 only: got {alpn!r} (contract: h2 + http/1.1)"
    # verification is real: an unrelated CA rejects the chain, a wrong name fails the hostname check
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_probe(auth_fleet.port, "localhost", certs.other_ca, ["h2"])
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_probe(auth_fleet.port, "not-in-the-cert.example", certs.ca, ["h2"])


# ------------------------------------------------------------------------------------------
# Location secret
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["old_secret", "new_secret"])
async def test_location_secret_drives_components(auth_fleet: AuthFleet, robots, which):
    """Both configured secrets (rotation) work, with the SDK's default entity = the address dialed
    (`localhost:PORT`, `127.0.0.1:PORT`)."""
    secret = getattr(auth_fleet.auth, which)
    for address in [auth_fleet.localhost, f"127.0.0.1:{auth_fleet.port}"]:
        robot = await robots.connect(address, secret_options(secret))
        await drive_sub1_motor(robot, {*part_names("main"), *part_names("sub1"), *part_names("sub2")}, f"{which} @ {address}")
        # the main part's motor1 and sub2 are untouched
        _, _, calls = await motor_calls(robot, "motor1")
        assert "set_power" not in calls, calls
        readings = await Sensor.from_robot(robot, "sub2:imu").get_readings(timeout=T)
        assert (readings["part"], readings["name"]) == ("sub2", "imu")
    # the parts themselves never see credentials problems: they got the calls
    assert any(c.endswith("MotorService/SetPower") for c in auth_fleet.parts["sub1"].calls_seen())
    assert not any(c.endswith("MotorService/SetPower") for c in auth_fleet.parts["main"].calls_seen())


async def test_location_secret_with_verified_tls(auth_fleet: AuthFleet, robots, monkeypatch, resolve_fqdn_to_loopback):
    """The SDK *verifying* the gateway's certificate: dial `gateway.partgate.test:PORT` (resolved to
    127.0.0.1 in-process) with SSL_CERT_FILE=<test CA> and auth_entity = network.fqdn (which the SDK
    also uses as TLS server name). With an unrelated CA the same dial fails the TLS verification."""
    fa = auth_fleet.auth
    address = f"{AUTH_FQDN}:{auth_fleet.port}"
    monkeypatch.setenv("SSL_CERT_FILE", str(auth_fleet.certs.ca))
    robot = await robots.connect(address, secret_options(fa.old_secret, auth_entity=AUTH_FQDN))
    await drive_sub1_motor(robot, {*part_names("main"), *part_names("sub1"), *part_names("sub2")}, "verified TLS, fqdn entity")

    monkeypatch.setenv("SSL_CERT_FILE", str(auth_fleet.certs.other_ca))
    exc, _ = await expect_connect_failure(robots, address, secret_options(fa.old_secret, auth_entity=AUTH_FQDN))
    assert isinstance(exc, ssl.SSLCertVerificationError), f"untrusted CA: expected SSLCertVerificationError, got {describe_chain(exc)}"

    # SDK behaviour: `localhost` is never verified, so the untrusted CA does not matter there.
    robot = await robots.connect(auth_fleet.localhost, secret_options(fa.new_secret))
    assert "sub1:motor1" in names_of(robot)


async def test_location_secret_entities_with_a_port(auth_fleet: AuthFleet, robots):
    """Issue 30: README lists `localhost:PORT` and `127.0.0.1:PORT` as entities.

    - auth_entity unset: the SDK sends the address dialed as the entity and its bare host as the
      TLS server name: logs in and calls (the README's way).
    - auth_entity set to that same `host:PORT`: the SDK also sends it as the TLS server name (SNI),
      which rustls refuses (illegal_parameter; the bytes cannot be rewritten, the ClientHello is in
      the handshake transcript). The gateway logs why and what to change, naming the value.
    - auth_entity a host name without a port (network.fqdn): logs in and calls."""
    secret = auth_fleet.auth.new_secret
    for entity in [auth_fleet.localhost, f"127.0.0.1:{auth_fleet.port}"]:
        robot = await robots.connect(entity, secret_options(secret))
        assert await Motor.from_robot(robot, "sub1:motor1").is_powered(timeout=T) == (False, 0.0), entity

        exc, _ = await expect_connect_failure(robots, entity, secret_options(secret, auth_entity=entity))
        ssl_error = next((e for e in exception_chain(exc) if isinstance(e, ssl.SSLError)), None)
        assert ssl_error is not None and "ILLEGAL_PARAMETER" in str(ssl_error), describe_chain(exc)

        async def logged():
            log = auth_fleet.gateway.log(last=None)
            lines = [line for line in log.splitlines() if "TLS handshake refused" in line and f'server_name="{entity}"' in line]
            if not lines:
                raise OSError(f"no refused-server-name line for {entity}")
            return lines[-1]

        line, _ = await poll_until(logged, deadline_s=5, interval=0.1)
        assert "INFO" in line and "leave auth_entity unset" in line and "network.fqdn" in line, line
        print(f"gateway: {line}")

        robot = await robots.connect(entity, secret_options(secret, auth_entity=AUTH_FQDN))
        assert await Motor.from_robot(robot, "sub1:motor1").is_powered(timeout=T) == (False, 0.0), entity


# ------------------------------------------------------------------------------------------
# API keys
# ------------------------------------------------------------------------------------------


async def test_api_key_drives_components(auth_fleet: AuthFleet, robots):
    fa = auth_fleet.auth
    robot = await robots.connect(auth_fleet.localhost, api_key_options(fa.key, fa.key_id))
    await drive_sub1_motor(robot, {*part_names("main"), *part_names("sub1"), *part_names("sub2")}, "api key")
    lift = Motor.from_robot(robot, "sub2:lift")
    await lift.set_power(-0.25, timeout=T)
    assert await lift.is_powered(timeout=T) == (True, -0.25)
    res = await Motor.from_robot(robot, "motor1").do_command({}, timeout=T)
    assert (res["part"], res["name"]) == ("main", "motor1")
    # the same key also works when dialing 127.0.0.1 (entity is the key id, not the address)
    robot2 = await robots.connect(f"127.0.0.1:{auth_fleet.port}", api_key_options(fa.key, fa.key_id))
    assert await Motor.from_robot(robot2, "sub2:lift").is_powered(timeout=T) == (True, -0.25)


async def test_scoped_api_key_sees_and_drives_only_its_part(auth_fleet: AuthFleet, robots):
    fa = auth_fleet.auth
    robot = await robots.connect(auth_fleet.localhost, api_key_options(fa.scoped_key, fa.scoped_key_id))
    names = names_of(robot)
    assert names == part_names("sub1"), f"key limited to sub1 lists {sorted(names)}, want {sorted(part_names('sub1'))}"

    await drive_sub1_motor(robot, part_names("sub1"), "scoped api key")
    readings = await Sensor.from_robot(robot, "sub1:imu").get_readings(timeout=T)
    assert readings["part"] == "sub1"

    # SDK: names that were not listed cannot even be looked up client-side
    with pytest.raises(ResourceNotFoundError):
        Motor.from_robot(robot, "sub2:lift")

    # Sent anyway (client built on the authenticated channel): PERMISSION_DENIED, and the part never sees it.
    sub2_before = list(auth_fleet.parts["sub2"].calls_seen())
    main_before = list(auth_fleet.parts["main"].calls_seen())
    for what, call in [
        ("IsPowered sub2:lift", MotorClient("sub2:lift", robot._channel).is_powered(timeout=T)),
        ("SetPower sub2:lift", MotorClient("sub2:lift", robot._channel).set_power(1.0, timeout=T)),
        ("DoCommand sub2:lift", MotorClient("sub2:lift", robot._channel).do_command({}, timeout=T)),
        ("GetReadings sub2:imu", SensorClient("sub2:imu", robot._channel).get_readings(timeout=T)),
    ]:
        err, _ = await expect_grpc_error(call)
        assert_status(err, Status.PERMISSION_DENIED, f"scoped key: {what}")
        print(f"scoped key: {what}: {describe(err)}")
    assert auth_fleet.parts["sub2"].calls_seen() == sub2_before, "a denied call reached sub2"
    assert auth_fleet.parts["main"].calls_seen() == main_before, "a denied call reached main"

    # Observations (not in the contract, printed for the report): a bare name shared with a
    # forbidden part, and StopAll with a scoped key.
    # A limited key resolves bare names among its own parts: `motor1` (main's and sub1's) and
    # `lift` (sub1's and sub2's) both mean sub1's here, the only ones in its listing.
    for bare in ("motor1", "lift"):
        res = await MotorClient(bare, robot._channel).do_command({}, timeout=T)
        assert (res["part"], res["name"]) == ("sub1", bare), f"scoped key: bare `{bare}` -> {res}"
    assert auth_fleet.parts["main"].calls_seen() == main_before, "a scoped call reached main"
    full = await robots.connect(auth_fleet.localhost, api_key_options(fa.key, fa.key_id))
    await Motor.from_robot(full, "sub2:lift").set_power(0.3, timeout=T)
    await Motor.from_robot(full, "sub1:lift").set_power(0.3, timeout=T)
    try:
        await asyncio.wait_for(robot.stop_all(), timeout=T)
        print("scoped key: StopAll succeeded")
    except Exception as e:  # noqa: BLE001
        print(f"scoped key: StopAll raised {describe_chain(e)}")
    print(
        "scoped key: after its StopAll: sub1:lift", await Motor.from_robot(full, "sub1:lift").is_powered(timeout=T),
        "sub2:lift", await Motor.from_robot(full, "sub2:lift").is_powered(timeout=T),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------
# Rejections
# ------------------------------------------------------------------------------------------


async def test_wrong_secret_is_unauthenticated(auth_fleet: AuthFleet, robots):
    fa = auth_fleet.auth
    parts_before = {n: list(p.calls_seen()) for n, p in auth_fleet.parts.items()}
    await assert_unauthenticated_connect(robots, auth_fleet.localhost, secret_options("not-the-secret"), "wrong location secret")
    # other ways to be wrong
    await assert_unauthenticated_connect(
        robots, auth_fleet.localhost, secret_options(fa.new_secret, auth_entity="somebody-else.example.com"), "right secret, foreign entity"
    )
    await assert_unauthenticated_connect(robots, auth_fleet.localhost, api_key_options("not-the-key", fa.key_id), "wrong api key")
    await assert_unauthenticated_connect(
        robots, auth_fleet.localhost, api_key_options(fa.key, "11111111-2222-4333-8444-555555555555"), "api key, unknown key id"
    )
    await assert_unauthenticated_connect(robots, auth_fleet.localhost, secret_options(fa.key), "api key presented as a location secret")
    # nothing reached the parts
    assert {n: list(p.calls_seen()) for n, p in auth_fleet.parts.items()} == parts_before

    # after these failures the right secret still works (print: rate limiting is not in the contract)
    try:
        robot = await robots.connect(auth_fleet.localhost, secret_options(fa.new_secret))
        print(f"after 5 failed logins the right secret still connects: {len(names_of(robot))} names")
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"after 5 failed Authenticate calls the right secret no longer connects: {describe_chain(e)}")


async def test_tls_without_credentials_is_unauthenticated(auth_fleet: AuthFleet, robots):
    # RobotClient: TLS ok, first ResourceNames rejected -> ConnectionError wrapping the GRPCError
    exc, _ = await expect_connect_failure(robots, auth_fleet.localhost, no_creds_options(insecure=False))
    print(f"no credentials, RobotClient.at_address: {describe_chain(exc)}")
    assert isinstance(exc, ConnectionError), describe_chain(exc)
    err = grpc_error_in(exc)
    assert err is not None, f"no GRPCError behind {describe_chain(exc)}"
    assert_status(err, Status.UNAUTHENTICATED, "ResourceNames without credentials")

    # Raw calls on an SDK-dialed TLS channel without credentials
    chan = await asyncio.wait_for(dial(auth_fleet.localhost, DialOptions(disable_webrtc=True, timeout=5, initial_connection_attempts=1)), timeout=10)
    try:
        ch = chan.channel
        for what, call in [
            ("RobotService/ResourceNames", RobotServiceStub(ch).ResourceNames(ResourceNamesRequest(), timeout=T)),
            ("MotorService/IsPowered sub1:motor1", MotorClient("sub1:motor1", ch).is_powered(timeout=T)),
            ("MotorService/SetPower sub1:motor1", MotorClient("sub1:motor1", ch).set_power(1.0, timeout=T)),
        ]:
            err, _ = await expect_grpc_error(call)
            assert_status(err, Status.UNAUTHENTICATED, f"{what} without credentials")
            assert "authentication required" in (err.message or "").lower(), f"{what}: {describe(err)}"
        # a made-up bearer token is no better
        err, _ = await expect_grpc_error(
            RobotServiceStub(ch).ResourceNames(ResourceNamesRequest(), timeout=T, metadata={"authorization": "Bearer not.a.token"})
        )
        assert_status(err, Status.UNAUTHENTICATED, "ResourceNames with a bogus bearer token")
        print(f"bogus bearer token: {describe(err)}")
        # Authenticate itself needs no token and works on the same channel
        resp = await AuthServiceStub(ch).Authenticate(
            AuthenticateRequest(entity=auth_fleet.localhost, credentials=PBCredentials(type=LOCATION_SECRET, payload=auth_fleet.auth.old_secret)),
            timeout=T,
        )
        assert resp.access_token
        resp2 = await RobotServiceStub(ch).ResourceNames(
            ResourceNamesRequest(), timeout=T, metadata={"authorization": f"Bearer {resp.access_token}"}
        )
        assert "sub1:motor1" in {rn.name for rn in resp2.resources}
    finally:
        chan.close()
    assert not any("MotorService" in c for c in auth_fleet.parts["sub1"].calls_seen()), auth_fleet.parts["sub1"].calls_seen()


async def test_plaintext_client_against_tls_port_fails_fast(auth_fleet: AuthFleet, robots):
    """insecure=True (plain h2c) against the TLS-only port: a prompt failure, no hang."""
    exc, took = await expect_connect_failure(robots, auth_fleet.localhost, no_creds_options(insecure=True), within=5.0)
    print(f"plaintext RobotClient.at_address: {describe_chain(exc)} after {took:.3f}s")
    assert isinstance(exc, ConnectionError), describe_chain(exc)
    assert not any(isinstance(e, asyncio.TimeoutError) for e in exception_chain(exc)), describe_chain(exc)

    # With credentials too. SDK 0.85.1 limitation: insecure=True + credentials + disable_webrtc never reaches
    # the server: AuthenticatedChannel passes server_hostname without ssl and asyncio raises
    # ValueError("server_hostname is only meaningful with ssl") locally. Only "fails, no hang" is asserted.
    exc, took = await expect_connect_failure(robots, auth_fleet.localhost, secret_options(auth_fleet.auth.new_secret, insecure=True), within=5.0)
    print(f"plaintext + location secret: {describe_chain(exc)} after {took:.3f}s")
    assert not any(isinstance(e, asyncio.TimeoutError) for e in exception_chain(exc)), describe_chain(exc)

    # raw grpclib h2c: the gateway must close the connection, not leave the call waiting for its deadline
    channel = Channel("127.0.0.1", auth_fleet.port)
    t0 = time.monotonic()
    try:
        await RobotServiceStub(channel).ResourceNames(ResourceNamesRequest(), timeout=4)
        pytest.fail("plaintext ResourceNames succeeded against the TLS port")
    except asyncio.TimeoutError:
        pytest.fail(f"plaintext ResourceNames hung until its 4 s deadline ({time.monotonic() - t0:.1f}s)")
    except Exception as e:  # noqa: BLE001
        print(f"raw plaintext ResourceNames: {describe_chain(e)} after {time.monotonic() - t0:.3f}s")
    finally:
        channel.close()

    # the gateway still serves TLS clients afterwards
    robot = await robots.connect(auth_fleet.localhost, secret_options(auth_fleet.auth.new_secret))
    assert "sub1:motor1" in names_of(robot)


# ------------------------------------------------------------------------------------------
# Contract extras: secrets from env/file, certificate reload, no auth section
# ------------------------------------------------------------------------------------------


async def test_secrets_from_env_and_file(part_factory, gateway_from_config, tls_certs, robots, tmp_path):
    """Contract: secrets may be written `${env:VAR}` or `${file:/path}`."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("file-secret-9a8b")
    key_id = "3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a"
    main = part_factory("main", motors=["motor1"])
    config = {
        "network": {"bind_address": "127.0.0.1:0", "tls_cert_file": str(tls_certs.cert), "tls_key_file": str(tls_certs.key)},
        "auth": {
            "handlers": [
                {"type": "robot-location-secret", "config": {"secrets": ["${env:PARTGATE_TEST_SECRET}", f"${{file:{secret_file}}}"]}},
                {"type": "api-key", "config": {key_id: "${env:PARTGATE_TEST_KEY}"}},
            ]
        },
        "remotes": [{"name": "main", "address": main.address, "insecure": True}],
        "gateway": {"main_part": "main"},
    }
    gw = gateway_from_config(config, env={"PARTGATE_TEST_SECRET": "env-secret-4c3d2e", "PARTGATE_TEST_KEY": "env-api-key-7e6f5d"})
    address = f"localhost:{gw.address.rsplit(':', 1)[1]}"
    await wait_until_listed_tls(address, "env-secret-4c3d2e", {"motor1"})

    for what, opts in [
        ("${env:} location secret", secret_options("env-secret-4c3d2e")),
        ("${file:} location secret", secret_options("file-secret-9a8b")),
        ("${env:} api key", api_key_options("env-api-key-7e6f5d", key_id)),
    ]:
        robot = await robots.connect(address, opts)
        assert await Motor.from_robot(robot, "motor1").is_powered(timeout=T) == (False, 0.0), what
    await assert_unauthenticated_connect(robots, address, secret_options("${env:PARTGATE_TEST_SECRET}"), "the literal placeholder")


async def test_certificate_reload(part_factory, gateway_from_config, tls_certs, robots, tmp_path):
    """Contract: certificates are re-read when the files change. Replace cert+key (atomic renames)
    with a new cert from the same CA; new handshakes must present it within 15 s, and the SDK still connects."""
    cert, key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    cert.write_bytes(tls_certs.cert.read_bytes())
    key.write_bytes(tls_certs.key.read_bytes())
    certs = dataclasses.replace(tls_certs, cert=cert, key=key)
    auth = AuthConfig()
    main = part_factory("main", **FLEET_SPEC["main"])
    gw = gateway_from_config(auth_gateway_config([main], certs, auth))
    port = int(gw.address.rsplit(":", 1)[1])
    await wait_until_listed_tls(f"localhost:{port}", auth.new_secret, part_names("main"))

    _, old_der = tls_probe(port, "localhost", certs.ca, ["h2"])
    assert old_der == ssl.PEM_cert_to_DER_cert(tls_certs.cert.read_text())
    new_cert, new_key = issue_server_cert(tmp_path, "rotated", certs.ca, certs.ca_key)
    for src, dst in [(new_key, key), (new_cert, cert)]:
        tmp = dst.with_suffix(".tmp")
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, dst)

    async def presents_new_cert():
        _, der = tls_probe(port, "localhost", certs.ca, ["h2"])
        if der == old_der:
            raise OSError("still the old certificate")
        return der

    der, waited = await poll_until(presents_new_cert, deadline_s=15, interval=0.5)
    assert der == ssl.PEM_cert_to_DER_cert(new_cert.read_text()), "serving a certificate that is neither the old nor the new one"
    print(f"new certificate served {waited:.2f}s after the files changed")
    robot = await robots.connect(f"localhost:{port}", secret_options(auth.new_secret))
    assert await Motor.from_robot(robot, "motor1").is_powered(timeout=T) == (False, 0.0)


async def test_no_auth_section_authenticate_unimplemented(demo_gateway):
    """Without an `auth` section there is no authentication; Authenticate answers UNIMPLEMENTED."""
    host, port = demo_gateway.address.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        err, _ = await expect_grpc_error(
            AuthServiceStub(channel).Authenticate(
                AuthenticateRequest(entity=demo_gateway.address, credentials=PBCredentials(type=LOCATION_SECRET, payload="x")), timeout=T
            )
        )
        assert_status(err, Status.UNIMPLEMENTED, "Authenticate on a gateway without auth")
    finally:
        channel.close()
