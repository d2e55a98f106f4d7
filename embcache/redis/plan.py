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
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

__all__ = ["Call", "Batch", "Offload", "Scan", "Sleep", "OnAllNodes", "Plan", "run", "arun", "planned"]

T = TypeVar("T")
S = TypeVar("S")
P = ParamSpec("P")


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


@dataclass(frozen=True)
class Scan:
    """Every key matching ``match`` (``SCAN`` on a server; on a Cluster, on every primary): the result is the
    whole list of keys, held in memory. For administrative sweeps (dropping a space: a few keys per partition),
    not for anything on a hot path."""

    match: str
    count: int = 1000


@dataclass(frozen=True)
class OnAllNodes:
    """A command every node must run (ACL users and client connections are per node): sent once on a server,
    to every node of a Cluster (redis-py's sync and asyncio Cluster clients name "every node" differently)."""

    args: tuple[Any, ...]

    def __init__(self, *args: Any) -> None:
        object.__setattr__(self, "args", args)


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` between polls: ``time.sleep`` under :func:`run`, ``asyncio.sleep`` under :func:`arun`."""

    seconds: float


Plan = Generator["Call | Batch | Offload | Scan | Sleep | OnAllNodes", Any, T]


def run(plan: Plan[T], client: Any) -> T:
    """Execute ``plan`` with a synchronous redis-py client."""
    try:
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
                elif isinstance(step, Scan):
                    result = list(client.scan_iter(match=step.match, count=step.count))
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    result = None
                elif isinstance(step, OnAllNodes):
                    result = client.execute_command(*step.args, **_every_node(client))
                else:
                    pipe = client.pipeline(transaction=step.transaction)
                    for c in step.calls:
                        getattr(pipe, c.method)(*c.args, **c.kwargs)
                    result = pipe.execute(raise_on_error=step.raise_on_error)
            except Exception as exc:  # noqa: BLE001 - handed to the plan, which decides
                error = exc
    finally:  # a plan left by an exception the loop does not hand it (a cancelled task) ends here
        plan.close()


async def arun(plan: Plan[T], client: Any) -> T:
    """Execute ``plan`` with a ``redis.asyncio`` client."""
    try:
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
                elif isinstance(step, Scan):
                    result = [key async for key in client.scan_iter(match=step.match, count=step.count)]
                elif isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    result = None
                elif isinstance(step, OnAllNodes):
                    result = await client.execute_command(*step.args, **_every_node(client))
                else:
                    pipe = client.pipeline(transaction=step.transaction)
                    for c in step.calls:
                        getattr(pipe, c.method)(*c.args, **c.kwargs)  # queued, not awaited
                    result = await pipe.execute(raise_on_error=step.raise_on_error)
            except Exception as exc:  # noqa: BLE001
                error = exc
    finally:  # a plan left by an exception the loop does not hand it (a cancelled task) ends here
        plan.close()


def _every_node(client: Any) -> dict[str, Any]:
    """``execute_command``'s arguments to reach every node: the node list on a Cluster (redis.asyncio's Cluster
    client ignores the ``"all"`` flag for commands without keys; both clients take the nodes themselves)."""
    return {"target_nodes": client.get_nodes()} if hasattr(client, "get_nodes") else {}


class planned(Generic[S, P, T]):  # lower case: used as a decorator, like property
    """Make a plan-returning method of an object with a sync client ``self.r`` callable as a plain method;
    the plan itself stays reachable as ``.plan`` (for :func:`arun`, or ``yield from`` in another plan):
    ``store.read_tail(pk, pos)`` runs it, ``store.read_tail.plan(pk, pos)`` returns it. Typed, so that mypy sees
    both the method's and the plan's signature."""

    def __init__(self, fn: Callable[Concatenate[S, P], Plan[T]]) -> None:
        self.plan = fn
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__wrapped__ = fn

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> planned[S, P, T]: ...
    @overload
    def __get__(self, obj: S, owner: type | None = None) -> _Bound[S, P, T]: ...
    def __get__(self, obj: S | None, owner: type | None = None) -> planned[S, P, T] | _Bound[S, P, T]:
        return self if obj is None else _Bound(self.plan, obj)


class _Bound(Generic[S, P, T]):
    """A :class:`planned` method bound to its object."""

    __slots__ = ("_fn", "_obj")

    def __init__(self, fn: Callable[Concatenate[S, P], Plan[T]], obj: S) -> None:
        self._fn = fn
        self._obj = obj

    def plan(self, *args: P.args, **kwargs: P.kwargs) -> Plan[T]:
        """The plan, for :func:`arun` or ``yield from``."""
        return self._fn(self._obj, *args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return run(self._fn(self._obj, *args, **kwargs), self._obj.r)  # type: ignore[attr-defined]
