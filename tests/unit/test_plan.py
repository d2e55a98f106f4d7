"""The plan drivers (embcache.plan) on fakeredis: pure control flow, no server needed."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest
from redis.exceptions import ResponseError

from embcache.core.errors import NotFound, RedisRefused
from embcache.redis.plan import Batch, Call, Offload, arun, run
from embcache.redis.store import translate_errors


def plan_roundtrip():  # noqa: ANN201
    yield Call("set", "k", "1")
    a = yield Call("incr", "k")
    b = yield Batch([Call("incr", "k"), Call("get", "k")], transaction=True)
    c = yield Offload(lambda x: x * 2, (21,))
    return a, b, c


def plan_with_error():  # noqa: ANN201
    try:
        yield Call("incr", "not-a-number-key")
    except ResponseError as exc:
        return f"handled: {type(exc).__name__}"
    return "no error"


def plan_translated():  # noqa: ANN201
    with translate_errors("op"):
        yield Call("execute_command", "FCALL", "no_such_function", 0)


def plan_batch_errors():  # noqa: ANN201
    res = yield Batch([Call("set", "s", "x"), Call("incr", "s")], raise_on_error=False)
    return [type(r).__name__ for r in res]


def test_sync_driver() -> None:
    r = fakeredis.FakeRedis()
    assert run(plan_roundtrip(), r) == (2, [3, b"3"], 42)
    r.set("not-a-number-key", "x")
    assert run(plan_with_error(), r) == "handled: ResponseError"
    assert run(plan_batch_errors(), r) == ["bool", "ResponseError"]


def test_async_driver_runs_the_same_plans() -> None:
    async def main() -> None:
        r = fakeredis.FakeAsyncRedis()
        assert await arun(plan_roundtrip(), r) == (2, [3, b"3"], 42)
        await r.set("not-a-number-key", "x")
        assert await arun(plan_with_error(), r) == "handled: ResponseError"
        assert await arun(plan_batch_errors(), r) == ["bool", "ResponseError"]

    asyncio.run(main())


def test_errors_thrown_into_a_plan_pass_through_its_translation() -> None:
    with pytest.raises(RedisRefused):  # not an embcache code: still an embcache error (issue 15.4)
        run(plan_translated(), fakeredis.FakeRedis())

    def raises_code():  # noqa: ANN202
        with translate_errors("op"):
            yield Call("execute_command", "NOSUCHCOMMAND")
        return None

    class Fake:
        def execute_command(self, *args: object) -> None:
            raise ResponseError("EMBNOTFOUND no version v9")

    with pytest.raises(NotFound, match="no version v9"):
        run(raises_code(), Fake())
