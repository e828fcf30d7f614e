"""Small helpers shared by the interop tests (everything bounded by timeouts)."""

import asyncio
import time
from typing import Any, Awaitable, Callable, Optional, Tuple

from grpclib import GRPCError, Status
from grpclib.exceptions import StreamTerminatedError

from viam.robot.client import RobotClient

CALL_TIMEOUT = 5.0


async def expect_grpc_error(awaitable: Awaitable[Any], *, outer_timeout: float = 10.0) -> Tuple[GRPCError, float]:
    """Await `awaitable`, which must fail with a grpclib GRPCError. Returns (error, seconds taken)."""
    t0 = time.monotonic()
    try:
        result = await asyncio.wait_for(awaitable, timeout=outer_timeout)
    except GRPCError as e:
        return e, time.monotonic() - t0
    except asyncio.TimeoutError:
        raise AssertionError(f"call hung for {outer_timeout}s instead of failing with a gRPC status")
    raise AssertionError(f"expected a gRPC error, call succeeded with {result!r}")


def describe(err: GRPCError) -> str:
    return f"{err.status.name}: {err.message!r} details={err.details!r}"


def assert_status(err: GRPCError, status: Status, what: str) -> None:
    assert err.status == status, f"{what}: expected {status.name}, got {describe(err)}"


async def stop_all(robot: RobotClient, timeout: float = CALL_TIMEOUT) -> None:
    # RobotClient.stop_all() has no timeout parameter.
    await asyncio.wait_for(robot.stop_all(), timeout=timeout)


async def poll_until(fn: Callable[[], Awaitable[Any]], *, deadline_s: float, interval: float = 0.25) -> Tuple[Any, float]:
    """Call `fn` until it stops raising; returns (result, seconds waited). Raises the last error on deadline."""
    t0 = time.monotonic()
    last: Optional[BaseException] = None
    while time.monotonic() - t0 < deadline_s:
        try:
            return await fn(), time.monotonic() - t0
        except (GRPCError, StreamTerminatedError, asyncio.TimeoutError, OSError) as e:
            last = e
        await asyncio.sleep(interval)
    desc = describe(last) if isinstance(last, GRPCError) else repr(last)
    raise AssertionError(f"did not recover within {deadline_s}s; last error: {desc}")


def names_of(robot: RobotClient, *, subtype: Optional[str] = None) -> set:
    """Component/service names the SDK got from ResourceNames (excluding `remote` entries)."""
    return {
        rn.name
        for rn in robot.resource_names
        if rn.subtype != "remote" and (subtype is None or rn.subtype == subtype)
    }
