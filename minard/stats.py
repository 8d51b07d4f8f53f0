"""Self-instrumentation: every process counts what it received, dropped and flushed,
and publishes the counters to Redis as the hash `minard:stats:<process>`.
"""
import os
import resource
import time

from twisted.application.internet import TimerService
from twisted.logger import Logger

from minard.store import keys
from minard.store.scripts import Script

PUBLISH_INTERVAL = 1.0
#: On stop, the last snapshot waits at most this long for Redis (s).
FINAL_PUBLISH_TIMEOUT = 2.0
#: The stats hash outlives its process by this much, so /metrics can tell a dead one.
STATS_TTL = 3600


class Stats:
    """Monotonic counters and last-value gauges of one process."""

    def __init__(self, process, clock=time.time):
        self.process = process
        self.counters = {}
        self.gauges = {}
        self.clock = clock
        self.started = clock()

    def incr(self, name, amount=1):
        self.counters[name] = self.counters.get(name, 0) + amount

    def set(self, name, value):
        self.gauges[name] = value

    def snapshot(self):
        """Everything as a flat mapping of name -> number, for Redis."""
        values = dict(self.counters)
        values.update(self.gauges)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        values["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 3)
        values["max_rss_bytes"] = usage.ru_maxrss * 1024
        values["pid"] = os.getpid()
        values["started"] = round(self.started, 3)
        values["updated"] = round(self.clock(), 3)
        return values


#: The hash is replaced, not updated: a restarted process (same name) must not show the
#: counters of its previous life next to its own (HMSET kept them, e.g. an old
#: dropped_events that the new process never had).
REPLACE_SCRIPT = Script("stats_replace.lua")


class StatsPublisher(TimerService):
    """Writes a Stats snapshot to Redis every second; errors are logged, never raised."""

    log = Logger()

    def __init__(self, stats, redis, interval=PUBLISH_INTERVAL):
        TimerService.__init__(self, interval, self.publish)
        self.stats = stats
        self.redis = redis
        self._pending = None

    def publish(self):
        if self._pending is not None:  # Redis is slow or away: do not pile up writes
            return
        key = keys.stats(self.stats.process)
        args = [str(STATS_TTL)]
        for name, value in self.stats.snapshot().items():
            args += [name, str(value)]
        d = self._pending = REPLACE_SCRIPT(self.redis, [key], args)
        d.addErrback(self._failed)
        d.addBoth(self._done)  # may run at once: _pending is set before

    def _done(self, _):
        self._pending = None

    def _failed(self, failure):
        self.stats.incr("stats_publish_errors")

    def stopService(self):
        """Stop the timer, then publish one last snapshot (bounded wait): the hash then
        shows everything the process did up to its end, e.g. a SIGTERM-ed worker's last
        flushes or what it could not flush."""
        d = TimerService.stopService(self)
        d.addCallback(lambda _: self.final_publish())
        return d

    def final_publish(self):
        self._pending = None  # this snapshot supersedes one still in flight
        self.publish()
        d = self._pending
        if d is None:
            return None
        from twisted.internet import reactor
        return d.addTimeout(FINAL_PUBLISH_TIMEOUT, self.clock or reactor)


class CorruptionLog:
    """Counts corrupt input per kind and logs each kind at most once per interval.

    `trouble` does the same rate-limited logging for problems that are not corrupt input
    (Redis away, a bound reached): the log line then says what happened, not "corrupt
    input", and no `corrupt_*` counter is made up for it (callers count those under
    their own names, e.g. flush_errors, dropped_seconds).
    """

    log = Logger()

    def __init__(self, stats, interval=60.0, clock=time.time):
        self.stats = stats
        self.interval = interval
        self.clock = clock
        self._last_logged = {}
        self._unlogged = {}
        self.stats.counters.setdefault("corrupt", 0)

    def _due(self, key, count):
        """Add count to key's unlogged total; True (and the total) when key may log now."""
        self._unlogged[key] = self._unlogged.get(key, 0) + count
        now = self.clock()
        if now - self._last_logged.get(key, -1e18) < self.interval:
            return False, 0
        total = self._unlogged[key]
        self._last_logged[key] = now
        self._unlogged[key] = 0
        return True, total

    def note(self, kind, count=1, detail=""):
        """Corrupt input of `kind`: counted in corrupt_<kind> and corrupt (the total).
        Returns True when this call wrote the log line (once per kind and interval)."""
        self.stats.incr("corrupt_" + kind, count)
        self.stats.incr("corrupt", count)
        due, total = self._due(("corrupt", kind), count)
        if due:
            self.log.warn("{process}: {count} corrupt input(s) of kind {kind} "
                          "since the last report{detail}",
                          process=self.stats.process, count=total,
                          kind=kind, detail=(": " + detail) if detail else "")
        return due

    def trouble(self, kind, detail=""):
        """An operational problem (not corrupt input), logged once per kind and interval
        with the number of times it happened since the last report."""
        due, total = self._due(("trouble", kind), 1)
        if due:
            self.log.warn("{process}: {kind}{detail} ({count} time(s) since the last "
                          "report)", process=self.stats.process, kind=kind.replace("_", " "),
                          detail=(": " + detail) if detail else "", count=total)
        return due
