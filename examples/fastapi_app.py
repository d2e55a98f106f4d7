"""A recommendation service on embcache's asyncio client: "similar items" and "recommend" endpoints.

    pip install 'embcache[examples]'        # FastAPI and uvicorn
    .venv/bin/uvicorn examples.fastapi_app:app     # after ./scripts/demo.sh: its data, on the embedded server

Without ``EMBCACHE_URL`` the app uses the embedded server, where ``./scripts/demo.sh`` left ``demo-movies``; for a
Redis you run, ``EMBCACHE_URL=redis://host:6379/0 EMBCACHE_SPACE=... uvicorn examples.fastapi_app:app``.

- ``GET /similar/{item_id}?n=10``: the items nearest to a stored item (served from the loaded snapshot).
- ``POST /recommend`` with ``{"vector": [...], "exclude": ["id", ...], "n": 10}``: the items nearest to a
  user's vector, minus what the user has seen.

Queries go to the space's ``live`` version (else its newest) at ``session`` consistency by default.
embcache's errors map onto HTTP: unknown ids 404, bad input 422, refused by Redis ACL 403, Redis away 503.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import embcache
import embcache.aio


class RecommendRequest(BaseModel):
    vector: list[float] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list, max_length=10_000)
    n: int = Field(10, ge=1, le=1000)


def create_app(url: str | None = None, space: str | None = None, **connect_kwargs: Any) -> FastAPI:
    """The service for ``space`` of the hub at ``url`` (defaults: ``EMBCACHE_URL``, ``EMBCACHE_SPACE``)."""
    space_name = space or os.environ.get("EMBCACHE_SPACE", "demo-movies")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        hub = await embcache.aio.connect(url or os.environ.get("EMBCACHE_URL"), **connect_kwargs)
        app.state.hub = hub
        app.state.space = await hub.space(space_name)
        try:
            yield
        finally:
            await hub.close()

    app = FastAPI(title="embcache recommendations", lifespan=lifespan)

    @app.exception_handler(embcache.EmbcacheError)
    async def embcache_error(request: Request, exc: embcache.EmbcacheError) -> JSONResponse:
        status = {embcache.NotFound: 404, embcache.InvalidInput: 422, embcache.PermissionDenied: 403,
                  embcache.Unavailable: 503}
        code = next((c for kind, c in status.items() if isinstance(exc, kind)), 500)
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=code)

    @app.get("/similar/{item_id}")
    async def similar(item_id: str, request: Request, n: int = Query(10, ge=1, le=1000)) -> dict[str, Any]:
        res = await request.app.state.space.query_by_id([item_id], n_results=n, include=("distances", "metadatas"))
        return {"id": item_id, "results": _rows(res, 0)}

    @app.post("/recommend")
    async def recommend(body: RecommendRequest, request: Request) -> dict[str, Any]:
        space = request.app.state.space
        if len(body.vector) != space.dim:
            raise HTTPException(422, f"vector has {len(body.vector)} dimensions, the space has {space.dim}")
        res = await space.query(body.vector, n_results=body.n, exclude=body.exclude or None,
                                include=("distances", "metadatas"))
        return {"results": _rows(res, 0)}

    return app


def _rows(res: embcache.QueryResult, q: int) -> list[dict[str, Any]]:
    metas = res.metadatas[q] if res.metadatas is not None else [None] * len(res.ids[q])
    return [{"id": i, "distance": float(d), "metadata": m} for i, d, m in zip(res.ids[q], res.distances[q], metas)]


app = create_app()  # uvicorn's target; it connects at start-up, not at import
