"""The dispatcher: turns the partitions writers marked dirty into RQ build jobs, within a bounded delay.

Writers never touch RQ's keys (whoever can write them can make a worker run code); they only add
``version/partition`` to their space's dirty set. Each tick the dispatcher, for every marked partition whose
build is neither queued nor running (a lease says running), removes the mark and enqueues one job with a
deterministic id, so at most one build per partition is queued or running. A mark left while a build runs is
picked up after it; a mark found while a job is still queued is covered by that job. A periodic reconciliation
marks any partition whose change log is ahead of its snapshot,
which covers a writer that died between its write and its mark, and a worker killed mid-build.

**Settling.** A partition's build is enqueued only once its log has been quiet for ``settle`` seconds, or
``max_delay`` seconds after its first write not in the published snapshot (measured on Redis's clock from the
log's entry ids, and bounded by the dispatcher's own clock since it first saw the mark, whatever the log says), so
a bulk load in many upsert calls is one build rather than one per call that the next one supersedes, and a
steady write stream still gets a build every ``max_delay`` seconds (at most
:data:`~embcache.redis.settings.DELTA_MAX_DELAY_SECONDS`, counted from the first write after the segments, for a
partition whose snapshot has a delta chain: its worker keeps the index in memory, so the next build is a segment
and costs what its writes do). A mark with score 0 (``Version.build()``
asks so) is dispatched at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import sys
import threading
import time
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from ..core.delta import extending
from ..core.errors import EmbcacheError, InvalidInput, SnapshotCorrupt
from ..core.keys import NAME_PATTERN
from ..core.snapshot import Manifest
from ..core.views import pos_key
from . import metrics, settings, snapshots
from .catalogue import Catalogue
from .store import Store

__all__ = ["Dispatcher", "job_id", "backoff", "QUEUE_NAME", "LEASE_SECONDS", "BUILD_JOB"]

log = logging.getLogger("embcache.dispatcher")
QUEUE_NAME = "embcache"
_WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
NAME_RE = re.compile(NAME_PATTERN)
#: How long a build's lease lives without a heartbeat: a killed worker's partition is rebuilt after this.
LEASE_SECONDS = float(os.environ.get("EMBCACHE_LEASE_SECONDS", "10"))
#: The RQ job function, by dotted name: RQ imports it in the worker, so the package never imports ``workers``.
BUILD_JOB = "workers.jobs.build_partition"
DEQUEUE_GRACE = 2.0  # seconds a job may sit dequeued but not started before its worker is taken for dead
MAX_MARKS = 10_000  # dirty marks read per space and tick (the set is writable by writers)
MAX_PARTITIONS = 100_000  # partitions reconciled per version


def backoff(failures: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: 0.5, 1, 2, 4, ... up to ``cap``."""
    return min(cap, base * 2 ** (min(failures, 16) - 1))


def job_id(prefix: str, space: str, version: str, partition: str) -> str:
    """The one job id a partition's builds use (RQ ids allow only letters, digits, _ and -)."""
    digest = hashlib.sha1(f"{prefix}\0{space}\0{version}\0{partition}".encode()).hexdigest()[:20]
    return f"emb-build-{digest}"


