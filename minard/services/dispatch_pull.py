"""`dispatch-pull`: ZeroMQ PULL -> per-second aggregation -> Redis (SPEC §3-4).

Each worker accumulates wall-clock seconds (the push side's receipt time) in memory and
flushes each second in one atomic script when it ends, also when idle (the heartbeat).
Flushes go out one at a time, in order; while Redis is away they wait in a bounded queue
and are retried (a flush id makes a retry of an applied flush harmless); what the bound
drops is counted. SIGTERM flushes the open seconds before exiting.

Occupancy (hits per channel) goes to the per-channel store (store/channels.py): the
worker's running partial of each open 5-s, 60-s and 1-day bucket is overwritten once a
second with its progress (the last second closed), and the buckets every worker has
passed are finalised, by whichever worker claims them.

What later SNO+ monitoring derived from the stream (issue 13) rides along: FEC/D and
orphan counts, polling and NONE fields, nhit histograms per event type and run records go
with each second's flush (store/analyses.py); the per-run occupancy by event type of the
runs this worker follows is written every RUN_OCCUPANCY_WRITE s (store/runs.py); clock
jumps inside a batch are counted in its second, those across batches — which other
workers may have — by the clock sweep every worker runs once a second, once each worker's
progress (stamped after each applied flush) has passed them. One alarm per burst of
jumps, raised here (store/logserver.raise_alarm). The clock-jump tolerance comes from the
`[clock-jumps]` section of the INI file (`tolerance-ns`, `tolerance-ppm`).
"""
import itertools
import uuid

import numpy as np
from twisted.internet import defer, task

from minard import curve, zmqlink
from minard.clock import wall as wall_clock
from minard.aggregate import clockjumps
from minard.aggregate.events import SecondAccumulator
from minard.aggregate.runs import RunFollower
from minard.constants import ALARM_LEVEL, RUN_OCCUPANCY_WRITE
from minard.services.common import ProcessBase, ZmqWorker
from minard.stats import CorruptionLog
from minard.tap import OptionError
from minard.store.channels import ChannelStore, Finaliser
from minard.store import analyses, runs as run_store
from minard.store.events import EventStore
from minard.store.logserver import raise_alarm
from minard.wire.sno import decode_batch

#: How often the worker looks for ended seconds (s).
TICK = 0.2
#: A second is flushed this long after it ended, for batches still in flight (s).
GRACE = 0.3
#: Most flushes held while Redis is away (one per second: 15 minutes).
MAX_PENDING = 900
#: After a failed flush, wait this long before retrying (s).
RETRY_DELAY = 1.0
#: On SIGTERM, close the ZeroMQ link after this long without a message (s), but do not
#: wait longer than QUIET_WAIT_LIMIT for such a lull.
QUIET_BEFORE_CLOSE = 0.15
QUIET_WAIT_LIMIT = 2.0
#: On SIGTERM, wait at most this long for the last flushes (s).
STOP_TIMEOUT = 8.0
#: A batch stamped in a second already written is late data (added to it) only if it is
#: at most this many seconds older than the last second closed: the push holds a batch at
#: most 5 s (back-pressure). Older stamps come from a wall clock stepped back (here or
#: on the push's host): those seconds were written once already, and writing them again
#: would count other events as theirs, so such events are dropped and counted.
LATE_LIMIT = 10
#: The wall clock going back by more than this between two ticks is a step (s).
STEP_TOLERANCE = 1.0


