"""``embcache redis`` (the embedded server in the foreground) and ``embcache worker`` (an RQ worker with the
dispatcher)."""

from __future__ import annotations

import sys

import click

from .common import Settings, connection_options

__all__ = ["redis_command", "worker_command"]


@click.command("redis")
@click.argument("action", type=click.Choice(["run", "stop"]), default="run")
@click.option("--home", default=None, help="data directory (default: EMBCACHE_HOME or ~/.local/share/embcache)")
@click.option("--port", type=int, default=None, help="listen on this loopback TCP port instead of a Unix socket")
def redis_command(action: str, home: str | None, port: int | None) -> None:
    """Run the embedded redis-server in the foreground until Ctrl-C; `embcache redis stop` stops it."""
    from ..redis.server import embedded_home, serve, stop_embedded

    where = home or embedded_home()
    if action == "stop":
        print("stopped" if stop_embedded(where) else f"no embedded server runs for {where}")
        return
    serve(where, port=port, announce=lambda url: print(
        f"embcache: redis-server for {where} at {url} (operator password in {where}/operator.password; "
        "Ctrl-C stops it)", file=sys.stderr, flush=True))


@click.command("worker")
@connection_options
@click.option("--queue-url", envvar="EMBCACHE_QUEUE_URL", default=None, metavar="URL",
              help="Redis of the RQ queue (default: EMBCACHE_QUEUE_URL, else the data Redis)")
@click.option("--burst", is_flag=True, help="exit when the queue is empty")
@click.option("--fork", is_flag=True,
              help="run each job in a forked process (RQ's default); without it jobs run in the worker process, "
                   "which keeps the indices it built for fast incremental updates")
@click.option("--no-dispatch", is_flag=True, help="do not run the dispatcher in this worker")
@click.option("--metrics-port", type=int, envvar="EMBCACHE_METRICS_PORT", default=None,
              help="serve Prometheus metrics on this port (default: EMBCACHE_METRICS_PORT; off)")
@click.option("--settle", type=float, envvar="EMBCACHE_BUILD_SETTLE", default=None, metavar="SECONDS",
              help="enqueue a partition's build once its writes have paused this long (default: "
                   "EMBCACHE_BUILD_SETTLE, else 0.5)")
@click.option("--max-delay", type=float, envvar="EMBCACHE_BUILD_MAX_DELAY", default=None, metavar="SECONDS",
              help="but at most this long after its first unindexed write (default: EMBCACHE_BUILD_MAX_DELAY, "
                   "else 3)")
def worker_command(settings: Settings, queue_url: str | None, burst: bool, fork: bool, no_dispatch: bool,
                   metrics_port: int | None, settle: float | None, max_delay: float | None) -> None:
    """Run an RQ worker on the embcache queue, with the dispatcher."""
    from ..redis.dispatcher import run_worker  # the CLI is the one place that starts workers

    url = settings.url
    if url is None:
        from ..redis.server import ensure_embedded

        url = ensure_embedded()
    username, password = settings.credentials()
    if metrics_port is not None:
        from ..redis import metrics

        metrics.enable(port=metrics_port)
    run_worker(url, queue_url, burst=burst, simple=not fork, dispatch=not no_dispatch, username=username,
               password=password, settle=settle, max_delay=max_delay)
