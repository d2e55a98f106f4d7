"""The embedded default: a private ``redis-server`` that embcache starts, shares and stops itself.

``embcache.connect()`` with no URL (and no ``EMBCACHE_URL``) calls :func:`attach`: it reuses the server of
``EMBCACHE_HOME`` (default ``$XDG_DATA_HOME/embcache``, else ``~/.local/share/embcache``) when one runs there and
proves to be that home's own, and otherwise starts one. Lifetime, in one rule: **the server runs while any
process uses it, plus a linger** (``EMBCACHE_LINGER`` seconds; 5 for a library ``connect()``, so an app's
server ends with the app however the app ends; the CLI sets 600 so that a sequence of commands shares one).
The reference count is kept by the kernel: every user holds ``flock(LOCK_SH)`` on ``HOME/users.lock``, which
is released when the process closes its hubs or dies (exit, SIGTERM, kill -9); a small supervisor
(:mod:`embcache.supervisor`) stops Redis when no share has been held for the linger.

Security: the home must be a directory of the current user that no other user can write to (else
:class:`~embcache.errors.UntrustedHome`); it is kept 0700 and its files 0600 (Redis runs with umask 077). The
``default`` user has a generated password (``HOME/operator.password``, 0600), which the owner's own
connections use; Redis listens on a Unix socket only (0700), in the home or, when that path is too long for a
socket, in a private runtime directory; ``embcache redis --port`` listens on loopback TCP, behind the same
password. Before a process uses a running server it checks that the socket (or TCP listener) belongs to the
current user and that the server's ``run_id`` is the one recorded in ``HOME/server.json``, so a stale file
never makes it talk to another Redis, and never sends the password to another user's.

:class:`RedisServer` is also what the tests and benchmarks use to start throw-away servers on free ports.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ServerError, UntrustedHome

__all__ = [
    "RedisServer", "Embedded", "attach", "ensure_embedded", "embedded_password", "stop_embedded", "serve",
    "embedded_home", "find_redis_server", "free_port", "CLIENT_OUTPUT_BUFFER_LIMIT",
    "PROTO_MAX_BULK_LEN",
]

_INSTALL_HINT = (
    "redis-server was not found on PATH. Install it with your package manager, e.g. "
    "'sudo apt-get install -y redis-server' (Debian/Ubuntu), or point embcache at a running Redis "
    "with embcache.connect('redis://host:6379/0') or EMBCACHE_URL."
)
_MAX_UNIX_PATH = 100  # sockaddr_un.sun_path is 108 bytes on Linux; keep a margin
# A client that stops reading its replies (pipelined reads never read back) is disconnected once Redis holds
# 1 GiB of replies for it, or 256 MiB for 60 s; Redis's default for normal clients is no limit at all. The
# largest legitimate single reply is one partition's snapshot (an MGET of its chunks): 101 MB for 59,000 x 384.
CLIENT_OUTPUT_BUFFER_LIMIT = "normal 1gb 256mb 60"
# The largest value embcache writes is an 8 MiB snapshot chunk; Redis accepts 512 MB per value by default, and
# one huge value a writer planted raw costs every reader that touches it.
PROTO_MAX_BULK_LEN = "16mb"


def find_redis_server() -> str:
    """Path of the ``redis-server`` binary (``EMBCACHE_REDIS_SERVER`` overrides); :class:`ServerError` if none."""
    override = os.environ.get("EMBCACHE_REDIS_SERVER")
    if override:
        if not os.access(override, os.X_OK):
            raise ServerError(f"EMBCACHE_REDIS_SERVER={override} is not an executable file. {_INSTALL_HINT}")
        return override
    path = shutil.which("redis-server")
    if not path:
        for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"):
            if os.access(candidate, os.X_OK):
                path = candidate
                break
    if not path:
        raise ServerError(_INSTALL_HINT)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def embedded_home() -> Path:
    """Directory of the embedded server's data: ``EMBCACHE_HOME`` or ``$XDG_DATA_HOME/embcache``."""
    home = os.environ.get("EMBCACHE_HOME")
    if home:
        return Path(home).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "embcache"


