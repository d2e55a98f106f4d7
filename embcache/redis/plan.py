"""One implementation of the Redis work for the sync and the asyncio client.

An operation that talks to Redis is written once, as a generator (a *plan*) that yields the commands it needs and
receives their results; :func:`run` executes a plan with a redis-py client, :func:`arun` with a ``redis.asyncio``
client. Exceptions from Redis are thrown back into the plan, so its own ``try``/``with translate_errors(...)``
blocks handle them the same way under both drivers.

>>> def ping_twice():
...     a = yield Call("ping")
...     b = yield Batch([Call("ping"), Call("ping")])
...     return a, b
>>> run(ping_twice(), redis_client)             # doctest: +SKIP
(True, [True, True])
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

__all__ = ["Call", "Batch", "Offload", "Plan", "run", "arun", "planned"]

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One client method call, e.g. ``Call("hget", key, field)``."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __init__(self, method: str, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)


@dataclass(frozen=True)
class Batch:
    """Several calls in one pipeline (``transaction=True``: MULTI/EXEC). The result is the list of results;
    with ``raise_on_error=False`` failed calls come back as exception objects."""

    calls: Sequence[Call]
    transaction: bool = False
    raise_on_error: bool = True


@dataclass(frozen=True)
class Offload:
    """Blocking work that is not one Redis command (e.g. loading a snapshot): called directly by :func:`run`,
    in a worker thread by :func:`arun`, so the event loop never waits on it."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


Plan = Generator["Call | Batch | Offload", Any, T]


def run(plan: Plan[T], client: Any) -> T:
    """Execute ``plan`` with a synchronous redis-py client."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plan.throw(error) if error is not None else plan.send(result)
        except StopIteration as stop:
            return stop.value
        error = None
        try:
            if isinstance(step, Call):
                result = getattr(client, step.method)(*step.args, **step.kwargs)
            elif isinstance(step, Offload):
                result = step.fn(*step.args)
            else:
                pipe = client.pipeline(transaction=step.transaction)
                for c in step.calls:
                    getattr(pipe, c.method)(*c.args, **c.kwargs)
                result = pipe.execute(raise_on_error=step.raise_on_error)
        except Exception as exc:  # noqa: BLE001 - handed to the plan, which decides
            error = exc


async def arun(plan: Plan[T], client: Any) -> T:
    """Execute ``plan`` with a ``redis.asyncio`` client."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plan.throw(error) if error is not None else plan.send(result)
        except StopIteration as stop:
            return stop.value
        error = None
        try:
            if isinstance(step, Call):
                result = await getattr(client, step.method)(*step.args, **step.kwargs)
            elif isinstance(step, Offload):
                result = await asyncio.to_thread(step.fn, *step.args)
            else:
                pipe = client.pipeline(transaction=step.transaction)
                for c in step.calls:
                    getattr(pipe, c.method)(*c.args, **c.kwargs)  # queued, not awaited
                result = await pipe.execute(raise_on_error=step.raise_on_error)
        except Exception as exc:  # noqa: BLE001
            error = exc


def planned(fn: Callable[..., Plan[T]]) -> Callable[..., T]:
    """Make a plan-returning method of an object with a sync client ``self.r`` callable as a plain method;
    the plan itself stays reachable as ``.plan`` (for :func:`arun`)."""

    @wraps(fn)
    def sync(self: Any, *args: Any, **kwargs: Any) -> T:
        return run(fn(self, *args, **kwargs), self.r)

    sync.plan = fn  # type: ignore[attr-defined]
    return sync
