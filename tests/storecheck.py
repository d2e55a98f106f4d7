"""Helpers for the store integration tests: an independent float64 brute force, a comparison of query results
against it, and byte-for-byte snapshots of a whole Redis database (standalone or every Cluster primary).

Nothing here imports embcache's search code: the expected answers are computed from the vectors the tests
generated, with the storage rules written out again (cosine rows normalised, float16 rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import redis
from redis.cluster import RedisCluster

from tests.servers import is_cluster_url

__all__ = ["stored_form", "brute_distances", "assert_knn", "db_snapshot", "assert_db_unchanged", "raw_client"]

TOL = 1e-5


def stored_form(x: np.ndarray, metric: str, dtype: str = "float32") -> np.ndarray:
    """What the store must hold for ``x`` (float32 values): cosine rows unit-normalised, then dtype rounding."""
    v = np.asarray(x, dtype=np.float32)
    if metric == "cosine":
        v64 = v.astype(np.float64)
        v = (v64 / np.linalg.norm(v64, axis=1, keepdims=True)).astype(np.float32)
    if dtype == "float16":
        v = v.astype(np.float16).astype(np.float32)
    return v


def brute_distances(queries: np.ndarray, items: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances (n_queries, n_items): l2 squared, ip ``1 - <q, x>``, cosine ``1 - <q / |q|, x>``.

    For cosine, ``items`` must be in their stored form (:func:`stored_form`: normalised on write, so float16
    rows are unit length only up to float16 rounding, and distances are taken against what is stored).
    """
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(items, dtype=np.float64)
    if q.ndim == 1:
        q = q[None, :]
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return 1.0 - q @ x.T


def assert_knn(
    res: Any,
    dists: np.ndarray,
    ids: Sequence[str],
    k: int,
    allowed: np.ndarray | None = None,
    tol: float = TOL,
) -> None:
    """``res`` (a QueryResult) is the exact top-``k`` of ``dists`` (n_queries, n_items) over ``allowed`` items.

    Checks per query: the number of results, no duplicates, only allowed ids, each distance equal to the
    brute-force one, the distances equal to the true k smallest, and the id order equal to the brute force
    except where two candidates are tied within ``tol``.
    """
    dists = np.asarray(dists, dtype=np.float64)
    assert len(res.ids) == dists.shape[0], f"{len(res.ids)} result rows for {dists.shape[0]} queries"
    mask = np.ones(dists.shape[1], dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
    row_of = {id_: j for j, id_ in enumerate(ids)}
    n_allowed = int(mask.sum())
    m = min(k, n_allowed)
    masked = np.where(mask[None, :], dists, np.inf)
    for qi, got in enumerate(res.ids):
        assert len(got) == m, f"query {qi}: {len(got)} results, expected {m}"
        assert len(set(got)) == len(got), f"query {qi}: duplicate ids {got}"
        foreign = [i for i in got if i not in row_of or not mask[row_of[i]]]
        assert not foreign, f"query {qi}: ids outside the searched set: {foreign[:5]}"
        rows = [row_of[i] for i in got]
        true_d = dists[qi, rows]
        got_d = np.asarray(res.distances[qi][:m], dtype=np.float64)
        np.testing.assert_allclose(got_d, true_d, rtol=tol, atol=tol, err_msg=f"query {qi}: distances")
        order = np.argsort(masked[qi], kind="stable")[:m]
        np.testing.assert_allclose(true_d, masked[qi, order], rtol=tol, atol=tol,
                                   err_msg=f"query {qi}: not the true top-{m}")
        expected_ids = [ids[j] for j in order]
        for pos, (a, b) in enumerate(zip(got, expected_ids)):
            if a != b:
                gap = abs(dists[qi, row_of[a]] - dists[qi, row_of[b]])
                assert gap <= tol, f"query {qi} rank {pos}: got {a!r}, brute force says {b!r} (gap {gap})"


# --- database snapshots ---------------------------------------------------------------------------------

def raw_client(url: str) -> redis.Redis | RedisCluster:
    """A plain binary client of the right kind for ``url`` (close it after use)."""
    if is_cluster_url(url):
        return RedisCluster.from_url(url)
    return redis.Redis.from_url(url)


def node_urls(url: str) -> list[str]:
    """The URL of every primary behind ``url`` (itself when it is not a cluster)."""
    if not is_cluster_url(url):
        return [url]
    with RedisCluster.from_url(url) as rc:
        return [f"redis://{n.host}:{n.port}/0" for n in rc.get_primaries()]


def db_snapshot(url: str) -> dict[str, Any]:
    """Every key of every primary as (DUMP payload, TTL state), plus each node's FUNCTION DUMP.

    TTLs are recorded as -1 (none) or "expiring" (their exact value ticks; a changed TTL state still shows).
    """
    snap: dict[str, Any] = {}
    for node_url in sorted(node_urls(url)):
        with redis.Redis.from_url(node_url) as r:
            keys: dict[bytes, tuple[bytes | None, object]] = {}
            for key in r.scan_iter(count=1000):
                ttl = r.pttl(key)
                keys[key] = (r.dump(key), "expiring" if ttl >= 0 else ttl)
            snap[node_url] = {"keys": keys, "functions": r.function_dump()}
    return snap


def assert_db_unchanged(before: dict[str, Any], after: dict[str, Any], what: str) -> None:
    for node in before.keys() | after.keys():
        b, a = before.get(node, {"keys": {}}), after.get(node, {"keys": {}})
        added = sorted(a["keys"].keys() - b["keys"].keys())
        removed = sorted(b["keys"].keys() - a["keys"].keys())
        changed = sorted(k for k in a["keys"].keys() & b["keys"].keys() if a["keys"][k] != b["keys"][k])
        assert not (added or removed or changed), (
            f"{what} changed the database on {node}: added {added[:5]}, removed {removed[:5]}, changed {changed[:5]}"
        )
        assert a.get("functions") == b.get("functions"), f"{what} changed the loaded functions on {node}"