class PullWorker(ZmqWorker):
    tick_interval = TICK

    def __init__(self, name, address, store, stats, clock, redis=None, rng=None):
        self.name = name
        self.address = address
        self.store = store
        self.stats = stats
        self.clock = clock
        self.rng = rng or np.random.default_rng()
        self.corruption = CorruptionLog(stats, clock=clock.seconds)
        self.open = {}                 # second -> SecondAccumulator
        self.pending = []              # (second, events, payload) in order
        self.in_flight = None
        self.last_closed = None
        self.retry_at = 0.0
        self.flush_failures = 0        # in a row (the heartbeat status says so)
        self._flush_ids = itertools.count()
        self._run = "%s-%s" % (name, uuid.uuid4().hex)  # unique even for a repeated --name
        self._stopping = False
        self.last_wall = None           # the wall clock at the last tick
        self.stepped_back = False       # a step back seen, the clock not yet past it
        # per-channel occupancy (None: a worker without it, in some tests)
        self.channels = self.finaliser = None
        self.channels_retry_at = 0.0
        if redis is not None:
            self.channels = ChannelStore(redis, self._run, ["occupancy"], stats)
            self.finaliser = Finaliser(redis, "occupancy", self._run, stats)
        # issue 13: per-run occupancy by type, clock jumps across batches
        self.tolerance = clockjumps.Tolerance()
        self.follower = RunFollower(writer=self._run)
        self.runs_in_flight = None
        self.runs_written_at = 0.0
        self.sweep_in_flight = None
        self.swept_at = 0.0
        self.progress_in_flight = None
        self.applied_second = None      # the last second whose flush Redis has
        self.progress_sent = None
        if hasattr(store, "on_clock_burst"):
            store.on_clock_burst = self.clock_burst

    def accumulator(self, second):
        return SecondAccumulator(second, follower=self.follower, tolerance=self.tolerance)

    # -- receiving -----------------------------------------------------------------

    def make_link(self):
        return zmqlink.PullLink(self.address, self.on_message, keys=self.link_keys)

    def handle_records(self, ns, records):
        batch = decode_batch(records)
        self.stats.incr("records", batch.n_records)
        self.stats.incr("events", batch.n_pmt_events)
        if batch.n_orphans:
            self.stats.incr("orphans", batch.n_orphans)
        if batch.n_other:
            self.stats.incr("other_records", batch.n_other)
        if batch.run_headers:
            self.stats.incr("run_headers", len(batch.run_headers))
        for kind, count in batch.corrupt.items():
            self.corruption.note(kind, count)
        if batch.n_events or batch.run_headers:
            second = ns // 1_000_000_000
            acc = self.open.get(second)
            if acc is None:
                if self.last_closed is not None and second <= self.last_closed:
                    if self.stepped_back or second <= self.last_closed - LATE_LIMIT:
                        # a second already written, stamped by a clock that went back
                        self.stats.incr("clock_step_dropped_events", batch.n_pmt_events)
                        self.corruption.trouble(
                            "clock_step", "events stamped %d s before the last second "
                            "written (a wall clock stepped back): not counted again"
                            % (self.last_closed - second))
                        return
                    self.stats.incr("late_batches")
                acc = self.open[second] = self.accumulator(second)
            acc.add(batch, ns // 1000)

    # -- flushing ------------------------------------------------------------------

    def tick(self):
        try:
            if self.link is not None:
                self.link.kick()
            now = self.wall_time()
            self.watch_wall_clock(now)
            self.close_seconds(int(now - 1 - GRACE))
            self.pump()
            self.write_channels()
            self.write_runs()
            self.sweep_clocks()
            self.stats.set("open_seconds", len(self.open))
            self.stats.set("pending_flushes", len(self.pending))
        except Exception:
            self.log.failure("pull worker tick failed")

    def watch_wall_clock(self, now):
        """A wall clock stepped back: log it once; until it is past the seconds already
        written, events stamped in them are dropped (counted), never written twice. The
        ticks themselves run on the monotonic clock and go on."""
        if self.last_wall is not None and now < self.last_wall - STEP_TOLERANCE:
            self.stats.incr("clock_steps_back")
            self.log.error("wall clock stepped back {step:.1f} s: seconds up to {last} are "
                           "already written; events stamped in them are not counted again",
                           step=self.last_wall - now, last=self.last_closed)
            self.stepped_back = True
        elif self.stepped_back and self.last_closed is not None and \
                int(now - 1 - GRACE) > self.last_closed:
            self.stepped_back = False
            self.log.info("wall clock past the seconds written before its step: normal")
        self.last_wall = now

    def close_seconds(self, up_to):
        """Queue a flush for every second <= up_to; an idle second still gets one."""
        closing = sorted(s for s in self.open if s <= up_to)
        for second in closing:
            self._queue(self.open.pop(second))
        if self.last_closed is None or up_to > self.last_closed:
            if up_to not in closing:
                self._queue(self.accumulator(up_to))  # heartbeat of an idle second
            self.last_closed = up_to
        if self.channels is not None:
            self.channels["occupancy"].advance(self.last_closed)

    def _queue(self, acc):
        occupancy, _, bad_crate = acc.fold()  # the second's hits, counted and split
        if bad_crate:
            self.corruption.note("hit_bad_crate", bad_crate)
        if acc.unfiled:
            self.stats.incr("run_events_unfiled", acc.unfiled)
            self.corruption.trouble("runs_per_second", "more than %d runs in one second: "
                                    "the events of the others are in no run record"
                                    % len(acc.runs))
        events = acc.events
        if self.channels is not None and events:
            self.channels["occupancy"].add_hits(acc.second, occupancy, events)
        flush_id = "%s:%d" % (self._run, next(self._flush_ids))
        self.pending.append((acc.second, events, acc.payload(flush_id, self.rng,
                                                             writer=self._run)))
        while len(self.pending) > MAX_PENDING:
            second, events, _ = self.pending.pop(0)
            self.stats.incr("dropped_seconds")
            self.stats.incr("dropped_events", events)
            self.corruption.trouble("flush_queue_full",
                                    "Redis unreachable; oldest seconds dropped")

    def pump(self):
        """Send the oldest pending flush if none is in flight."""
        if self.in_flight is not None or not self.pending:
            return
        if self.clock.seconds() < self.retry_at:
            return
        second, events, payload = self.pending[0]
        d = self.in_flight = self.store.flush(payload)

        def applied(result):
            self.in_flight = None
            if self.pending and self.pending[0][2] is payload:
                self.pending.pop(0)
            self.stats.incr("flushed_events", events)
            if self.applied_second is None or second > self.applied_second:
                self.applied_second = second
            self.send_progress()
            if not self._stopping:
                self.pump()

        def failed(failure):
            self.in_flight = None
            self.retry_at = self.clock.seconds() + RETRY_DELAY

        return self.watch_flush(d, applied, failed)

    def write_channels(self):
        """Write the occupancy partials and progress (one call in flight), then finalise
        what every worker has passed. Data-driven: after an outage the finaliser follows
        the progress of the slowest worker, not the wall clock."""
        if self.channels is None or self.clock.seconds() < self.channels_retry_at:
            return None
        d = self.channels.write()
        if d is None:
            return None

        def written(_):
            self.stats.set("channel_progress", self.channels["occupancy"].progress or 0)
            if not self._stopping:
                f = self.finaliser.finalise()
                f.addErrback(self._finalise_failed)

        def failed(failure):
            self.stats.incr("channel_write_errors")
            self.channels_retry_at = self.clock.seconds() + RETRY_DELAY
            self.corruption.trouble("channel_write_failed", failure.getErrorMessage())

        d.addCallbacks(written, failed)
        return d

    # -- issue 13: run occupancy, clock sweep -------------------------------------------

    def send_progress(self):
        """Tell the clock sweep that every loose end up to the last applied second is in
        Redis (one call in flight; a failed one is sent again with the next flush)."""
        if self.progress_in_flight is not None or self.applied_second is None or \
                self.applied_second == self.progress_sent:
            return None
        redis = getattr(self.store, "redis", None)
        if redis is None:  # a store without Redis (test doubles): no sweep to tell
            return None
        second = self.applied_second
        d = self.progress_in_flight = analyses.progress(redis, self._run, second)

        def sent(_):
            self.progress_in_flight = None
            self.progress_sent = max(second, self.progress_sent or second)

        def failed(failure):
            self.progress_in_flight = None
            self.stats.incr("clock_progress_errors")

        d.addCallbacks(sent, failed)
        return d

    def sweep_clocks(self):
        """Pair and judge the loose ends every worker has passed (once a second)."""
        now = self.clock.seconds()
        redis = getattr(self.store, "redis", None)
        if self.sweep_in_flight is not None or now - self.swept_at < 1.0 or \
                self.applied_second is None or redis is None:
            return None
        self.swept_at = now
        d = self.sweep_in_flight = analyses.sweep(redis, self.tolerance)

        def swept(result):
            self.sweep_in_flight = None
            jumps, burst, first = result
            if jumps:
                self.stats.incr("clock_jumps_across_batches", jumps)
            if burst:
                self.clock_burst(first)

        def failed(failure):
            self.sweep_in_flight = None
            self.stats.incr("clock_sweep_errors")
            self.corruption.trouble("clock_sweep_failed", failure.getErrorMessage())

        d.addCallbacks(swept, failed)
        return d

    def clock_burst(self, jump):
        """A burst of clock jumps began: one alarm (the store decided atomically)."""
        jump = jump or {}
        text = "clock jumps - %s (run %s)" % (clockjumps.describe(
            jump.get("kind"), jump.get("previous_gtid", 0), jump.get("gtid", 0),
            jump.get("d10", 0), jump.get("d50", 0)), jump.get("run"))
        self.stats.incr("clock_jump_alarms")
        self.log.warn("{text}", text=text)
        d = raise_alarm(self.store.redis, ALARM_LEVEL, text, self.wall_time())
        d.addErrback(lambda f: self.corruption.trouble("clock_alarm_failed",
                                                       f.getErrorMessage()))
        return d

    def write_runs(self, force=False):
        """Write the followed runs' occupancy partials (one call in flight), every
        RUN_OCCUPANCY_WRITE s or when a run is no longer followed."""
        if self.runs_in_flight is not None or not self.follower.unwritten():
            return self.runs_in_flight
        now = self.clock.seconds()
        if not (force or self.follower.retired or
                now - self.runs_written_at >= RUN_OCCUPANCY_WRITE):
            return None
        self.runs_written_at = now
        parts, token = self.follower.collect()
        d = self.runs_in_flight = run_store.write_run_occupancy(self.store.redis, parts)

        def written(_):
            self.runs_in_flight = None
            self.follower.written(token)
            self.stats.incr("run_occupancy_parts_written", len(parts))

        def failed(failure):
            self.runs_in_flight = None
            self.stats.incr("run_occupancy_write_errors")
            self.corruption.trouble("run_occupancy_write_failed", failure.getErrorMessage())

        d.addCallbacks(written, failed)
        return d

    @defer.inlineCallbacks
    def _stop_analyses(self, deadline):
        """SIGTERM, after the last flushes: the followed runs' partials, then the clock
        sweep's progress, and leave it (the sweep no longer waits for this worker)."""
        while self.follower.unwritten() and self.clock.seconds() < deadline:
            d = self.runs_in_flight or self.write_runs(force=True)
            try:
                yield d
            except Exception:
                yield task.deferLater(self.clock, 0.2, lambda: None)
        if self.follower.unwritten():
            self.log.error("stopping with per-run occupancy partials unwritten")
        if self.pending:
            return  # unflushed seconds: keep this writer's progress where it is
        try:
            if self.progress_in_flight is not None:
                yield self.progress_in_flight
            yield self.send_progress()
            yield analyses.leave(self.store.redis, self._run)
        except Exception:
            self.log.warn("stopping: could not leave the clock sweep")

    def _finalise_failed(self, failure):
        self.stats.incr("finalise_errors")
        self.corruption.trouble("finalise_failed", failure.getErrorMessage())

    @defer.inlineCallbacks
    def stopService(self):
        """SIGTERM: flush every open second, wait (bounded) for the queue to drain."""
        self.stop_ticking()
        if self.link is not None:
            # Take in what arrived, and what is still on its way: ZeroMQ does not re-route
            # the messages in flight to a PULL socket that closes, so close in a lull
            # (QUIET_BEFORE_CLOSE without a message), waiting at most QUIET_WAIT_LIMIT.
            self.link.drain()
            quiet_since = self.clock.seconds()
            give_up = quiet_since + QUIET_WAIT_LIMIT
            while self.clock.seconds() < give_up:
                yield task.deferLater(self.clock, 0.02, lambda: None)
                if self.link.drain():
                    quiet_since = self.clock.seconds()
                elif self.clock.seconds() - quiet_since >= QUIET_BEFORE_CLOSE:
                    break
            self.link.shutdown()
            self.link = None
        for second in sorted(self.open):
            self._queue(self.open.pop(second))
            self.last_closed = max(second, self.last_closed or second)
        self.channels_retry_at = 0.0
        deadline = self.clock.seconds() + STOP_TIMEOUT
        self.retry_at = 0.0
        while self.pending and self.clock.seconds() < deadline:
            d = self.pump() if self.in_flight is None else self.in_flight
            if d is None:
                break
            try:
                yield d
            except Exception:
                pass
            if self.in_flight is None and self.pending and self.retry_at:
                yield task.deferLater(self.clock, 0.2, lambda: None)
        if self.channels is not None:
            # the last partials, then leave: the other workers need not wait for this one
            if self.last_closed is not None:
                self.channels["occupancy"].advance(self.last_closed)
            while self.clock.seconds() < deadline:
                d = self.channels.in_flight or self.write_channels()
                if d is not None:
                    yield d
                elif not self.channels.unwritten():
                    break
                else:  # waiting out a retry delay
                    yield task.deferLater(self.clock, 0.2, lambda: None)
            if self.channels.unwritten():
                self.log.error("stopping with occupancy partials unwritten")
            else:
                yield self.channels.leave()
        yield self._stop_analyses(deadline)
        self.stats.set("open_seconds", len(self.open))
        self.stats.set("pending_flushes", len(self.pending))
        if self.pending:
            lost = sum(events for _, events, _ in self.pending)
            self.stats.incr("dropped_seconds", len(self.pending))
            self.stats.incr("dropped_events", lost)
            # an error (forwarded as an alarm) only when events were lost, not heartbeats
            (self.log.error if lost else self.log.warn)(
                "stopping with {n} unflushed seconds ({e} events) lost",
                n=len(self.pending), e=lost)


#: More pending seconds than this (normally 0 or 1) is reported in the heartbeat status.
BEHIND_SECONDS = 5


def status_of(worker):
    """The heartbeat text: ok, or why the seconds this worker aggregates are not in Redis
    (the log server may still reach Redis when this worker's writes fail)."""
    if worker.flush_failures:
        return "%s: cannot write to Redis (%d flushes failed in a row, %d seconds waiting)" % (
            worker.name, worker.flush_failures, len(worker.pending))
    if len(worker.pending) > BEHIND_SECONDS:
        return "%s: behind, %d seconds waiting to be written to Redis" % (
            worker.name, len(worker.pending))
    return "ok"


def make_service(options, reactor):
    name = options["name"]
    try:
        tolerance = clockjumps.parse_section(
            (options.get("config-sections") or {}).get("clock-jumps"))
    except ValueError as e:
        raise OptionError("--config: %s" % (e,))
    base = ProcessBase(options, name, heartbeat_name=name)
    worker = PullWorker(name, options["zmq"], EventStore(base.redis), base.stats,
                        reactor, redis=base.redis)
    worker.tolerance = tolerance
    worker.wall = wall_clock
    worker.link_keys = curve.link_keys(options, "client", [options["zmq"]])
    base.status = lambda: status_of(worker)
    worker.setServiceParent(base.service)
    return base.service
