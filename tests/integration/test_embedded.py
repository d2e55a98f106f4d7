"""The embedded server under attack and under faults, with real processes (issue 11 items 6, 7, 8, 13, 20;
issue 13 items 10, 11; issue 15 item 6).

Attacks by another local user run as ``nobody`` through ``setpriv`` (the suite runs as root, here and in CI);
each shows the refusal and then that nothing changed. Lifetime tests kill real processes (SIGTERM, kill -9).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import embcache
from embcache.core.errors import InvalidInput, OpenDefaultUserWarning, ServerError, UntrustedHome
from embcache.redis import metrics, server
from embcache.redis.connection import normalize_url, redact_url
from embcache.redis.server import RedisServer, attach, free_port, stop_embedded
from tests.integration.test_acl import TALLY, Attacker  # the session's attack tally (test_security prints it)

REPO = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


def _can_drop_privileges() -> str | None:
    if os.geteuid() != 0:
        return "attacks as another local user need root to drop privileges (setpriv)"
    if shutil.which("setpriv") is None:
        return "setpriv is not installed (util-linux)"
    return None


needs_nobody = pytest.mark.skipif(_can_drop_privileges() is not None, reason=_can_drop_privileges() or "")


def tally(who: str, channel: str, refused: bool) -> bool:
    """Count one attack attempt in the session's tally (tests/integration/test_security.py prints it)."""
    entry = TALLY.setdefault((who, channel), [0, 0])
    entry[0] += 1
    entry[1] += 0 if refused else 1
    return refused


