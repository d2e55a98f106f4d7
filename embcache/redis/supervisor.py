"""The embedded server's supervisor: owns one ``redis-server`` and stops it when nobody uses it any more.

Run by :mod:`embcache.server` as a script (``python -I -S supervisor.py SPEC``), so it imports the standard
library only and starts in a few milliseconds. ``SPEC`` is JSON: ``{"argv": [...], "home": DIR, "linger": S}``.

Reference count: every process that uses the server holds ``flock(LOCK_SH)`` on ``HOME/users.lock``; the kernel
drops it when the process exits in any way (return, SIGTERM, kill -9). Every ``POLL`` seconds the supervisor
takes ``HOME/start.lock`` (which attaching processes hold while they check the server and take their share, so
the two never race) and tries ``LOCK_EX`` on ``users.lock``: when that succeeds nobody uses the server, and once
that has lasted ``linger`` seconds it stops Redis with SIGTERM (Redis flushes the AOF), removes
``HOME/server.json`` and exits. ``linger`` null: never for idleness. Redis gets ``PR_SET_PDEATHSIG`` = SIGTERM,
so a supervisor killed with -9 still takes its server down cleanly; SIGTERM/SIGINT/SIGHUP to the supervisor
stop the server too.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

POLL = 0.2
STOP_TIMEOUT = 60.0  # seconds Redis gets to flush its AOF before SIGKILL
STATE = "server.json"

_stop_requested = False


def open_lock(path: str) -> int:
    """A lock file's descriptor; never follows a symlink planted at ``path`` and never truncates."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def try_lock(fd: int, op: int) -> bool:
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _child_setup() -> None:
    os.umask(0o077)  # AOF, pid and log files readable by the owner only
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the supervisor
    except (OSError, AttributeError):  # not Linux: the supervisor's own signal handlers still stop Redis
        pass


def _request_stop(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _forget(home: str, pid: int) -> None:
    """Remove the state file if it still describes this supervisor's server (a newer one may have replaced it)."""
    path = os.path.join(home, STATE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            state = json.load(f)
        if state.get("pid") == pid:
            os.unlink(path)
            os.unlink(os.path.join(home, "url"))
    except (OSError, ValueError):
        pass


def supervise(argv: list[str], home: str, linger: float | None) -> int:
    """Run ``argv`` (redis-server) in ``home`` until it is unused for ``linger`` seconds or asked to stop."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _request_stop)
    start_fd = open_lock(os.path.join(home, "start.lock"))
    users_fd = open_lock(os.path.join(home, "users.lock"))
    child = subprocess.Popen(argv, cwd=home, stdin=subprocess.DEVNULL, preexec_fn=_child_setup)
    idle_since: float | None = None
    try:
        while child.poll() is None and not _stop_requested:
            time.sleep(POLL)
            if linger is None or not try_lock(start_fd, fcntl.LOCK_EX):
                continue  # someone is attaching right now: the server is in use
            try:
                if try_lock(users_fd, fcntl.LOCK_EX):
                    fcntl.flock(users_fd, fcntl.LOCK_UN)
                    now = time.monotonic()
                    idle_since = now if idle_since is None else idle_since
                    if now - idle_since >= linger:
                        _stop(child)
                        _forget(home, child.pid)
                        return 0
                else:
                    idle_since = None
            finally:
                fcntl.flock(start_fd, fcntl.LOCK_UN)
        _stop(child)
        fcntl.flock(start_fd, fcntl.LOCK_EX)
        _forget(home, child.pid)
        return 0
    finally:
        if child.poll() is None:
            _stop(child)


def main() -> int:
    spec = json.loads(sys.argv[1])
    pid = os.fork()
    if pid > 0:  # detach: the starter reaps this parent at once, so the supervisor is nobody's zombie
        print(pid, flush=True)
        os._exit(0)
    os.dup2(2, 1)  # the starter reads stdout until the pid line only; the log takes the rest
    os.setsid()
    return supervise(list(spec["argv"]), spec["home"], spec["linger"])


if __name__ == "__main__":
    raise SystemExit(main())
