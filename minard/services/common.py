"""What every minard process has besides its own work: a Redis connection, its
self-instrumentation (`minard:stats:<process>`) and its own heartbeat to the logging server.
"""
import sys
import time

import zmq
from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from minard import zmqlink
from minard.stats import Stats, StatsPublisher
from minard.store.connection import connect

log = Logger()


class ProcessService(MultiService):
    """A MultiService that stops the services in `last` only after all the others have
    stopped: the stats publisher's final snapshot then counts what the process's work did
    while stopping (a pull worker's last flushes)."""

    last = ()

    def privilegedStartService(self):
        self._starting(MultiService.privilegedStartService)

    def startService(self):
        self._starting(MultiService.startService)

    def _starting(self, start):
        """A port that cannot be had is a one-line error and exit code 1, not a traceback."""
        try:
            start(self)
        except (CannotListenError, zmq.ZMQError) as e:
            sys.stderr.write("minard: error: %s\n" % (e,))
            sys.stderr.flush()
            raise SystemExit(1)

    def stopService(self):
        Service.stopService(self)
        first = [s for s in reversed(list(self)) if s not in self.last]
        d = defer.DeferredList([defer.maybeDeferred(s.stopService) for s in first])
        d.addCallback(lambda _: defer.DeferredList(
            [defer.maybeDeferred(s.stopService) for s in self.last if s.running]))
        return d


class ProcessBase:
    """The shared parts of one process: `service` (a MultiService to add to), `stats`,
    `redis`. `status` is a callable giving the text of this process's heartbeat."""

    def __init__(self, options, process, heartbeat_name=None, redis=None, status=None,
                 reply_timeout=None):
        self.options = options
        self.process = process
        self.service = ProcessService()
        self.stats = Stats(process)
        if redis is None:
            redis = connect(options["redis"], stats=self.stats) if reply_timeout is None \
                else connect(options["redis"], reply_timeout=reply_timeout, stats=self.stats)
        self.redis = redis
        publisher = StatsPublisher(self.stats, self.redis)
        publisher.setServiceParent(self.service)
        self.service.last = (publisher,)
        self.status = status or (lambda: "ok")
        monitor_section = (options.get("config-sections") or {}).get("monitor")
        if monitor_section and heartbeat_name:
            from minard import monitor
            heartbeat = monitor.from_config(monitor_section, heartbeat_name,
                                            lambda: self.status())
            if heartbeat is not None:
                heartbeat.setServiceParent(self.service)


#: Receipt stamps further than this from the local clock are corrupt (s).
MAX_CLOCK_SKEW = 86400


class ZmqWorker(Service):
    """A worker fed ZeroMQ messages [receipt stamp, record, ...] that ticks on a clock.

    Subclasses set `clock`, `stats`, `corruption` (a CorruptionLog) and `tick_interval`,
    and define make_link(), tick() and handle_records(ns, records). One bad message is
    counted and logged (once per interval), never fatal.
    """

    log = Logger()
    link = None
    _ticker = None
    #: The wall clock (unix seconds) for stamps and buckets; None: the scheduling clock's
    #: seconds (tests drive both with one task.Clock). minard/clock.py.
    wall = None
    #: CURVE keys of this worker's link (minard/curve.py ClientKeys); None: plain text.
    link_keys = None

    def wall_time(self):
        return (self.wall or self.clock.seconds)()

    def startService(self):
        Service.startService(self)
        self.link = self.make_link()
        self._ticker = task.LoopingCall(self.tick)
        self._ticker.clock = self.clock
        self._ticker.start(self.tick_interval, now=False).addErrback(
            lambda f: self.log.failure("{worker} ticker stopped", f,
                                       worker=type(self).__name__))

    def stop_ticking(self):
        """Begin stopping: no more ticks; the subclass then flushes what it holds."""
        self._stopping = True
        Service.stopService(self)
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()

    def on_message(self, frames):
        try:
            self.stats.incr("messages")
            ns = self.receipt_time(frames)
            if ns is not None:
                self.handle_records(ns, frames[1:])
        except Exception:  # never let one message kill the worker
            if self.corruption.note("undecodable_message"):  # traceback once per interval
                self.log.failure("unexpected error handling a message")

    def watch_flush(self, d, applied, failed):
        """The bookkeeping every flush shares (stats, latency, the failure streak the
        heartbeat reports), then the caller's own applied(result) / failed(failure)."""
        started = time.monotonic()

        def ok(result):
            self.flush_failures = 0
            self.stats.incr("flushes")
            if str(result) == "0":
                self.stats.incr("flushes_repeated")
            self.stats.set("flush_latency_ms", round((time.monotonic() - started) * 1000, 3))
            applied(result)

        def bad(failure):
            self.flush_failures += 1
            self.stats.incr("flush_errors")
            self.corruption.trouble("flush_failed", failure.getErrorMessage())
            failed(failure)

        d.addCallbacks(ok, bad)
        d.addErrback(lambda f: self.log.failure("flush bookkeeping failed", f))
        return d

    def receipt_time(self, frames):
        """The receipt time (ns) of a message, or None (counted) if it has none."""
        if len(frames) < 2:
            self.corruption.note("message_without_records")
            return None
        ns = zmqlink.unstamp(frames[0])
        if ns is None or abs(ns / 1e9 - self.wall_time()) > MAX_CLOCK_SKEW:
            self.corruption.note("bad_receipt_stamp", len(frames) - 1)
            return None
        return ns