class Dispatcher:
    """Polls dirty sets every ``interval`` seconds; reconciles every ``reconcile_every`` seconds."""

    def __init__(self, store: Store, queue: Queue, interval: float = 0.05, reconcile_every: float = 5.0,
                 job_timeout: int = 3600, settle: float = 0.0, max_delay: float = 0.0) -> None:
        """``settle``/``max_delay``: see the module docstring (0: enqueue at once; ``embcache worker`` passes
        its :class:`~embcache.redis.settings.WorkerSettings`)."""
        self.store = store
        self.settle = settle
        self.max_delay = max(max_delay, settle)
        self._first_seen: dict[tuple[str, bytes], float] = {}  # (space, mark) -> when this dispatcher first saw it
        self.queue = queue
        self.interval = interval
        self.reconcile_every = reconcile_every
        self.job_timeout = job_timeout
        self.catalogue = Catalogue(store)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_reconcile = 0.0
        self._reported: dict[tuple[str, str, str], float] = {}
        self._dequeued: dict[str, float] = {}  # job id -> when it was first seen dequeued but not started
        self.token = secrets.token_hex(8)

    def is_leader(self) -> bool:
        """Take or keep the dispatcher lock: with several workers, one dispatcher acts at a time, so two never
        race to enqueue the same partition."""
        r, key = self.store.r, self.store.keys.dispatcher_lock()
        ttl = int(max(3.0, 20 * self.interval) * 1000)
        if r.set(key, self.token, nx=True, px=ttl):
            return True
        if r.get(key) == self.token.encode():
            r.pexpire(key, ttl)
            return True
        return False

    def tick(self) -> int:
        """One pass over the dirty sets; returns the number of jobs enqueued. Each space is handled on its own:
        whatever is wrong with one space's keys (a writer can write them) is logged and skipped, and the others
        are dispatched as usual."""
        enqueued = 0
        if metrics.ENABLED:
            metrics.set_queue_depth(self.queue)
        if not self.is_leader():
            return 0
        for space in self.catalogue.list_spaces():
            try:
                enqueued += self._dispatch_space(space)
            except (EmbcacheError, RedisError) as exc:
                self._space_failed("dispatch", space, exc)
        if time.monotonic() - self._last_reconcile > self.reconcile_every:
            self._last_reconcile = time.monotonic()
            self.reconcile()
        return enqueued

    def _space_failed(self, what: str, space: str, exc: BaseException) -> None:
        """One log line per space and kind of failure per minute (a tick runs 20 times a second)."""
        key = (what, space, type(exc).__name__)
        now = time.monotonic()
        if now - self._reported.get(key, -1e9) > 60:
            self._reported[key] = now
            log.warning("%s of space %s skipped: %s: %s", what, space, type(exc).__name__, str(exc)[:200])

    def _dispatch_space(self, space: str) -> int:
        r, k = self.store.r, self.store.keys
        dirty = k.dirty(space)
        kind = r.type(dirty)
        if kind not in (b"zset", b"none"):  # not written by embcache: it holds no mark we could read
            log.warning("deleted the dirty key of space %s: it is a %s, not a sorted set", space, kind.decode())
            r.delete(dirty)  # the reconciliation marks again whatever is behind its log
            return 0
        enqueued = 0
        marks = r.zrange(dirty, 0, MAX_MARKS - 1, withscores=True)
        seen = {(space, member) for member, _ in marks}
        for key in [x for x in self._first_seen if x[0] == space and x not in seen]:
            del self._first_seen[key]  # marks gone (dispatched by another leader, the space dropped)
        now_ms: list[int] = []  # Redis's clock, read once per space when a mark needs it
        for member, score in marks:
            names = k.parse_dirty_member(member)
            version, partition = names if names is not None else ("", "")
            if names is None or not self.catalogue.has_partition(space, version, partition):
                log.warning("dropped the dirty mark %r of space %s: no such partition", member[:100], space)
                r.zrem(dirty, member)  # writers can write this set; one bad entry must not stop builds
                continue
            state = self._state(space, version, partition)
            if state in ("running", "dequeued"):
                continue  # it may have read the log already: keep the mark for a build after it
            if state == "idle" and not self._due(space, version, partition, member, score, now_ms):
                continue  # its writes are still settling: keep the mark
            r.zrem(dirty, member)
            self._first_seen.pop((space, member), None)
            if state == "idle":  # a queued job has not read the log yet and will cover the mark
                self._enqueue(space, version, partition)
                enqueued += 1
        return enqueued

    def _due(self, space: str, version: str, partition: str, member: bytes, score: float,
             now_ms: list[int]) -> bool:
        """True when the partition's build should be enqueued now (see Settling in the module docstring)."""
        if self.max_delay <= 0 or score <= 0:  # no settling, or an explicit build() asks for it now
            return True
        now = time.monotonic()
        if now - self._first_seen.setdefault((space, member), now) >= self.max_delay:
            return True  # our own clock bounds the wait, whatever a writer put in the log
        r = self.store.r
        pk = self.store.keys.partition(space, version, partition)
        pipe = r.pipeline(transaction=False)
        pipe.get(pk.snap)
        pipe.get(pk.delta)
        pipe.xrevrange(pk.log, "+", "-", count=1)
        if not now_ms:
            pipe.time()
        raw, raw_chain, last, *clock = pipe.execute()
        if clock:
            now_ms.append(int(clock[0][0]) * 1000 + int(clock[0][1]) // 1000)
        max_delay = self.max_delay
        try:
            m = Manifest.from_json(raw) if raw is not None else None
        except SnapshotCorrupt:
            return True  # replaced by the next build
        built = m.pos if m is not None else "0-0"
        chain = None
        if m is not None:
            with contextlib.suppress(SnapshotCorrupt):
                chain = extending(raw_chain, m.sid, m.pos, None)
        if chain is not None:  # its worker keeps the index: the next build is a segment, and costs what its writes do
            max_delay = min(max_delay, settings.DELTA_MAX_DELAY_SECONDS)
            built = chain.pos  # the first write not published is after the segments
        if not last or pos_key(last[0][0].decode()) <= pos_key(built):
            return True  # nothing to index (a corrupt report, a reconciliation): the build decides
        first = r.xrange(pk.log, min="(" + built, max="+", count=1)
        if not first:
            return True
        quiet = now_ms[0] - pos_key(last[0][0].decode())[0]
        waited = now_ms[0] - pos_key(first[0][0].decode())[0]
        return quiet >= self.settle * 1000 or waited >= max_delay * 1000

    def _state(self, space: str, version: str, partition: str) -> str:
        """"queued", "running", "dequeued" (taken by a worker that has not started it yet) or "idle" for the
        partition's build. A job whose worker died is "idle", so it is enqueued again within seconds."""
        if self.store.r.exists(self.store.keys.partition(space, version, partition).lease):
            return "running"
        jid = job_id(self.store.keys.prefix, space, version, partition)
        try:
            job = Job.fetch(jid, connection=self.queue.connection)
        except NoSuchJobError:
            return "idle"
        status = job.get_status(refresh=False)
        if status == JobStatus.QUEUED and self.queue.connection.lpos(self.queue.key, jid) is None:
            # a worker moved it out of the queue (RQ's dequeue) but has not marked it started: normally for
            # milliseconds; if that worker was killed meanwhile, RQ itself only notices after minutes
            first = self._dequeued.setdefault(jid, time.monotonic())
            if time.monotonic() - first < DEQUEUE_GRACE:
                return "dequeued"
            log.warning("build of %s/%s/%s was taken by a worker that died before starting it; enqueuing it again",
                        space, version, partition)
            self.queue.connection.lrem(self.queue.intermediate_queue_key, 0, jid)
            del self._dequeued[jid]
            return "idle"
        self._dequeued.pop(jid, None)
        if status in _WAITING:
            return "queued"
        # started: running if it started too recently to have taken its lease yet; a started job with neither
        # belongs to a worker that died
        started = job.started_at.timestamp() if job.started_at else 0.0
        return "running" if status == JobStatus.STARTED and time.time() - started < LEASE_SECONDS else "idle"

    def _enqueue(self, space: str, version: str, partition: str) -> None:
        self.queue.enqueue_call(
            BUILD_JOB, args=(space, version, partition), kwargs={"prefix": self.store.keys.prefix},
            job_id=job_id(self.store.keys.prefix, space, version, partition), timeout=self.job_timeout,
            retry=Retry(max=3, interval=[1, 5, 15]), result_ttl=600, failure_ttl=86400,
            description=f"embcache build {space}/{version}/{partition}",
        )
        log.info("enqueued build of %s/%s/%s", space, version, partition)

    def reconcile(self) -> int:
        """Mark every partition whose log is ahead of its snapshot, or whose snapshot is reported corrupt or
        cannot be read; returns how many were marked. One space's or partition's bad state is logged and
        skipped, never stops the others."""
        marked = 0
        for space in self.catalogue.list_spaces():
            try:
                self.catalogue.get_space(space)  # a record that fails validation: nothing of the space is built
                versions = self.catalogue.list_versions(space)
            except (EmbcacheError, RedisError, ValueError) as exc:  # ValueError: a record that does not parse
                self._space_failed("reconcile", space, exc)
                continue
            for v in versions:
                try:
                    parts = self.catalogue.partitions(space, v.name)
                except (EmbcacheError, RedisError) as exc:
                    self._space_failed("reconcile", space, exc)
                    continue
                for p in parts[:MAX_PARTITIONS]:
                    if not NAME_RE.fullmatch(p):
                        continue  # a malformed name a writer put in the partition set: nothing to build
                    try:
                        marked += self._reconcile_partition(space, v.name, p)
                    except (EmbcacheError, RedisError) as exc:
                        self._space_failed("reconcile", f"{space}/{v.name}/{p}", exc)
        return marked

    def _reconcile_partition(self, space: str, version: str, partition: str) -> int:
        pk = self.store.keys.partition(space, version, partition)
        try:
            manifest = snapshots.read_manifest(self.store.r, pk)
            unreadable = False
        except SnapshotCorrupt:
            manifest, unreadable = None, True  # replaced by the next build
        built = manifest.pos if manifest else "0-0"
        corrupt = unreadable or self.store.r.hexists(pk.state, "corrupt")
        behind = corrupt or pos_key(self.store.position(pk)) > pos_key(built)
        if metrics.ENABLED:
            metrics.set_index_lag(pk, self.store.unindexed(pk, built, metrics.LAG_CAP) if behind else 0)
        if behind and self._state(space, version, partition) == "idle":
            self.store.mark_dirty(space, version, partition)
            return 1
        return 0

    # background thread -------------------------------------------------------------------------------------
    def start(self) -> "Dispatcher":
        self._thread = threading.Thread(target=self._run, name="embcache-dispatcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval):
            try:
                self.tick()
                if failures:
                    log.info("dispatcher: Redis answers again after %d failed tick(s)", failures)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a Redis hiccup must not end the dispatcher
                failures += 1
                delay = backoff(failures)
                log.warning("dispatcher tick failed (%s: %s); retrying in %.1f s", type(exc).__name__,
                            str(exc)[:200], delay)
                self._stop.wait(delay)


def run_worker(url: str | None, queue_url: str | None, *, burst: bool = False, simple: bool = True,
               dispatch: bool = True, name: str | None = None, username: str | None = None,
               password: str | None = None, settle: float | None = None, max_delay: float | None = None,
               **kw: Any) -> None:
    """What ``embcache worker`` runs: an RQ worker on the embcache queue with the dispatcher beside it.

    ``settle``/``max_delay`` (default: ``EMBCACHE_BUILD_SETTLE``/``EMBCACHE_BUILD_MAX_DELAY``, else 0.5 and 3
    seconds) are how long the dispatcher lets a partition's writes settle before enqueuing its build.

    ``username``/``password`` (default: ``EMBCACHE_USERNAME``/``EMBCACHE_PASSWORD``) are the data Redis's; the
    queue's are ``EMBCACHE_QUEUE_USERNAME``/``EMBCACHE_QUEUE_PASSWORD``, and when the queue is the data Redis
    (no ``queue_url``) and those are not set, the data Redis's credentials are used for it too.
    """
    from rq import SimpleWorker, Worker

    from ..core.keys import Keys
    from .store import open_client, translate_errors

    env = settings.WorkerSettings.from_env()
    data_url = url or env.url
    if not data_url:
        raise InvalidInput("no data Redis: pass --url or set EMBCACHE_URL")
    username = username if username is not None else env.username
    password = password if password is not None else env.password
    conf = settings.WorkerSettings(
        data_url, username, password,
        settle_seconds=env.settle_seconds if settle is None else settle,
        max_delay_seconds=env.max_delay_seconds if max_delay is None else max_delay)
    store = Store(open_client(data_url, username=username, password=password),
                  Keys(os.environ.get("EMBCACHE_PREFIX", "emb")))
    store.ensure_functions()
    queue_url = queue_url or os.environ.get("EMBCACHE_QUEUE_URL")
    queue_username = os.environ.get("EMBCACHE_QUEUE_USERNAME")
    queue_password = os.environ.get("EMBCACHE_QUEUE_PASSWORD")
    if not queue_url:
        if store.is_cluster:
            raise InvalidInput("the data lives on Redis Cluster: set EMBCACHE_QUEUE_URL to a standalone Redis for RQ")
        queue_url = data_url
        if queue_username is None and queue_password is None:  # the same server: the same principal
            queue_username, queue_password = username, password

    import redis

    from .connection import normalize_url, redact_url
    from .server import embedded_password

    queue_url = normalize_url(queue_url)
    if queue_username is None and queue_password is None:
        queue_password = embedded_password(queue_url)  # the queue on this user's embedded server
    # one start-up line (RQ's own logging is not set up yet, and no password ever appears in it)
    print(f"embcache worker: data Redis {redact_url(data_url)} as {username or 'default'}, "
          f"queue Redis {redact_url(queue_url)}, prefix {os.environ.get('EMBCACHE_PREFIX', 'emb')!r}",
          file=sys.stderr, flush=True)
    qconn = redis.Redis.from_url(queue_url, username=queue_username, password=queue_password)
    with translate_errors("connect to the queue's Redis"):
        qconn.ping()
    queue = Queue(QUEUE_NAME, connection=qconn)
    settings.use(conf)  # what this process's jobs connect with, and how long its dispatcher lets writes settle
    settings.keep_indexes(simple)  # jobs run here: the index one builds is there for the next (delta segments)
    dispatcher = Dispatcher(store, queue, settle=conf.settle_seconds, max_delay=conf.max_delay_seconds,
                            **kw).start() if dispatch else None
    worker_cls = SimpleWorker if simple else Worker
    _log_lines()
    logging.getLogger("rq.worker").addFilter(_OneLine())
    logging.getLogger("rq.scheduler").addFilter(_OneLine())
    _quiet_scheduler_exit()
    failures = 0
    try:
        while True:
            # RQ's worker quits on the first Redis error it meets (a refused write at the memory limit, an
            # outage): start it again with backoff, so the worker process outlives the fault
            worker = None
            try:
                worker = worker_cls([queue], connection=qconn,
                                    name=name if failures == 0 or name is None else f"{name}-{failures}")
                worker.work(burst=burst, with_scheduler=True)
                if burst or _stop_asked(worker):
                    return
                why = "it stopped on an error (see above)"
            except (RedisError, OSError) as exc:
                why = f"{type(exc).__name__}: {str(exc)[:200]}"
            if worker is not None and _stop_asked(worker):
                return
            failures += 1
            delay = backoff(failures, base=1.0, cap=30.0)
            log.warning("RQ worker stopped (%s); starting it again in %.0f s", why, delay)
            time.sleep(delay)
    finally:
        if dispatcher is not None:
            dispatcher.stop()


def _stop_asked(worker: Any) -> bool:
    """True when the RQ worker was asked to stop (SIGTERM/SIGINT: warm shutdown) rather than quit on an error."""
    return bool(getattr(worker, "_stop_requested", False) or getattr(worker, "_shutdown_requested_date", None))


def _log_lines() -> None:
    """embcache's own lines (builds, the dispatcher's failures with their backoff, and its recovery) in the
    worker's output, formatted as RQ's, unless the process already handles its logging (an application, pytest)."""
    logger = logging.getLogger("embcache")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


class _OneLine(logging.Filter):
    """RQ logs a full traceback when its worker quits on an exception, and its scheduler process puts one in the
    message itself ("Scheduler [PID n] raised an exception.\n<traceback>"); a Redis error needs one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and isinstance(record.exc_info[1], RedisError):
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {str(exc)[:200]})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        elif isinstance(record.msg, str) and "raised an exception" in record.msg and \
                isinstance(current := sys.exc_info()[1], RedisError):  # the scheduler logs inside its except block
            pid = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            why = f"{type(current).__name__}: {str(current)[:200]}"
            record.msg = f"Scheduler [PID {pid}] stopped ({why}); the worker starts another"
            record.args = ()
        return True


def _quiet_scheduler_exit() -> None:
    """RQ's scheduler process re-raises the error that stopped it, and multiprocessing then prints its traceback
    (on every outage); the worker starts a new scheduler by itself, and :class:`_OneLine` has logged the reason. A
    Redis error therefore ends the process with exit code 1 and no traceback. Other errors keep theirs."""
    import rq.scheduler

    run = getattr(rq.scheduler, "run", None)
    if run is None or getattr(run, "_embcache_quiet", False):
        return

    def quiet_run(scheduler: Any) -> None:
        try:
            run(scheduler)
        except RedisError:
            raise SystemExit(1) from None

    quiet_run._embcache_quiet = True  # type: ignore[attr-defined]
    rq.scheduler.run = quiet_run
