"""The channel-health service: one instance, in the log-server process (next to the
watchdog), judging each finalised bucket of the configured interval once.

Every `poll` seconds it looks for the buckets after its position (the last one applied,
kept in Redis with the baselines) that have ended and are settled for every quantity
(store/health.py `ready`: finalised, or without data), or that ended SETTLE_DEADLINE s
ago whatever their state (a quantity nobody finalises does not hold the others up). It
reads them, judges them (model.HealthModel) and applies each in one atomic script that
also raises the alarms: after a restart it resumes from its stored position, a bucket is
never applied twice (the script compares the position; a second instance's work is
refused, and it reloads), and after an outage it judges at most catch-up-buckets of the
missed buckets (older ones are skipped, counted), BUCKETS_PER_TICK per tick.
"""
import json
import uuid

import numpy as np
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from minard.health import model as M
from minard.store import health as store

#: A bucket older than this (s after its end) is judged with what it has.
SETTLE_DEADLINE = 180
#: Buckets judged per tick at most (each is ~10 ms of numpy in the reactor thread).
BUCKETS_PER_TICK = 3


def poll_interval(interval):
    """Seconds between looks: 12 per bucket (5 s for 60-s buckets), at least 0.5 s."""
    return max(0.5, interval / 12.0)


def _int(text, default=None):
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


class HealthService(TimerService):
    """config: a HealthConfig; clock: the reactor (timers); wall: unix time (buckets,
    alarm times); stats: the process's Stats (counters health_*)."""

    log = Logger()

    def __init__(self, redis, config, clock=None, wall=None, stats=None, poll=None):
        TimerService.__init__(self, poll or poll_interval(config.interval), self.tick)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.wall = wall or clock.seconds
        self.redis = redis
        self.config = config
        self.stats = stats
        self.model = None
        self.stored = ""  # the position as stored (the apply script compares it)
        self.token = uuid.uuid4().hex[:12]  # this instance's staged keys
        self._pending = None
        self._failing = False
        self._skipped_after = None

    def stopService(self):
        d = TimerService.stopService(self)
        if self._pending is not None:
            self._pending.cancel()
        return d

    def _count(self, name, n=1):
        if self.stats is not None and n:
            self.stats.incr(name, n)

    def tick(self):
        """One look at Redis; never raises (errors are counted and logged once)."""
        if self._pending is not None:
            return
        d = self._pending = defer.maybeDeferred(self.run_once)
        d.addErrback(self._failed)
        d.addBoth(self._done)

    def _done(self, _):
        self._pending = None

    def _failed(self, failure):
        if failure.check(defer.CancelledError):
            return
        self._count("health_errors")
        if not self._failing:
            self.log.failure("channel health: a round failed (Redis away?); retrying", failure)
        self._failing = True

    @defer.inlineCallbacks
    def load(self):
        """The model as stored: baselines, open findings, position. A state of another
        interval starts afresh (its open findings are closed at the first bucket)."""
        state, findings_text, blobs = yield store.load(self.redis)
        cfg = self.config
        self.stored = state.get("position") or ""
        stored_interval = _int(state.get("interval"))
        findings = []
        try:
            findings = json.loads(findings_text or "[]")
        except ValueError:
            self.log.warn("channel health: unreadable open findings in Redis; starting "
                          "without them")
        if stored_interval not in (None, cfg.interval):
            self.log.info("channel health: stored baselines are of {old}-s buckets, now "
                          "{new}-s: starting afresh", old=stored_interval, new=cfg.interval)
            self.model = M.HealthModel(cfg, next_id=_int(state.get("next_id"), 1),
                                       stale=findings)
            return self.model
        baselines = {}
        for name, blob in blobs.items():
            try:
                baselines[name] = (M.Baseline() if blob is None
                                   else M.Baseline.from_bytes(blob, cfg.interval))
            except ValueError as e:
                self.log.warn("channel health: {name} baseline unreadable ({e}); afresh",
                              name=name, e=e)
                baselines[name] = M.Baseline()
        self.model = M.HealthModel(cfg, baselines=baselines, findings=findings,
                                   next_id=_int(state.get("next_id"), 1),
                                   position=_int(self.stored), applied=_int(
                                       state.get("applied"), 0))
        return self.model

    @defer.inlineCallbacks
    def run_once(self):
        """Judge what is due; Deferred number of buckets applied."""
        if self.model is None:
            yield self.load()
        cfg = self.config
        h = cfg.interval
        now = self.wall()
        newest = int(now) // h - 1  # the newest bucket that has ended
        position = self.model.position
        if position is None:
            position = newest - 1
        if newest - position > cfg.catch_up_buckets:
            skipped = newest - cfg.catch_up_buckets - position
            if self._skipped_after != position:  # said once per outage, not per tick
                self._skipped_after = position
                self._count("health_buckets_skipped", skipped)
                self.log.warn("channel health: {n} buckets of {h} s were not judged (an "
                              "outage); judging the last {k}", n=skipped, h=h,
                              k=cfg.catch_up_buckets)
            position = newest - cfg.catch_up_buckets
        applied = 0
        for b in range(position + 1, min(newest, position + BUCKETS_PER_TICK) + 1):
            states = yield store.ready(self.redis, h, b)
            late = now >= (b + 1) * h + SETTLE_DEADLINE
            if not late and not all(store.settled(s) for s in states.values()):
                break
            data = yield store.read_bucket(self.redis, h, b)
            masks = yield store.read_masks(self.redis)
            masked = np.zeros(M.N, dtype=bool)
            masked[[i for i in masks if 0 <= i < M.N]] = True
            step = self.model.step(b, data, masked)
            done = yield store.apply(
                self.redis, self.token, self.stored, b, h, self.wall(), step.applied,
                step.next_id, step.findings, cfg.as_dict(),
                {n: bl.to_bytes(h) for n, bl in step.baselines.items()}, step.closed,
                step.alarms)
            if not done:
                self._count("health_conflicts")
                self.log.warn("channel health: bucket {b} was applied by someone else; "
                              "reloading", b=b)
                self.model = None
                break
            self.model.commit(step)
            self.stored = str(b)
            applied += 1
            self._count("health_buckets")
            self._count("health_findings_opened", len(step.opened))
            self._count("health_findings_closed", len(step.closed))
            for f in step.opened:
                self.log.info("channel health: {where}: {kind} ({summary})",
                              where=M.where_text(f), kind=M.kind_text(f),
                              summary="; ".join(f["summary"]))
            if self.stats is not None:
                self.stats.set("health_open_findings", len(step.findings))
        if self._failing:
            self.log.info("channel health: working again")
        self._failing = False
        return applied