class RedisServer:
    """One ``redis-server`` process with its data in ``directory``.

    >>> with RedisServer(tmp_path, port=free_port()) as srv:   # doctest: +SKIP
    ...     hub = embcache.connect(srv.url)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        port: int | None = None,
        unix_socket: bool | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        extra_args: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock = Path(socket_path) if socket_path is not None else self.directory / "redis.sock"
        if unix_socket is None:
            unix_socket = port is None and (socket_path is not None or len(str(sock)) <= _MAX_UNIX_PATH)
        self.socket_path = sock if unix_socket else None
        self.port = 0 if unix_socket and port is None else (port or free_port())
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect with."""
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    def argv(self, *, daemonize: bool = False) -> list[str]:
        """The redis-server command line."""
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--logfile", "redis.log",
            "--pidfile", str(self.pidfile),
            "--daemonize", "yes" if daemonize else "no",
            "--client-output-buffer-limit", CLIENT_OUTPUT_BUFFER_LIMIT,
            "--proto-max-bulk-len", PROTO_MAX_BULK_LEN,
        ]
        acl = self.directory / "users.acl"  # so that grants survive restarts (ACL SAVE writes it)
        acl.touch(mode=0o600, exist_ok=True)
        args += ["--aclfile", str(acl)]
        if self.socket_path is not None:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return args + self.extra_args

    def ping(self, timeout: float = 0.5) -> bool:
        """True when a server answers PING at :attr:`url`."""
        import redis

        try:
            client = redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout: float = 15.0) -> "RedisServer":
        """Start the server and wait until it answers; :class:`ServerError` with its log tail otherwise."""
        if self.socket_path is not None and self.socket_path.exists():
            self.socket_path.unlink()
        self.process = subprocess.Popen(
            self.argv(), cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for the client must not kill the server before it stops cleanly
            umask=0o077,  # the AOF holds every vector: owner-only files
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"redis-server exited at start: {self._log_tail()}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"redis-server did not answer within {timeout}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        err = b""
        if self.process is not None and self.process.stderr is not None and self.process.poll() is not None:
            err = self.process.stderr.read() or b""
        log = self.directory / "redis.log"
        text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        return (err.decode(errors="replace") + text).strip() or "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: Redis flushes the AOF first)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the embedded server ----------------------------------------------------------------------------------
SUPERVISOR = Path(__file__).with_name("supervisor.py")
STATE_FILE = "server.json"
PASSWORD_FILE = "operator.password"
START_TIMEOUT = 120.0  # seconds: loading a large AOF takes a while (600 MB: about 2 s)
VERIFY_TIMEOUT = 5.0
# seconds a library app's server outlives its last user: long enough that an app opening and closing hubs in a
# loop does not restart Redis each time, short enough that it ends with the app (the CLI sets 600)
DEFAULT_LINGER = 5.0
_MAX_STATE_BYTES = 64 << 10


@dataclass(eq=False)
class Embedded:
    """A share of the embedded server of :attr:`home`: it runs at least until :meth:`close` (or process exit).

    The operator password is the one of the home's ``default`` user; it never appears in the repr."""

    url: str
    home: Path
    password: str = field(repr=False)
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Give the share back (idempotent); the server stops once no process holds one for the linger."""
        if not self._closed:
            self._closed = True
            _release(self.home)

    def __enter__(self) -> "Embedded":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_refs_lock = threading.Lock()
_refs: dict[Path, list[int]] = {}  # home -> [fd holding LOCK_SH on users.lock, shares in this process]
_kept: list[Embedded] = []  # shares held for the life of the process (ensure_embedded, embedded_password)


def attach(home: str | os.PathLike[str] | None = None, *, port: int | None = None,
           linger: float | None = None) -> Embedded:
    """A share of the embedded server of ``home`` (default :func:`embedded_home`): the running one when it is
    verified as the home's own, else a new one (on loopback TCP ``port`` if given, else a Unix socket).

    ``linger``: seconds the server stays up once unused (default ``EMBCACHE_LINGER``, else 5; ``math.inf``:
    until :func:`stop_embedded`); it is fixed when the server starts. :class:`~embcache.errors.UntrustedHome`
    when another user could write to the home, :class:`~embcache.errors.ServerError` when no server starts."""
    linger = _linger(linger)
    path = _private_home(Path(home) if home is not None else embedded_home())
    with _start_lock(path):
        password = _operator_password(path)
        state = _read_state(path)
        if state is not None and _verify(state, password):
            url = state["url"]
        else:
            _refuse_if_running(path)
            _remove(path / STATE_FILE)
            url = _start(path, password, linger, port)
        _acquire(path)  # under the start lock: the supervisor cannot decide "unused" in between
    return Embedded(url, path, password)


def ensure_embedded(home: str | os.PathLike[str] | None = None) -> str:
    """URL of the embedded server of ``home``, with a share held until this process exits (see :func:`attach`)."""
    share = attach(home)
    _kept.append(share)
    return share.url


def embedded_password(url: str) -> str | None:
    """The operator password for ``url`` when it is the embedded server of ``EMBCACHE_HOME`` (or of the home its
    Unix socket lies in), verified as the home's own; the process then holds a share until it exits. None for
    any other URL: the password is never sent to a server that is not the home's."""
    with _refs_lock:
        for share in _kept:
            if share.url == url and not share._closed:
                return share.password
    candidates = [embedded_home()]
    if url.startswith("unix://"):
        candidates.append(Path(url[len("unix://"):].split("?", 1)[0]).parent)
    for home in candidates:
        try:
            state = _read_state(Path(home))
        except (OSError, ServerError):
            continue
        if state is None or state.get("url") != url:
            continue
        try:
            share = attach(home)
        except ServerError:
            return None
        if share.url != url:  # the server of that home changed meanwhile
            share.close()
            return None
        _kept.append(share)
        return share.password
    return None


def stop_embedded(home: str | os.PathLike[str] | None = None, timeout: float = 60.0) -> bool:
    """Stop the embedded server of ``home`` now (SHUTDOWN: Redis flushes its AOF), whoever uses it.
    True if one was running; False if none was (or a stale record named a server that is not the home's)."""
    import redis

    path = _private_home(Path(home) if home is not None else embedded_home())
    with _start_lock(path):
        state = _read_state(path)
        password = _operator_password(path)
        if state is None or not _verify(state, password):
            _remove(path / STATE_FILE)
            return False
        client = redis.Redis.from_url(state["url"], password=password, socket_timeout=timeout)
        try:
            client.shutdown()
        except redis.ConnectionError:
            pass  # SHUTDOWN closes the connection: that is the success case
        finally:
            client.close()
        deadline = time.monotonic() + timeout
        while _alive(state.get("pid")) and time.monotonic() < deadline:
            time.sleep(0.05)
        _remove(path / STATE_FILE)
        _remove(path / "url")
        return True


def serve(home: str | os.PathLike[str] | None = None, *, port: int | None = None,
          announce: Any = None) -> None:
    """``embcache redis``: hold a share of the home's server until SIGINT/SIGTERM, then stop the server.
    ``announce(url)`` is called once it runs. Killed with -9, the share is dropped like any other user's."""
    share = attach(home, port=port)
    if port is not None and share.url != f"redis://127.0.0.1:{port}/0":
        share.close()
        raise ServerError(f"the server of {share.home} already runs at {share.url}; stop it first with "
                          "`embcache redis stop`")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if announce is not None:
            announce(share.url)
        while not stop.wait(0.5):
            state = _read_state(share.home)
            if state is None or state.get("url") != share.url or not _alive(state.get("pid")):
                break  # stopped from elsewhere (`embcache redis stop`)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        share.close()
        stop_embedded(share.home)


# -- shares -------------------------------------------------------------------------------------------------
def _acquire(home: Path) -> None:
    with _refs_lock:
        ref = _refs.get(home)
        if ref is None:
            fd = _open_nofollow(home / "users.lock", os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_SH)  # the supervisor takes LOCK_EX only under the start lock, which we hold
            _refs[home] = [fd, 1]
        else:
            ref[1] += 1


def _release(home: Path) -> None:
    with _refs_lock:
        ref = _refs.get(home)
        if ref is None:
            return
        ref[1] -= 1
        if ref[1] <= 0:
            del _refs[home]
            os.close(ref[0])  # never LOCK_UN: a forked child sharing this descriptor still uses the server


def _linger(linger: float | None) -> float | None:
    if linger is None:
        raw = os.environ.get("EMBCACHE_LINGER") or str(DEFAULT_LINGER)
        try:
            linger = float(raw)
        except ValueError:
            raise ServerError(f"EMBCACHE_LINGER must be a number of seconds, got {raw!r}") from None
    if math.isnan(linger) or linger < 0:
        raise ServerError(f"linger must be >= 0 seconds, got {linger!r}")
    return None if math.isinf(linger) else float(linger)


# -- the home and its files ---------------------------------------------------------------------------------
def _private_home(home: Path) -> Path:
    """``home`` resolved, created 0700 if missing; :class:`UntrustedHome` unless only this user can change it."""
    home = home.expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ServerError(f"cannot create EMBCACHE_HOME {home}: {exc.strerror}") from None
    real = home.resolve()
    uid = os.geteuid()
    st = os.stat(real)
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedHome(f"EMBCACHE_HOME {real} is not a directory")
    if st.st_uid != uid:
        raise UntrustedHome(f"EMBCACHE_HOME {real} belongs to uid {st.st_uid}, not to this user (uid {uid}): "
                            "another user controls what is in it. Use a directory of your own.")
    if st.st_mode & 0o022:
        raise UntrustedHome(f"EMBCACHE_HOME {real} is writable by other users (mode {stat.filemode(st.st_mode)}): "
                            "they could have planted files in it. Check its contents, then `chmod 700` it.")
    for parent in real.parents:
        pst = os.stat(parent)
        if pst.st_uid not in (0, uid) or (pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX):
            raise UntrustedHome(f"EMBCACHE_HOME {real} lies in {parent}, which another user can change "
                                f"(owner uid {pst.st_uid}, mode {stat.filemode(pst.st_mode)}): they could replace it")
    _make_private(real)
    return real


def _make_private(home: Path) -> None:
    """0700 for the home and 0600 for its files: homes made by earlier versions were 0755 with 0644 files."""
    if os.stat(home).st_mode & 0o077:
        os.chmod(home, 0o700)
    for directory in (home, home / "appendonlydir"):
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(entry.path, 0o600)
            elif stat.S_ISDIR(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(entry.path, 0o700)


def _open_nofollow(path: Path, flags: int) -> int:
    """Open a file of the home without following a symlink planted there (ELOOP: refused, nothing touched)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedHome(f"{path} is a symbolic link: refusing to open it (someone may aim it at "
                                "another file); remove it") from None
        raise


@contextlib.contextmanager
def _start_lock(home: Path) -> Iterator[None]:
    fd = _open_nofollow(home / "start.lock", os.O_RDWR | os.O_CREAT)  # no O_TRUNC: a lock needs no content
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # two processes starting at once must not start two servers
        yield
    finally:
        os.close(fd)


def _read_private(path: Path) -> str | None:
    """The text of one of the home's own files; None if missing or not a regular file of this user."""
    try:
        fd = _open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        return f.read(_MAX_STATE_BYTES).decode(errors="replace")


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically by a new 0600 file (a rename replaces a planted symlink, never its target)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = _open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _operator_password(home: Path) -> str:
    """The ``default`` user's password, generated at first use and kept in ``HOME/operator.password`` (0600)."""
    text = _read_private(home / PASSWORD_FILE)
    password = (text or "").strip()
    if len(password) != 64 or any(c not in "0123456789abcdef" for c in password):
        password = secrets.token_hex(32)
        _write_private(home / PASSWORD_FILE, password + "\n")
    return password


def _write_acl(home: Path, password: str) -> None:
    """Put the protected ``default`` user into the ACL file, keeping the principals ``ACL SAVE`` wrote there."""
    acl = home / "users.acl"
    lines = [line for line in (_read_private(acl) or "").splitlines()
             if line.strip() and not line.startswith("user default ")]
    digest = hashlib.sha256(password.encode()).hexdigest()
    _write_private(acl, "\n".join([f"user default on #{digest} ~* &* +@all", *lines]) + "\n")


def _read_state(home: Path) -> dict[str, Any] | None:
    text = _read_private(home / STATE_FILE)
    if text is None:
        return None
    try:
        state = json.loads(text)
    except ValueError:
        return None
    return state if isinstance(state, dict) and isinstance(state.get("url"), str) else None


# -- is it the home's own server? --------------------------------------------------------------------------
def _verify(state: dict[str, Any], password: str) -> bool:
    """True when ``state``'s server is this user's and carries the recorded run_id (the token of one start)."""
    import redis

    url, run_id = state.get("url"), state.get("run_id")
    if not isinstance(url, str) or not isinstance(run_id, str) or not _listener_is_ours(url):
        return False  # checked before the password is sent anywhere
    try:
        client = redis.Redis.from_url(url, password=password, socket_timeout=VERIFY_TIMEOUT,
                                      socket_connect_timeout=VERIFY_TIMEOUT)
        try:
            return client.info("server").get("run_id") == run_id
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def _listener_is_ours(url: str) -> bool:
    """The process behind ``url`` runs as this user: SO_PEERCRED for a socket, /proc/net/tcp for loopback TCP."""
    uid = os.geteuid()
    if url.startswith("unix://"):
        path = url[len("unix://"):].split("?", 1)[0]
        try:
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(VERIFY_TIMEOUT)
                s.connect(path)
                _pid, peer_uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            return peer_uid == uid
        except OSError:
            return False
    prefix = "redis://127.0.0.1:"
    if not url.startswith(prefix):
        return False
    try:
        port = int(url[len(prefix):].split("/", 1)[0])
        with open("/proc/net/tcp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except (ValueError, OSError):
        return False  # cannot tell who listens there: do not trust it
    local = f"0100007F:{port:04X}"
    return any(r[1] == local and r[3] == "0A" and int(r[7]) == uid for r in rows if len(r) > 7)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def _refuse_if_running(home: Path) -> None:
    """Never start a second redis-server on one AOF: a server of this home that did not verify still runs."""
    text = _read_private(home / "redis.pid")
    try:
        pid = int((text or "").strip())
    except ValueError:
        return
    try:
        same_dir = os.path.realpath(f"/proc/{pid}/cwd") == str(home)
        with open(f"/proc/{pid}/comm") as f:
            is_redis = f.read().startswith(("redis-server", "valkey-server"))
    except OSError:
        return
    deadline = time.monotonic() + 15.0  # one that was told to stop (its supervisor died) flushes its AOF first
    while same_dir and is_redis and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if same_dir and is_redis and _alive(pid):
        raise ServerError(f"a redis-server (pid {pid}) runs on {home} but does not answer as the home's own "
                          "server; stop it (`embcache redis stop`, or kill it) and retry")


# -- starting -----------------------------------------------------------------------------------------------
def _socket_path(home: Path) -> Path:
    """``HOME/redis.sock``, or a socket in a private runtime directory when that path is too long for one."""
    sock = home / "redis.sock"
    if len(str(sock)) <= _MAX_UNIX_PATH:
        return sock
    uid = os.geteuid()
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or len(base) > 60:
        base = "/tmp"
    runtime = Path(base) / f"embcache-{uid}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(runtime, 0o700)
    st = os.lstat(runtime)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise UntrustedHome(f"{runtime} (for the sockets of long EMBCACHE_HOME paths) is not a private "
                            f"directory of this user (mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid})")
    return runtime / f"{hashlib.sha256(str(home).encode()).hexdigest()[:24]}.sock"


def _start(home: Path, password: str, linger: float | None, port: int | None) -> str:
    import redis

    sock = None if port is not None else _socket_path(home)
    if sock is not None:
        _remove(sock)  # a stale socket of a server that died (its directory is this user's own)
    server = RedisServer(home, port=port, socket_path=sock, unix_socket=port is None)
    _write_acl(home, password)
    spec = json.dumps({"argv": server.argv(), "home": str(home), "linger": linger})
    log_fd = _open_nofollow(home / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        starter = subprocess.Popen([sys.executable, "-I", "-S", str(SUPERVISOR), spec], cwd=home,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_fd,
                                   start_new_session=True)
        line = starter.stdout.readline() if starter.stdout is not None else b""
        starter.wait()
        if starter.stdout is not None:
            starter.stdout.close()
    finally:
        os.close(log_fd)
    try:
        supervisor_pid = int(line)
    except ValueError:
        raise ServerError(f"the embedded server's supervisor did not start: {_tail(home)}") from None
    client = redis.Redis.from_url(server.url, password=password, socket_timeout=VERIFY_TIMEOUT,
                                  socket_connect_timeout=VERIFY_TIMEOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                client.ping()  # LOADING (BusyLoadingError) until the AOF is in memory; INFO would answer sooner
                info = client.info("server")
                break
            except (redis.RedisError, OSError):  # not listening yet, or still loading the AOF
                if not _alive(supervisor_pid):
                    raise ServerError(f"redis-server exited at start: {_tail(home)}") from None
                if time.monotonic() > deadline:
                    os.kill(supervisor_pid, signal.SIGTERM)
                    raise ServerError(
                        f"redis-server did not answer within {START_TIMEOUT:.0f}s: {_tail(home)}") from None
                time.sleep(0.01)
    finally:
        client.close()
    state = {"url": server.url, "run_id": info["run_id"], "pid": int(info["process_id"]),
             "supervisor": supervisor_pid, "linger": linger, "started": time.time()}
    _write_private(home / STATE_FILE, json.dumps(state) + "\n")
    _write_private(home / "url", server.url + "\n")  # for people and scripts; connect() trusts server.json only
    return server.url


def _tail(home: Path) -> str:
    parts = []
    for name in ("supervisor.log", "redis.log"):
        text = _read_private(home / name)
        if text:
            parts.append(text[-1500:])
    return "\n".join(parts).strip() or "(no log)"
