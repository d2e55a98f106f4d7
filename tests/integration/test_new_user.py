"""What a new user trips on (issue 13), against real Redis servers: options where users put them, ``--version`` and
``python -m embcache``, a worker on a password-protected Redis, an import cut off by a timeout and resumed,
re-runnable set-up calls (``create_space(exist_ok=True)``, ``drop_version``) in the library, asyncio and the CLI,
scores beside distances, gzipped ``--items``, and the README's quick start run twice in a row."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

import embcache
import embcache.aio
from embcache.cli import main, transfer
from embcache.core.errors import AlreadyExists, InvalidInput, NotFound
from embcache.core.keys import Keys
from tests.conftest import REPO_ROOT
from tests.servers import start_standalone
from tests.workers_fixtures import WorkerPool, wait_for


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def seed(url: str, name: str = "s", n: int = 3, dim: int = 2) -> None:
    with embcache.connect(url) as hub:
        v = hub.create_space(name, dim=dim, metric="l2").create_version()
        v.upsert([f"k{i}" for i in range(n)], np.arange(n * dim, dtype=np.float32).reshape(n, dim))


# --- 1. options where users put them --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_connection_options_work_before_and_after_the_command(where: str, redis_url: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    seed(redis_url)
    opts = ["--url", redis_url, "--json"]
    argv = [*opts, "stats", "s"] if where == "before" else ["stats", "s", *opts]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["count"] == 3
    argv = [*opts, "query", "s", "--id", "k0", "-n", "1"] if where == "before" else \
        ["query", "s", "--id", "k0", "-n", "1", *opts]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and json.loads(out)[0]["results"][0]["id"] == "k1"


def test_the_command_line_beats_the_environment_and_the_group(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    seed(redis_url)
    monkeypatch.setenv("EMBCACHE_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    code, out, _ = run(capsys, "spaces", "--url", redis_url, "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["s"]
    code, out, _ = run(capsys, "--url", "redis://127.0.0.1:1/0", "spaces", "--url", redis_url)
    assert code == 0 and "s" in out.split()
    code, _, err = run(capsys, "spaces")  # the environment's URL is used: it answers nothing
    assert code == 1 and "Unavailable" in err and "--url or EMBCACHE_URL" in err


def test_version_and_python_dash_m(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"embcache {embcache.__version__}"
    proc = subprocess.run([sys.executable, "-m", "embcache", "--version"], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert proc.returncode == 0 and proc.stdout.strip() == f"embcache {embcache.__version__}", proc.stderr
    proc = subprocess.run([sys.executable, "-m", "embcache", "stats"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Missing argument 'SPACE'" in proc.stderr


def test_unknown_options_are_usage_errors(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["stats", "s", "--url", redis_url, "--no-such-option"])
    assert exc.value.code == 2 and "No such option '--no-such-option'" in capsys.readouterr().err


# --- 2. a worker against a password-protected Redis -----------------------------------------------------------


@pytest.fixture
def locked_redis(tmp_path: Path) -> Any:
    """A Redis with ``requirepass s3cret`` (set after start: the start-up ping has no password)."""
    server = start_standalone(tmp_path / "locked")
    try:
        with redis.Redis.from_url(server.url) as r:
            r.config_set("requirepass", "s3cret")
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("where", ["before", "after"])
def test_worker_on_a_password_protected_redis(where: str, locked_redis: Any, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("EMBCACHE_URL", "EMBCACHE_QUEUE_URL", "EMBCACHE_USERNAME", "EMBCACHE_PASSWORD",
                 "EMBCACHE_QUEUE_USERNAME", "EMBCACHE_QUEUE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)  # run_worker writes EMBCACHE_URL: restored after the test
    url = locked_redis.url
    (tmp_path / "pw").write_text("s3cret\n")
    with embcache.connect(url, password="s3cret") as hub:  # a dirty partition: the worker has a build to run
        hub.create_space("w", dim=2, metric="l2").create_version().upsert(["a", "b"], [[0.0, 1.0], [1.0, 0.0]])
    conn = ["--url", url, "--password-file", tmp_path / "pw"]
    argv = [*conn, "worker", "--burst"] if where == "before" else ["worker", "--burst", *conn]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    with redis.Redis.from_url(url, password="s3cret") as r:  # RQ's keys went to the data Redis, with its password
        assert r.exists("rq:queues") or r.keys("rq:*"), "the worker never reached its queue"

    code, _, err = run(capsys, "worker", "--burst", "--url", url, "--password", "wrong")
    assert code == 1 and "AuthenticationFailed" in err
    assert "check --username and --password" in err and "embcache grant" not in err
    code, _, err = run(capsys, "worker", "--burst", "--url", url)  # no password at all
    assert code == 1 and "AuthenticationFailed" in err and "embcache grant" not in err


def test_password_file(locked_redis: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = locked_redis.url
    code, _, err = run(capsys, "spaces", "--url", url, "--password-file", tmp_path / "missing")
    assert code == 1 and "cannot read the password file" in err and "Traceback" not in err
    (tmp_path / "pw").write_text("s3cret\n")
    code, _, err = run(capsys, "--password", "wrong", "spaces", "--url", url, "--password-file", tmp_path / "pw")
    assert code == 0, err  # the command's --password-file replaced the --password given before the command
    code, _, err = run(capsys, "--password-file", tmp_path / "pw", "spaces", "--url", url, "--password", "wrong")
    assert code == 1 and "AuthenticationFailed" in err  # and the other way round


def test_a_refused_command_still_gets_the_grants_hint(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed(redis_url)
    with embcache.connect(redis_url) as hub:
        creds = hub.grant("reader1", space="s", role="reader")
    code, _, err = run(capsys, "create-version", "s", "--url", redis_url, "--username", creds.username,
                       "--password", creds.password)
    assert code == 1 and "PermissionDenied" in err and "embcache grant" in err


# --- 3. an import cut off by a timeout resumes where it stopped -----------------------------------------------


def test_an_import_stopped_by_a_timeout_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server = start_standalone(tmp_path / "slow")
    try:
        url = server.url + "?socket_timeout=0.5&socket_connect_timeout=0.5"
        n, dim = 30_000, 4
        rng = np.random.default_rng(7)
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
        src = tmp_path / "rows.jsonl"
        src.write_text("".join(json.dumps({"id": f"r{i}", "embedding": vectors[i].tolist(), "n": i}) + "\n"
                               for i in range(n)))
        with embcache.connect(server.url) as hub:
            hub.create_space("imp", dim=dim, metric="l2").create_version()

        # Redis stops answering (SIGSTOP) once the import has written 2,000 rows: the stall is started by the import
        # itself, after a batch it wrote, so it always falls in the middle of the import whatever the machine's load
        real_write = transfer._write
        written = [0]
        stalled = threading.Event()

        def write_then_stall(version: Any, part: str, rows: list[Any], val: Any) -> int:
            got = real_write(version, part, rows, val)
            written[0] += got
            if written[0] >= 2_000 and not stalled.is_set():
                os.kill(server.process.pid, signal.SIGSTOP)
                stalled.set()
            return got

        monkeypatch.setattr(transfer, "_write", write_then_stall)
        argv = ["import", "imp", str(src), "--url", url, "--batch", "20"]
        try:
            code, _, err = run(capsys, *argv)
        finally:
            if stalled.is_set():
                os.kill(server.process.pid, signal.SIGCONT)
        monkeypatch.undo()
        assert stalled.is_set(), "the import never wrote 2,000 rows"
        assert code == 1, err
        assert "Redis timed out (no answer within the socket timeout" in err and "unreachable" not in err, err
        resume = re.search(r"--version (\S+) --resume-from (\d+)", err)
        assert resume is not None, err
        version, row = resume.group(1), int(resume.group(2))
        assert version == "v1" and 2_000 <= row < n
        with embcache.connect(server.url) as hub:
            v = hub.space("imp").version("v1")
            got = v.get([f"r{i}" for i in range(row)], include=())
            assert len(got.ids) == row  # every row before the one named is there

        code, out, err = run(capsys, *argv, "--version", version, "--resume-from", row, "--json")
        assert code == 0, err
        summary = json.loads(out)
        assert summary["resumed_from"] == row and summary["rows_read"] == n and summary["rejected"] == 0
        assert summary["imported"] == n - row
        with embcache.connect(server.url) as hub:
            v = hub.space("imp").version("v1")
            assert v.count() == n
            got = v.get([f"r{i}" for i in range(n)], include=("embeddings", "metadatas"))
            order = np.argsort([int(i[1:]) for i in got.ids])
            np.testing.assert_array_equal(got.embeddings[order], vectors)
            assert [got.metadatas[j]["n"] for j in order] == list(range(n))
    finally:
        server.stop()


def test_resume_refuses_a_new_version(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed(redis_url)
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"id": "x", "embedding": [1.0, 2.0]}) + "\n")
    code, _, err = run(capsys, "import", "s", src, "--url", redis_url, "--new-version", "--resume-from", 1)
    assert code == 1 and "instead of --new-version" in err


# --- 4. re-runnable set-up: create_space(exist_ok=True), drop_version -----------------------------------------


def test_create_space_exist_ok_and_drop_version(redis_url: str) -> None:
    with embcache.connect(redis_url) as hub:
        a = hub.create_space("re", dim=2, metric="l2")
        b = hub.create_space("re", dim=2, metric="l2", exist_ok=True)
        assert b.record == a.record
        with pytest.raises(AlreadyExists):
            hub.create_space("re", dim=2, metric="l2")
        with pytest.raises(AlreadyExists, match="dim=2 .asked for 3"):
            hub.create_space("re", dim=3, metric="l2", exist_ok=True)
        v1, v2 = a.create_version(), a.create_version()
        v1.upsert(["a", "b"], [[0.0, 1.0], [1.0, 0.0]], partition="p1")
        v1.upsert(["c"], [[1.0, 1.0]], partition="p2")
        v2.upsert(["a"], [[5.0, 5.0]])
        a.set_alias("live", v1)
        a.set_alias("live", v2)
        with pytest.raises(InvalidInput, match="'live'"):
            a.drop_version("v2")  # live points at it
        a.drop_version("v1")
        assert [v.name for v in a.versions()] == ["v2"]
        with pytest.raises(NotFound):
            a.version("v1")
        with pytest.raises(NotFound):
            a.drop_version("v1")
        assert a.alias_history("live") == [] or "v1" not in a.alias_history("live")
        r = hub.store.r
        assert not [k for k in r.scan_iter("emb:{re/v1/*") if k], "v1's partition keys are left"
        assert not [k for k in r.scan_iter("emb:{re}:*v1*")]
        assert a.version("live").get(["a"]).embeddings.tolist() == [[5.0, 5.0]]  # v2 untouched
        assert a.create_version().name == "v3"  # numbering goes on


def test_only_the_operator_drops_a_version(redis_url: str) -> None:
    seed(redis_url, "op")
    with embcache.connect(redis_url) as hub:
        creds = hub.grant("adm", space="op", role="admin")
        hub.space("op").create_version()
    with embcache.connect(redis_url, username=creds.username, password=creds.password) as admin:
        with pytest.raises(embcache.PermissionDenied):
            admin.space("op").drop_version("v2")
    with embcache.connect(redis_url) as hub:
        assert [v.name for v in hub.space("op").versions()] == ["v1", "v2"]
        assert hub.space("op").version("v1").count() == 3


def test_asyncio_twins(redis_url: str) -> None:
    async def go() -> None:
        hub = await embcache.aio.connect(redis_url)
        try:
            sp = await hub.create_space("ax", 2, "l2")
            again = await hub.create_space("ax", 2, "l2", exist_ok=True)
            assert again.name == sp.name
            await sp.create_version()
            await sp.create_version()
            await sp.drop_version("v1")
            assert [v.name for v in await sp.versions()] == ["v2"]
        finally:
            await hub.close()

    asyncio.run(go())


def test_cli_exist_ok_and_drop_version(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):  # a set-up script run twice
        code, _, err = run(capsys, "create-space", "c", "--dim", 2, "--metric", "l2", "--exist-ok", "--url", redis_url)
        assert code == 0, err
    code, _, err = run(capsys, "create-space", "c", "--dim", 2, "--url", redis_url)
    assert code == 1 and "AlreadyExists" in err
    run(capsys, "create-version", "c", "--url", redis_url)
    run(capsys, "create-version", "c", "--url", redis_url)
    code, _, err = run(capsys, "drop-version", "c", "v1", "--url", redis_url)
    assert code == 1 and "--yes" in err
    code, out, err = run(capsys, "drop-version", "c", "v1", "--yes", "--url", redis_url, "--json")
    assert code == 0 and json.loads(out) == {"dropped": "c/v1"}, err
    code, out, _ = run(capsys, "versions", "c", "--url", redis_url, "--json")
    assert [v["name"] for v in json.loads(out)] == ["v2"]
    code, _, err = run(capsys, "drop-version", "c", "v9", "--yes", "--url", redis_url)
    assert code == 1 and "embcache versions c" in err


# --- 5. distances and scores ----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_scores_are_similarities(metric: str, redis_url: str) -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    q = rng.normal(size=(2, 8)).astype(np.float32)
    with embcache.connect(redis_url) as hub:
        v = hub.create_space(f"m-{metric}", dim=8, metric=metric).create_version()
        v.upsert([str(i) for i in range(50)], base)
        res = v.query(q, n_results=5, consistency="strong")
    b64, q64 = base.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        b64 /= np.linalg.norm(b64, axis=1, keepdims=True)
        q64 /= np.linalg.norm(q64, axis=1, keepdims=True)
    for i in range(2):
        rows = [int(x) for x in res.ids[i]]
        if metric == "l2":
            want_d = ((b64[rows] - q64[i]) ** 2).sum(1)
            want_s = -want_d
        else:
            want_s = b64[rows] @ q64[i]
            want_d = 1 - want_s
        np.testing.assert_allclose(res.distances[i], want_d, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(res.scores[i], want_s, rtol=1e-4, atol=1e-4)
        assert list(res.scores[i]) == sorted(res.scores[i], reverse=True)  # bigger is nearer


# --- 11. gzipped --items ---------------------------------------------------------------------------------------


def test_items_may_be_gzipped(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "create-space", "g", "--dim", 2, "--url", redis_url)
    np.save(tmp_path / "v.npy", np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32))
    with gzip.open(tmp_path / "items.jsonl.gz", "wt", encoding="utf-8") as f:
        for i, genre in enumerate(["a", "b", "a"]):
            f.write(json.dumps({"id": f"m{i}", "genre": genre}) + "\n")
    code, out, err = run(capsys, "import", "g", "--vectors", tmp_path / "v.npy", "--items", tmp_path / "items.jsonl.gz",
                         "--url", redis_url, "--json")
    assert code == 0, err
    assert json.loads(out)["imported"] == 3
    with embcache.connect(redis_url) as hub:
        got = hub.space("g").version("v1").get(["m2"], include=("metadatas",))
        assert got.metadatas == [{"genre": "a"}]
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    np.save(tmp_path / "one.npy", np.ones((1, 2), dtype=np.float32))
    code, _, err = run(capsys, "import", "g", "--vectors", tmp_path / "one.npy", "--items", tmp_path / "bad.jsonl.gz",
                       "--url", redis_url)
    assert code == 1 and "bad.jsonl.gz: cannot be read" in err


# --- the README's quick start, twice ---------------------------------------------------------------------------


def test_the_readme_quick_start_runs_twice_in_a_row(redis_url: str, workers: WorkerPool,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    monkeypatch.setenv("EMBCACHE_URL", redis_url)  # embcache.connect() without a URL: here, the test Redis
    workers.start(redis_url)
    for run_no in range(2):
        ns: dict[str, Any] = {}
        exec(compile(code, f"README quick start, run {run_no + 1}", "exec"), ns)  # noqa: S102
        ns["hub"].close()
    with embcache.connect(redis_url) as hub:
        space = hub.space("quickstart")
        assert [v.name for v in space.versions()] == ["v2"]  # the re-run dropped the first run's version
        assert space.aliases() == {"live": "v2"}
    printed = capsys.readouterr().out
    assert printed.count("analytics") >= 1 and "Traceback" not in printed


# --- 13. the servers embcache supports -------------------------------------------------------------------------


def test_the_server_under_test_is_a_supported_one(redis_url: str) -> None:
    """Redis 7.0+ or Valkey 8+; under scripts/test-valkey.sh (EMBCACHE_EXPECT_SERVER=valkey) it must be Valkey."""
    with redis.Redis.from_url(redis_url) as r:
        info = r.info("server")
    valkey = info.get("server_name") == "valkey" or "valkey_version" in info
    if os.environ.get("EMBCACHE_EXPECT_SERVER") == "valkey":
        assert valkey, f"expected Valkey, the tests run on {info.get('redis_version')}"
    version = tuple(int(x) for x in str(info.get("valkey_version") or info["redis_version"]).split(".")[:2])
    assert version >= ((8, 0) if valkey else (7, 0)), info


# --- 8. the FastAPI example runs as its docstring says; 9. compose.yaml ----------------------------------------


def test_the_fastapi_example_runs_under_uvicorn(redis_url: str, tmp_path: Path) -> None:
    import tomllib

    import httpx

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("uvicorn") for dep in extras["examples"])
    seed(redis_url, "demo-movies", n=5)
    from embcache.redis.server import free_port

    port = free_port()
    env = {**os.environ, "EMBCACHE_URL": redis_url}
    uvicorn = Path(sys.executable).with_name("uvicorn")  # the docstring's `.venv/bin/uvicorn examples.fastapi_app:app`
    proc = subprocess.Popen([str(uvicorn), "examples.fastapi_app:app", "--port", str(port), "--host", "127.0.0.1"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/similar/k0", params={"n": 2}, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not answer within 60 s"
                time.sleep(0.1)
        assert r.status_code == 200, r.text
        assert [row["id"] for row in r.json()["results"]] == ["k1", "k2"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]


def test_compose_mounts_the_repository_read_only_and_waits_for_the_workers() -> None:
    import yaml  # PyYAML (dev extra): only to read the file; compose itself is not run here
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("worker", "demo"):
        mounts = [m for m in services[name]["volumes"] if m.split(":")[1] == "/src"]
        assert mounts and all(m.endswith(":ro") for m in mounts), (name, mounts)
    assert services["demo"]["depends_on"]["worker"] == {"condition": "service_healthy"}
    assert "dispatcher_lock" in " ".join(services["worker"]["healthcheck"]["test"])


def test_the_compose_worker_healthcheck_runs_and_sees_the_dispatcher(redis_url: str, workers: WorkerPool) -> None:
    """The worker's healthcheck command, run as compose runs it: unhealthy (1) before a dispatcher holds its lock,
    healthy (0) while one does. An import error or a renamed key helper makes it exit otherwise."""
    import yaml

    test = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]["worker"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    env = {**os.environ, "EMBCACHE_URL": redis_url}

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", test[3]], env=env, capture_output=True, text=True, timeout=60)

    before = check()
    assert before.returncode == 1, before.stderr
    workers.start(redis_url)
    lock = Keys("emb").dispatcher_lock()
    with redis.Redis.from_url(redis_url) as r:
        wait_for(lambda: r.exists(lock), timeout=60, what="the worker's dispatcher lock")
    during = check()
    assert during.returncode == 0, during.stderr