def as_nobody(*argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the unprivileged local user ``nobody``."""
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=timeout, cwd="/")


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory under /tmp that every local user can traverse (0755), as a shared machine's /home is.

    pytest's own tmp_path lies in a 0700 directory, where an attack by another user would fail for the wrong
    reason."""
    d = Path(tempfile.mkdtemp(prefix="embcache-srv-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for home in d.iterdir():
            if home.is_dir() and not home.is_symlink() and home.stat().st_uid == os.geteuid():
                try:
                    stop_embedded(home)
                except ServerError:
                    pass
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBCACHE_LINGER", "0")  # servers stop as soon as unused (the apps below inherit it)
    monkeypatch.delenv("EMBCACHE_URL", raising=False)


def _state(home: Path) -> dict:
    return json.loads((home / "server.json").read_text())


def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _alive(pid: int) -> bool:
    return server._alive(pid)


def _operator(share: server.Embedded) -> redis.Redis:
    return redis.Redis.from_url(share.url, password=share.password, decode_responses=True)


def _snapshot(r: redis.Redis) -> dict[str, object]:
    """Every key with its type and value, for 'nothing changed'."""
    out: dict[str, object] = {}
    for k in sorted(r.keys("*")):
        t = r.type(k)
        out[k] = (t, r.dump(k))
    return out


# --- 11.8: private home and files --------------------------------------------------------------------------
@needs_nobody
def test_home_is_0700_files_0600_and_another_user_reads_no_vector(base: Path) -> None:
    legacy = base / "legacy"  # a home made by an earlier version: 0755 with a 0644 AOF
    legacy.mkdir(mode=0o755)
    legacy.chmod(0o755)
    (legacy / "users.acl").write_text("")
    (legacy / "users.acl").chmod(0o644)
    with attach(legacy) as share:
        with embcache.connect(share.url, password=share.password, refresh_interval=0) as hub:
            hub.create_space("secret", dim=2, metric="l2").create_version().upsert(["s1"], [[3.25, 7.5]],
                                                                                    metadatas=[{"pin": "0042"}])
        with _operator(share) as r:
            r.config_set("appendfsync", "always")
            r.set("marker", "topsecret-0042")
        assert stat.S_IMODE(legacy.stat().st_mode) == 0o700
        files = [p for p in [*legacy.iterdir(), *(legacy / "appendonlydir").iterdir()] if p.is_file()]
        assert any(p.name.endswith(".aof") for p in files)
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert stat.S_IMODE((legacy / "appendonlydir").stat().st_mode) == 0o700
        aof = next(p for p in files if p.name.endswith(".incr.aof"))
        assert b"topsecret-0042" in aof.read_bytes()  # the attack below has something to find
        # the attack: read the AOF, list the home, read the password; then again with the directory opened
        # up by mistake (0711): the files themselves are owner-only
        for path in (aof, legacy / "operator.password", legacy / "users.acl"):
            got = as_nobody("cat", str(path))
            assert tally("local user", "files", got.returncode != 0 and "topsecret" not in got.stdout)
            assert "Permission denied" in got.stderr
        legacy.chmod(0o711)
        (legacy / "appendonlydir").chmod(0o711)
        try:
            for path in (aof, legacy / "operator.password"):
                got = as_nobody("cat", str(path))
                assert tally("local user", "files", got.returncode != 0), got
                assert "Permission denied" in got.stderr, got
                assert "topsecret" not in got.stdout and share.password not in got.stdout
        finally:
            legacy.chmod(0o700)
            (legacy / "appendonlydir").chmod(0o700)
        with _operator(share) as r:
            assert r.get("marker") == "topsecret-0042"


@needs_nobody
def test_a_home_another_user_controls_is_refused_and_its_planted_files_do_nothing(base: Path) -> None:
    # the attacker (nobody) owns a world-writable home with a `url`/`server.json` aimed at its own Redis and a
    # start.lock symlink aimed at the victim's file
    victim = base / "victim.txt"
    victim.write_text("precious\n")
    attacker_dir = base / "attacker-redis"
    attacker_dir.mkdir()
    shutil.chown(attacker_dir, "nobody", "nogroup")
    port = free_port()
    evil = subprocess.Popen([*NOBODY, server.find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(attacker_dir), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        evil_client = redis.Redis(port=port, decode_responses=True)
        assert _wait(lambda: _ping(evil_client))
        shared = base / "shared-home"
        shared.mkdir()
        as_nobody("ln", "-s", str(victim), str(shared / "start.lock"))
        for name, text in (("url", f"redis://127.0.0.1:{port}/0\n"),
                           ("server.json", json.dumps({"url": f"redis://127.0.0.1:{port}/0", "run_id": "x"}))):
            (shared / name).write_text(text)
        for p in shared.iterdir():
            os.lchown(p, 65534, 65534)
        shutil.chown(shared, "nobody", "nogroup")
        shared.chmod(0o777)
        before = evil_client.info("stats")["total_connections_received"]
        os.environ["EMBCACHE_HOME"] = str(shared)
        try:
            with pytest.raises(UntrustedHome, match="belongs to uid 65534"):
                embcache.connect(refresh_interval=0)
            tally("local user", "home", True)
            # the same directory owned by the victim but writable by others: refused too
            shutil.chown(shared, "root", "root")
            with pytest.raises(UntrustedHome, match="writable by other users"):
                embcache.connect(refresh_interval=0)
        finally:
            del os.environ["EMBCACHE_HOME"]
        assert victim.read_text() == "precious\n"  # not truncated
        assert evil_client.info("stats")["total_connections_received"] == before  # the victim never connected
        assert evil_client.dbsize() == 0
        assert not (shared / "operator.password").exists()  # no secret was written where the attacker reads
    finally:
        evil.terminate()
        evil.wait(10)


def _ping(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


def test_planted_symlinks_in_a_home_are_never_followed(base: Path) -> None:
    victim = base / "victim.txt"
    victim.write_text("precious\n")
    home = base / "home"
    home.mkdir(mode=0o700)
    (home / "start.lock").symlink_to(victim)  # planted while the directory was still open, say
    with pytest.raises(UntrustedHome, match="symbolic link"):
        attach(home)
    assert victim.read_text() == "precious\n"
    assert not (home / "server.json").exists() and not list(home.glob("*.aof"))
    (home / "start.lock").unlink()
    (home / "operator.password").symlink_to(victim)
    with pytest.raises(UntrustedHome, match="symbolic link"):
        attach(home)
    assert victim.read_text() == "precious\n"


# --- 11.6 and 11.7: no open default user, no open TCP ------------------------------------------------------
@needs_nobody
def test_default_user_has_a_password_and_a_principal_cannot_become_the_operator(base: Path) -> None:
    home = base / "home"
    with attach(home) as share, embcache.connect(share.url, password=share.password, refresh_interval=0) as hub:
        sp = hub.create_space("acl", dim=2, metric="l2")
        sp.create_version().upsert(["a"], [[1.0, 0.0]])
        with warnings_as_list() as caught:
            creds = hub.grant("reader1", space="acl", role="reader")
        assert not [w for w in caught if issubclass(w.category, OpenDefaultUserWarning)]
        with _operator(share) as op:
            before = _snapshot(op)
            users_before = op.acl_list()
        principal = redis.Redis.from_url(share.url, username=creds.username, password=creds.password)
        attacker = Attacker("reader (embedded)")
        attacker.run("AUTH default x", lambda: principal.execute_command("AUTH", "default", "x"),  # issue 11.6
                     expect=redis.AuthenticationError)
        attacker.run("AUTH default ''", lambda: principal.execute_command("AUTH", "default", ""),
                     expect=redis.AuthenticationError)
        attacker.raw(principal, "ACL", "SETUSER", "evil", "on", ">x", "+@all", "~*")  # still the reader
        principal.close()
        assert not attacker.problems, attacker.problems
        with pytest.raises(redis.RedisError, match="authenticated|NOAUTH"):  # no password at all: refused
            redis.Redis.from_url(share.url).ping()
        with _operator(share) as op:
            assert _snapshot(op) == before and op.acl_list() == users_before
            assert "nopass" not in op.acl_getuser("default")["flags"]
        assert (home / "users.acl").read_text().startswith("user default on #")
        assert share.password not in (home / "users.acl").read_text()  # only its hash


def test_grant_warns_loudly_on_a_server_whose_default_user_is_open(redis_url: str) -> None:
    with embcache.connect(redis_url, refresh_interval=0) as hub:
        hub.create_space("open", dim=2, metric="l2")
        with pytest.warns(OpenDefaultUserWarning, match="AUTH default"):
            hub.grant("r", space="open", role="reader")


@needs_nobody
def test_tcp_embedded_server_refuses_every_other_local_user(base: Path) -> None:
    port = free_port()
    home = base / "tcp"
    with attach(home, port=port) as share:
        assert share.url == f"redis://127.0.0.1:{port}/0"
        with _operator(share) as op:
            op.set("k", "v")
            before = _snapshot(op)
        for cmd in (["GET", "k"], ["SET", "k", "pwned"], ["FLUSHALL"], ["CONFIG", "SET", "dir", "/tmp"],
                    ["ACL", "LIST"]):
            got = as_nobody("redis-cli", "-p", str(port), *cmd)
            assert tally("local user", "tcp", "NOAUTH" in got.stdout + got.stderr), (cmd, got)
        for password in ("x", "", "default"):
            got = as_nobody("redis-cli", "-p", str(port), "--user", "default", "--pass", password,
                            "--no-auth-warning", "SET", "k", "pwned")
            assert tally("local user", "tcp", "WRONGPASS" in got.stdout + got.stderr
                         or "NOAUTH" in got.stdout + got.stderr), got
        with _operator(share) as op:
            assert _snapshot(op) == before and op.get("k") == "v"


def test_a_long_home_gets_a_private_socket_not_tcp(base: Path) -> None:
    home = base / ("x" * 90) / "home"
    with attach(home) as share:
        assert share.url.startswith("unix://") and len(share.url) < 108
        sock = Path(share.url[len("unix://"):])
        assert stat.S_ISSOCK(sock.lstat().st_mode) and stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        with _operator(share) as op:
            assert op.config_get("port")["port"] == "0"  # no TCP listener at all
            assert op.config_get("unixsocketperm")["unixsocketperm"] == "700"


# --- 11.13: output buffers of normal clients are bounded ---------------------------------------------------
def test_output_buffer_of_a_client_that_never_reads_is_bounded(tmp_path: Path) -> None:
    with attach(tmp_path / "home") as share, _operator(share) as op:
        assert op.config_get("client-output-buffer-limit")["client-output-buffer-limit"].startswith(
            "normal 1073741824 268435456 60 ")
        assert op.config_get("proto-max-bulk-len")["proto-max-bulk-len"] == str(16 << 20)
        with pytest.raises(redis.RedisError):  # one planted 17 MB value: refused
            op.set("huge", b"x" * (17 << 20))
        assert op.exists("huge") == 0
        # the attack, against the same mechanism at a small scale: 8 MB of replies asked for and never read.
        # GETRANGE, not GET: Valkey 8.1+ may send a stored value by reference (no copy in the output buffer, so
        # nothing counts against the limit and nothing needs bounding); a GETRANGE reply is always a copy
        op.config_set("client-output-buffer-limit", "normal 1mb 512kb 1")
        op.set("big", "x" * 100_000)
        import socket

        s = socket.socket(socket.AF_UNIX)
        s.connect(share.url[len("unix://"):])
        s.sendall(f"AUTH {share.password}\r\n".encode() + b"GETRANGE big 0 -1\r\n" * 80)
        try:
            # the attacker's socket stays open on its side: only the server can close it
            assert _wait(lambda: len(op.client_list()) == 1, 10), op.client_list()
            s.settimeout(5)
            received = b""
            while chunk := s.recv(1 << 20):
                received += chunk
            assert len(received) < 80 * 100_000  # cut off: it never got all it asked for
        finally:
            s.close()


# --- 13.10 and 15.6: lifetime --------------------------------------------------------------------------------
_APP = textwrap.dedent("""
    import os, sys, threading, time
    import embcache
    hub = embcache.connect(refresh_interval=0)
    v = hub.space("life").default_version() if "life" in hub.spaces() else hub.create_space("life", dim=2,
        metric="l2").create_version()
    leave = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), leave.set()), daemon=True).start()
    print("ready", hub.url, flush=True)
    i = 0
    while not leave.is_set():  # a line on stdin: leave normally (return from the script)
        v.upsert([f"{os.getpid()}-{i}"], [[float(i), 1.0]])  # every write must succeed, whoever else exits
        i += 1
        time.sleep(0.02)
    print("done", i, flush=True)
""")


@pytest.fixture
def app() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Start app processes (each uses the embedded server of the given home); all are killed at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(home: Path) -> subprocess.Popen[str]:
        procs.append(_app(home))
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


def _app(home: Path, **env: str) -> subprocess.Popen[str]:
    full = {**os.environ, "EMBCACHE_HOME": str(home), "PYTHONPATH": str(REPO), **env}
    full.pop("EMBCACHE_URL", None)
    p = subprocess.Popen([sys.executable, "-c", _APP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=full, cwd=str(REPO))
    line = p.stdout.readline() if p.stdout else ""
    assert line.startswith("ready"), (line, p.stderr.read() if p.stderr else "")
    return p


@pytest.mark.parametrize("linger", ["0", "default"])
def test_the_server_of_an_app_killed_by_sigterm_stops_and_keeps_its_data(
    tmp_path: Path, app: Callable, linger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if linger == "default":
        monkeypatch.delenv("EMBCACHE_LINGER")
    home = tmp_path / "home"
    app = app(home)
    pid = _state(home)["pid"]
    supervisor = _state(home)["supervisor"]
    time.sleep(0.3)
    app.send_signal(signal.SIGTERM)  # as uvicorn's supervisor stops it: no atexit runs
    app.wait(10)
    t0 = time.monotonic()
    assert _wait(lambda: not _alive(pid) and not _alive(supervisor)), "redis-server outlived the app"
    print(f"linger {linger}: server gone {time.monotonic() - t0:.2f} s after the app's SIGTERM")
    assert not (home / "server.json").exists() and not (home / "url").exists()
    monkeypatch.setenv("EMBCACHE_LINGER", "0")
    with attach(home) as share, embcache.connect(share.url, password=share.password, refresh_interval=0) as hub:
        assert _state(home)["pid"] != pid
        assert hub.space("life").default_version().count() > 0  # the data stayed


@pytest.mark.parametrize("how", ["exit", "kill9"])
def test_the_starter_exiting_or_killed_does_not_break_the_other_user(tmp_path: Path, how: str,
                                                                      app: Callable) -> None:
    home = tmp_path / "home"
    starter = app(home)
    run_id = _state(home)["run_id"]
    other = app(home)
    assert _state(home)["run_id"] == run_id  # shared, not a second server
    if how == "exit":
        out, err = starter.communicate("leave\n", timeout=30)
        assert starter.returncode == 0 and "done" in out, err
    else:
        starter.kill()
        starter.wait(10)
    with attach(home) as probe, _operator(probe) as op:
        assert _state(home)["run_id"] == run_id
        before = op.hlen(_vec_key(op))
        time.sleep(1.0)
        assert other.poll() is None, other.stderr.read() if other.stderr else ""
        assert op.hlen(_vec_key(op)) > before  # the other process kept writing
    pid = _state(home)["pid"]
    other.kill()
    other.wait(10)
    assert _wait(lambda: not _alive(pid) and not (home / "server.json").exists()), "no user left, server still up"


def _vec_key(op: redis.Redis) -> str:
    keys = [k for k in op.keys("emb:{life/*}:vec")]
    assert len(keys) == 1, keys
    return keys[0]


def test_a_killed_supervisor_takes_its_server_down_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    share = attach(home)
    try:
        with _operator(share) as op:
            op.set("kept", "1")
        state = _state(home)
        os.kill(state["supervisor"], signal.SIGKILL)
        assert _wait(lambda: not _alive(state["pid"]))  # PR_SET_PDEATHSIG: SIGTERM, AOF flushed
    finally:
        share.close()
    with attach(home) as again, _operator(again) as op:
        assert op.get("kept") == "1"
        assert _state(home)["run_id"] != state["run_id"]


def test_with_a_linger_consecutive_users_share_one_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("EMBCACHE_LINGER", "60")
    t0 = time.perf_counter()
    with attach(home):
        first = time.perf_counter() - t0
        pid = _state(home)["pid"]
    time.sleep(0.6)  # > the supervisor's poll: unused now, but within the linger
    t0 = time.perf_counter()
    with attach(home):
        second = time.perf_counter() - t0
        assert _state(home)["pid"] == pid
    print(f"attach: first {first * 1000:.0f} ms (start), second {second * 1000:.0f} ms (reuse)")
    assert stop_embedded(home) and not _alive(pid)
    assert not stop_embedded(home)


def test_a_stale_state_never_makes_connect_use_an_unrelated_redis(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "unrelated", port=free_port()) as other:
        home = tmp_path / "home"
        home.mkdir(mode=0o700)
        server._write_private(home / "server.json", json.dumps({"url": other.url, "run_id": "0" * 40, "pid": 1}))
        server._write_private(home / "url", other.url + "\n")
        os.environ["EMBCACHE_HOME"] = str(home)
        try:
            with embcache.connect(refresh_interval=0) as hub:
                assert hub.url != other.url and hub.url.startswith("unix://")
                hub.create_space("mine", dim=2)
        finally:
            del os.environ["EMBCACHE_HOME"]
        with redis.Redis.from_url(other.url) as r:
            assert r.dbsize() == 0  # nothing was created in the unrelated Redis


@needs_nobody
def test_a_stale_state_never_sends_the_password_to_another_users_redis(base: Path) -> None:
    attacker_dir = base / "attacker-redis"
    attacker_dir.mkdir()
    shutil.chown(attacker_dir, "nobody", "nogroup")
    port = free_port()
    evil = subprocess.Popen([*NOBODY, server.find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(attacker_dir), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        evil_client = redis.Redis(port=port, decode_responses=True)
        assert _wait(lambda: _ping(evil_client))
        home = base / "home"
        with attach(home, port=free_port()) as share:
            run_id = _state(home)["run_id"]
        assert _wait(lambda: not (home / "server.json").exists())
        # the victim's server is gone; its record now points at the attacker's port (same run_id even)
        server._write_private(home / "server.json",
                              json.dumps({"url": f"redis://127.0.0.1:{port}/0", "run_id": run_id, "pid": 1}))
        before = evil_client.info("stats")["total_connections_received"]
        with attach(home) as share:
            assert share.url != f"redis://127.0.0.1:{port}/0"
        assert evil_client.info("stats")["total_connections_received"] == before  # never connected to it
    finally:
        evil.terminate()
        evil.wait(10)


# --- 11.20 and 13.11: secrets, environment, schemes ---------------------------------------------------------
def test_a_password_in_the_url_is_never_in_repr_or_errors(redis_url: str) -> None:
    url = redis_url.replace("redis://", "redis://:s3cret-pw@")
    with embcache.connect(url, refresh_interval=0) as hub:  # an open default user accepts any password
        assert "s3cret-pw" not in repr(hub) and ":***@" in repr(hub)
    for bad in ("redis//:s3cret-pw@host:6379", "http://:s3cret-pw@host", "s3cret-pw", "mysql://u:s3cret-pw@h/db"):
        with pytest.raises(InvalidInput) as err:
            embcache.connect(bad)
        assert "s3cret-pw" not in str(err.value)
    for bad in ("redis://bob:s3cret-pw@127.0.0.1:notaport/0", "redis://u:s3cret-pw@[::1:6379/0",
                "redis://u:s3cret-pw@127.0.0.1:99999/0", "redis://u:s3cret-pw@127.0.0.1:1/0?socket_timeout=abc",
                "rediss://u:s3cret-pw@127.0.0.1:1/0?ssl_cert_reqs=bogus", "redis://u:s3cret-pw@127.0.0.1:1/0?protocol=9",
                "redis://127.0.0.1:1/0?password=s3cret-pw&socket_timeout=x"):
        with pytest.raises(InvalidInput, match="malformed") as err:
            embcache.connect(bad)
        assert "s3cret-pw" not in str(err.value)
    assert redact_url("redis://u:p@h:1/0?password=p2&db=1") == "redis://u:***@h:1/0?password=***&db=1"
    assert redact_url("unix:///run/redis.sock") == "unix:///run/redis.sock"


def test_credentials_in_the_url_name_the_principal_in_errors(redis_url: str) -> None:
    with embcache.connect(redis_url, refresh_interval=0) as hub:
        hub.create_space("urlsp", dim=2, metric="l2").create_version()
        creds = hub.grant("urlreader", space="urlsp", role="reader")
    url = redis_url.replace("redis://", f"redis://{creds.username}:{creds.password}@")
    with embcache.connect(url, refresh_interval=0) as hub:
        assert hub.username == creds.username
        with pytest.raises(embcache.PermissionDenied, match=f"principal '{creds.username}'") as err:
            hub.space("urlsp").default_version().upsert(["x"], [[1.0, 0.0]])
        assert creds.password not in str(err.value) and creds.password not in repr(hub)


def test_connect_reads_username_password_and_password_file_from_the_environment(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with embcache.connect(redis_url, refresh_interval=0) as hub:
        hub.create_space("envsp", dim=2, metric="l2")
        with pytest.warns(OpenDefaultUserWarning):
            creds = hub.grant("envreader", space="envsp", role="reader")
    monkeypatch.setenv("EMBCACHE_USERNAME", creds.username)
    monkeypatch.setenv("EMBCACHE_PASSWORD", creds.password)
    def is_the_reader(hub: embcache.Hub) -> bool:
        hub.space("envsp")  # a reader may read the space ...
        with pytest.raises(embcache.PermissionDenied):
            hub.create_space("not-for-readers", dim=2)  # ... and nothing an operator may
        return True

    with embcache.connect(redis_url, refresh_interval=0) as hub:
        assert hub.username == creds.username and is_the_reader(hub)
    monkeypatch.delenv("EMBCACHE_PASSWORD")
    pw = tmp_path / "pw"
    pw.write_text(creds.password + "\n")
    monkeypatch.setenv("EMBCACHE_PASSWORD_FILE", str(pw))
    with embcache.connect(redis_url, refresh_interval=0) as hub:
        assert is_the_reader(hub)
    monkeypatch.delenv("EMBCACHE_PASSWORD_FILE")
    with embcache.connect(redis_url, username=creds.username, password_file=pw, refresh_interval=0) as hub:
        assert is_the_reader(hub)
    pw.write_text("wrong\n")
    with pytest.raises(embcache.PermissionDenied):
        embcache.connect(redis_url, username=creds.username, password_file=pw)
    with pytest.raises(InvalidInput, match="cannot read"):
        embcache.connect(redis_url, password_file=tmp_path / "missing")


def test_valkey_urls_are_accepted(redis_url: str) -> None:
    with embcache.connect(redis_url.replace("redis://", "valkey://"), refresh_interval=0) as hub:
        hub.create_space("vk", dim=2)
        assert hub.spaces() == ["vk"] and hub.url.startswith("redis://")
    assert normalize_url("valkeys://h:6380/0") == "rediss://h:6380/0"


def test_metrics_bind_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("prometheus_client")
    import prometheus_client

    reg = prometheus_client.CollectorRegistry()
    monkeypatch.delenv("EMBCACHE_METRICS_ADDR", raising=False)
    try:
        port = metrics.enable(port=0, registry=reg)
        assert metrics._server is not None and metrics._server.server_address[0] == "127.0.0.1"
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # this machine's outward address
            probe.connect(("10.255.255.255", 1))
            outward = probe.getsockname()[0]
        if not outward.startswith("127."):  # the attack from the network side: refused
            with pytest.raises(OSError), socket.create_connection((outward, port), timeout=2):
                pass
        with socket.create_connection(("127.0.0.1", port), timeout=2) as ok:
            ok.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert ok.recv(12).startswith(b"HTTP/1.0 200")
        monkeypatch.setenv("EMBCACHE_METRICS_ADDR", "0.0.0.0")
        metrics.enable(port=0, registry=reg)
        assert metrics._server.server_address[0] == "0.0.0.0"
    finally:
        metrics.disable()


def test_the_worker_says_which_redis_it_serves_without_secrets(redis_url: str) -> None:
    with embcache.connect(redis_url, refresh_interval=0) as hub:
        wk = hub.create_worker_principal("logworker")
    url = redis_url.replace("redis://", f"redis://{wk.username}:{wk.password}@")
    env = {**os.environ, "PYTHONPATH": str(REPO), "EMBCACHE_URL": url}
    got = subprocess.run([sys.executable, "-m", "workers", "--burst", "--no-dispatch"], env=env, cwd=str(REPO),
                         capture_output=True, text=True, timeout=60)
    lines = [ln for ln in got.stderr.splitlines() if ln.startswith("embcache worker: data Redis")]
    assert len(lines) == 1, got.stderr
    assert wk.password not in got.stderr + got.stdout and f"{wk.username}:***@" in lines[0]


class warnings_as_list:
    """``warnings.catch_warnings(record=True)`` that records every warning."""

    def __enter__(self) -> list:
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return caught

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_embcache_redis_runs_until_stopped_or_killed(tmp_path: Path, how: str) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(REPO), "EMBCACHE_LINGER": "0"}
    fg = subprocess.Popen([sys.executable, "-m", "embcache", "redis", "--home", str(home)], env=env, cwd=str(REPO),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = fg.stderr.readline() if fg.stderr else ""
        assert "embcache: redis-server for" in line and "operator.password" in line, line
        pid = _state(home)["pid"]
        with attach(home) as share, _operator(share) as op:  # usable by others meanwhile
            op.set("k", "v")
        assert _alive(pid)  # the foreground command holds it
        if how == "stop":
            got = subprocess.run([sys.executable, "-m", "embcache", "redis", "stop", "--home", str(home)], env=env,
                                 cwd=str(REPO), capture_output=True, text=True, timeout=60)
            assert got.returncode == 0 and "stopped" in got.stdout, got.stderr
            assert fg.wait(20) == 0
        else:
            fg.kill()
            fg.wait(10)
        assert _wait(lambda: not _alive(pid) and not (home / "server.json").exists())
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait(10)
    with attach(home) as share, _operator(share) as op:
        assert op.get("k") == "v"


def test_the_async_client_uses_the_embedded_server_with_its_password(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import embcache.aio

    home = tmp_path / "home"
    monkeypatch.setenv("EMBCACHE_HOME", str(home))

    async def go() -> list[list[str]]:
        hub = await embcache.aio.connect(refresh_interval=0)
        try:
            v = await (await hub.create_space("a", dim=2, metric="l2")).create_version()
            await v.upsert(["x"], [[1.0, 0.0]])
            return (await v.query([[1.0, 0.0]], n_results=1, consistency="strong")).ids
        finally:
            await hub.close()

    assert asyncio.run(go()) == [["x"]]
    assert _wait(lambda: not (home / "server.json").exists())  # closed: its share given back, server stopped


def test_a_worker_takes_its_password_from_a_file_named_in_the_environment(redis_url: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with embcache.connect(redis_url, refresh_interval=0) as hub:
        wk = hub.create_worker_principal("filewk")
    pw = tmp_path / "pw"
    pw.write_text(wk.password + "\n")
    pw.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(REPO), "EMBCACHE_URL": redis_url, "EMBCACHE_USERNAME": wk.username,
           "EMBCACHE_PASSWORD_FILE": str(pw)}
    env.pop("EMBCACHE_PASSWORD", None)
    argv = [sys.executable, "-m", "workers", "--burst", "--no-dispatch"]
    got = subprocess.run(argv, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert f"as {wk.username}," in got.stderr and wk.password not in got.stderr + " ".join(argv)
    pw.write_text("wrong\n")  # and it really is the file's password that logs in
    got = subprocess.run(argv, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert got.returncode != 0 and wk.password not in got.stderr
    # the job side (a stock `rq worker` reads the environment): the same rule
    from embcache.redis.settings import WorkerSettings

    monkeypatch.setenv("EMBCACHE_USERNAME", wk.username)
    monkeypatch.delenv("EMBCACHE_PASSWORD", raising=False)
    monkeypatch.setenv("EMBCACHE_PASSWORD_FILE", str(pw))
    assert WorkerSettings.from_env().password == "wrong"
