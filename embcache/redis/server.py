"""The embedded default: a private ``redis-server`` that embcache starts, reuses and stops itself.

``embcache.connect()`` with no URL (and no ``EMBCACHE_URL``) calls :func:`ensure_embedded`: it reuses the
server of ``EMBCACHE_HOME`` (default ``~/.local/share/embcache``) when one answers there, and otherwise starts
one with AOF on, listening only on a Unix socket in that directory (loopback TCP on a free port when the
socket path would be too long), and stops it when the process that started it exits. The data stays in the
directory, so the next start finds it again. ``embcache redis`` runs the same server in the foreground.

:class:`RedisServer` is also what the tests and benchmarks use to start throw-away servers on free ports.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ..core.errors import ServerError

__all__ = ["RedisServer", "ensure_embedded", "embedded_home", "find_redis_server", "free_port"]

_INSTALL_HINT = (
    "redis-server was not found on PATH. Install it with your package manager, e.g. "
    "'sudo apt-get install -y redis-server' (Debian/Ubuntu), or point embcache at a running Redis "
    "with embcache.connect('redis://host:6379/0') or EMBCACHE_URL."
)
_MAX_UNIX_PATH = 100  # sockaddr_un.sun_path is 108 bytes on Linux; keep a margin


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
        appendonly: bool = True,
        appendfsync: str = "everysec",
        extra_args: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        sock = self.directory / "redis.sock"
        if unix_socket is None:
            unix_socket = port is None and len(str(sock)) <= _MAX_UNIX_PATH
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
        ]
        acl = self.directory / "users.acl"  # so that grants survive restarts (ACL SAVE writes it)
        acl.touch(exist_ok=True)
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


_started: list[RedisServer] = []


def ensure_embedded(home: str | os.PathLike[str] | None = None) -> str:
    """URL of the embedded server of ``home``: reuse the one that answers there, or start one.

    A server started here is stopped when this process exits; one found running is left alone.
    """
    server = RedisServer(Path(home) if home else embedded_home())
    lock_path = server.directory / "start.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting at once must not start two servers
        url_file = server.directory / "url"
        if url_file.exists():
            url = url_file.read_text().strip()
            if _answers(url):
                return url
        if server.ping():
            return server.url
        server.start()
        url_file.write_text(server.url + "\n")
        _started.append(server)
        if len(_started) == 1:
            atexit.register(_stop_started)
        return server.url


def _answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def _stop_started() -> None:
    while _started:
        _started.pop().stop()
