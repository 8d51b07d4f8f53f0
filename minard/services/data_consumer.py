"""`data-consumer`: ZeroMQ PULL (5557 CMOS, 5558 BASE) -> CMOS rates and base currents
in Redis (SPEC §3, §4). Any number of workers per port.

* CMOS: the rate of a channel comes from its previous (count, receipt time), shared by
  all workers in Redis and updated atomically per record by a Lua script
  (store/datastream.py). Records queue while a script call is in flight and go out
  together in the next one, so a busy worker makes few round trips. The receipt time is
  the producer's stamp (ZeroMQ frame 0), so every worker agrees on it.
* BASE: raw − 127 of the masked-in channels of present slots.
* Values are summed per channel in memory by 5 s bucket (the smallest hash interval) and
  flushed every second, also when idle, into `ts:H:b:<name>:sum/len` of every hash
  interval in one round trip; then the due buckets are finalised (store/finalise.py).
* While Redis is away, records and sums wait in memory, bounded; what a bound drops is
  counted. A failed flush is retried as it was, with the same flush id, so a flush that
  was applied but whose reply was lost is not counted twice.
* Corrupt input (bad stamp, truncated records, wrong payload length, unknown record ids)
  is counted per kind and logged once per interval; it never stops the worker.
* SIGTERM (stopService) flushes everything held, within a time limit.
"""
import collections
import itertools
import os
import uuid
from urllib.parse import urlsplit

import numpy as np
from twisted.internet import defer, task

from minard import constants as C, zmqlink
from minard.services.common import ProcessBase, ZmqWorker
from minard.stats import CorruptionLog
from minard.store.datastream import CmosState, SumsStore
from minard.store.finalise import Finaliser
from minard.wire import datastream as ds

#: How often the worker flushes and finalises (s).
TICK = 1.0
#: Sums are held by buckets of this many seconds (divides every hash interval).
BUCKET = min(C.HASH_INTERVALS)
#: Most buckets held while Redis is away (180 × 5 s = 15 minutes), per kind.
MAX_PENDING_BUCKETS = 180
#: Most CMOS records waiting for the state script (about 10 minutes of real load).
MAX_QUEUED_RECORDS = 20000
#: CMOS records per state-script call at most (keeps each script call short).
CMOS_BATCH = 64
#: State-script calls outstanding at once.
CMOS_IN_FLIGHT = 2
#: After a failed Redis call, wait this long before the next attempt (s).
RETRY_DELAY = 1.0
#: On SIGTERM, wait at most this long for the last writes (s).
STOP_TIMEOUT = 8.0

#: Flow control: stop reading ZeroMQ when this many CMOS records wait for the state
#: script, resume below RESUME_QUEUE. ZeroMQ's high-water marks then push back to the
#: producer, which drops and counts (SPEC §2.5) instead of this worker growing.
PAUSE_QUEUE = 1000
RESUME_QUEUE = 200

NAMES = {C.RECORD_CMOS: "cmos", C.RECORD_BASE: "base"}
PORT_KINDS = {5557: ("cmos",), 5558: ("base",)}


class PausablePullLink(zmqlink.PullLink):
    """A PullLink that can stop reading for a while (the worker is behind)."""

    paused = False

    def pause(self):
        if not self.paused and self.factory is not None:
            self.paused = True
            self.factory.reactor.removeReader(self)

    def resume(self):
        if self.paused and self.factory is not None:
            self.paused = False
            self.factory.reactor.addReader(self)
            self.doRead()  # the descriptor is edge-triggered: read what is already queued

    def doRead(self):
        if not self.paused:
            zmqlink.PullLink.doRead(self)


class ChannelSums:
    """Per-channel sums and sample counts of one quantity, by BUCKET-second bucket."""

    def __init__(self, max_buckets=MAX_PENDING_BUCKETS):
        self.max_buckets = max_buckets
        self.buckets = {}

    def add(self, second, index, values):
        """Add one record's values (unique channel indices). Returns the samples a full
        store had to drop (the oldest bucket goes)."""
        b = int(second) // BUCKET
        entry = self.buckets.get(b)
        dropped = 0
        if entry is None:
            entry = self.buckets[b] = (np.zeros(C.N_CHANNELS), np.zeros(C.N_CHANNELS, np.int64))
            while len(self.buckets) > self.max_buckets:
                oldest = min(self.buckets)
                dropped += int(self.buckets.pop(oldest)[1].sum())
        entry[0][index] += values
        entry[1][index] += 1
        return dropped

    def __len__(self):
        return len(self.buckets)

    def take(self):
        """Everything held, as [(first second of bucket, index, sums, lens)]; empties."""
        out = []
        for b in sorted(self.buckets):
            sums, lens = self.buckets[b]
            index = np.flatnonzero(lens)
            if len(index):
                out.append((b * BUCKET, index, sums[index], lens[index]))
        self.buckets = {}
        return out


def kinds_for(options):
    """The quantities a worker finalises: by its port (5557 cmos, 5558 base), else both."""
    port = options.get("port")
    if options.get("zmq"):
        try:
            port = urlsplit(options["zmq"]).port
        except ValueError:
            port = None
    return PORT_KINDS.get(port, ("cmos", "base"))


def address_for(options):
    return options.get("zmq") or "tcp://127.0.0.1:%d" % options["port"]


class DataConsumer(ZmqWorker):
    tick_interval = TICK

    def __init__(self, address, kinds, redis, stats, clock, link_factory=None):
        self.address = address
        self.kinds = list(kinds)
        self.state = CmosState(redis)
        self.store = SumsStore(redis)
        self.finaliser = Finaliser(redis)
        self.stats = stats
        self.clock = clock
        self.link_factory = link_factory or PausablePullLink
        self.corruption = CorruptionLog(stats, clock=clock.seconds)
        self.sums = {"cmos": ChannelSums(), "base": ChannelSums()}
        self.queue = collections.deque()   # CMOS records waiting for the state script
        self.cmos_calls = collections.deque()  # state-script calls awaiting replies
        self.cmos_retry_at = 0.0
        self.unsent = None                 # (flush_id, groups, samples) of a failed flush
        self.flush_in_flight = None
        self.flush_retry_at = 0.0
        self.flush_failures = 0            # in a row
        self.finalising = {}
        self._stopping = False
        # flush ids must never collide between workers (a collision looks like a retry)
        self._run = "data-consumer-%s" % (uuid.uuid4().hex,)
        self._flush_ids = itertools.count()

    # -- receiving -------------------------------------------------------------------

    def make_link(self):
        return self.link_factory(self.address, self.on_message)

    def on_message(self, frames):
        ZmqWorker.on_message(self, frames)
        if len(self.queue) >= PAUSE_QUEUE and self.link is not None and not self.link.paused:
            self.link.pause()
            self.stats.incr("read_pauses")
        self.pump_cmos()

    def handle_records(self, ns, records):
        for frame in records:
            try:
                parts = ds.split_records(frame)
            except ds.CorruptRecord as e:
                self.corruption.note(e.kind, 1, str(e))
                continue
            for record in parts:
                self.add_record(ns, record)

    def add_record(self, ns, record):
        name = NAMES.get(record.record_id)
        if name is None:
            self.corruption.note("unknown_record", 1, ds.record_name(record.record_id))
            return
        if name not in self.kinds:
            self.kinds.append(name)  # finalise what we receive, whatever the port
        try:
            if name == "cmos":
                self.add_cmos(ns, ds.decode_cmos(record.payload))
            else:
                self.add_base(ns, ds.decode_base(record.payload))
        except ds.CorruptRecord as e:
            self.corruption.note("%s_%s" % (name, e.kind), 1, str(e))
            return
        self.stats.incr("records_" + name)

    def add_cmos(self, ns, rec):
        if rec.truncated_slots:
            self.stats.incr("cmos_truncated_records")
            self.stats.incr("cmos_truncated_slots", rec.truncated_slots)
        valid = rec.valid
        n_invalid = len(valid) - int(valid.sum())
        if n_invalid:
            self.stats.incr("cmos_invalid_counts", n_invalid)
        if not len(rec.index):
            return
        self.queue.append((rec.crate, ns, rec.index, rec.count, valid, rec.masked_in))
        while len(self.queue) > MAX_QUEUED_RECORDS:
            self.queue.popleft()
            self.stats.incr("dropped_records")
            self.corruption.trouble("record_queue_full", "Redis unreachable or slow; "
                                    "oldest CMOS records dropped")

    def add_base(self, ns, rec):
        self.stats.incr("base_samples", len(rec.index))
        self._add("base", ns // 1_000_000_000, rec.index, rec.current)

    def _add(self, name, second, index, values):
        if not len(index):
            return
        if self.clock.seconds() >= (second // BUCKET + 1) * BUCKET + C.FINALISE_DELAY:
            self.stats.incr("late_samples", len(index))
        dropped = self.sums[name].add(second, index, values)
        if dropped:
            self.stats.incr("dropped_samples", dropped)
            self.corruption.trouble("sums_full", "Redis unreachable; oldest sums dropped")

    # -- CMOS state ------------------------------------------------------------------

    @property
    def cmos_in_flight(self):
        """The oldest state-script call still waiting for its reply, or None."""
        return self.cmos_calls[0] if self.cmos_calls else None

    def pump_cmos(self):
        """Send queued CMOS records to the state script, in batches, with at most
        CMOS_IN_FLIGHT calls outstanding (one connection: Redis runs them in order, and
        this worker handles one reply while Redis runs the next call)."""
        while self.queue and len(self.cmos_calls) < CMOS_IN_FLIGHT:
            if self.clock.seconds() < self.cmos_retry_at:
                break
            batch = [self.queue.popleft() for _ in range(min(CMOS_BATCH, len(self.queue)))]
            d = self.state.rates(batch)
            self.cmos_calls.append(d)
            d.addCallbacks(self._rated, self._rating_failed, callbackArgs=(batch, d),
                           errbackArgs=(batch, d))
            d.addErrback(lambda f: self.log.failure("CMOS bookkeeping failed", f))
        return self.cmos_in_flight

    def _done_call(self, d):
        try:
            self.cmos_calls.remove(d)
        except ValueError:
            pass

    def _rated(self, results, batch, d):
        self._done_call(d)
        n = 0
        for (crate, ns, *_), (index, rate) in zip(batch, results):
            self._add("cmos", ns // 1_000_000_000, index, rate)
            n += len(index)
        self.stats.incr("cmos_rates", n)
        self.stats.incr("cmos_records_rated", len(batch))
        if self.link is not None and self.link.paused and len(self.queue) <= RESUME_QUEUE:
            self.link.resume()
        self.pump_cmos()

    def _rating_failed(self, failure, batch, d):
        self._done_call(d)
        self.stats.incr("cmos_state_errors")
        self.queue.extendleft(reversed(batch))
        self.cmos_retry_at = self.clock.seconds() + RETRY_DELAY
        self.corruption.trouble("cmos_state_failed", failure.getErrorMessage())

    # -- flushing and finalising -----------------------------------------------------

    def tick(self):
        try:
            if self.link is not None:
                self.link.kick()
            self.pump_cmos()
            self.flush()
            self.finalise()
            self.stats.set("queued_records", len(self.queue))
            self.stats.set("pending_buckets", sum(len(s) for s in self.sums.values()))
        except Exception:
            self.log.failure("data consumer tick failed")

    def _next_flush(self):
        if self.unsent is not None:
            return self.unsent
        groups = []
        samples = 0
        for name, sums in self.sums.items():
            for t, index, s, lens in sums.take():
                groups.append((name, t, index, s, lens))
                samples += int(lens.sum())
        if not groups:
            return None
        self.unsent = ("%s:%d" % (self._run, next(self._flush_ids)), groups, samples)
        return self.unsent

    def flush(self):
        """Flush what is held (one flush in flight at a time)."""
        if self.flush_in_flight is not None:
            return self.flush_in_flight
        if self.clock.seconds() < self.flush_retry_at:
            return None
        pending = self._next_flush()
        if pending is None:
            return None
        flush_id, groups, samples = pending
        d = self.flush_in_flight = self.store.flush(flush_id, groups)

        def applied(result):
            self.flush_in_flight = None
            self.unsent = None
            self.stats.incr("flushed_samples", samples)

        def failed(failure):
            self.flush_in_flight = None
            self.flush_retry_at = self.clock.seconds() + RETRY_DELAY

        return self.watch_flush(d, applied, failed)

    def finalise(self):
        now = int(self.clock.seconds())
        for name in self.kinds:
            if self.finalising.get(name) is not None:
                continue
            d = self.finalising[name] = self.finaliser.finalise_due(name, "mean", now)

            def done(result, name=name):
                self.finalising[name] = None
                n = sum(result.values())
                if n:
                    self.stats.incr("finalised_" + name, n)

            def failed(failure, name=name):
                self.finalising[name] = None
                self.stats.incr("finalise_errors")
                self.corruption.trouble("finalise_failed", failure.getErrorMessage())

            d.addCallbacks(done, failed)

    # -- stopping --------------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self):
        """SIGTERM: rate the queued CMOS records and flush every sum, within a limit."""
        self.stop_ticking()
        if self.link is not None:
            self.link.resume()
            self.link.kick()  # take in what already arrived
            self.link.shutdown()
            self.link = None
        deadline = self.clock.seconds() + STOP_TIMEOUT
        self.cmos_retry_at = self.flush_retry_at = 0.0
        while self.clock.seconds() < deadline:
            d = self.cmos_in_flight or self.pump_cmos()
            if d is None:
                if self.queue:  # waiting out a retry delay
                    yield task.deferLater(self.clock, 0.2, lambda: None)
                    continue
                d = self.flush_in_flight or self.flush()
                if d is None:
                    if self.unsent is None and not any(len(s) for s in self.sums.values()):
                        break
                    yield task.deferLater(self.clock, 0.2, lambda: None)
                    continue
            try:
                yield d
            except Exception:
                pass
        lost = len(self.queue)
        held = sum(len(s) for s in self.sums.values()) + (self.unsent is not None)
        if lost or held:
            self.log.error("stopping with {n} CMOS records and {b} sum buckets unwritten",
                           n=lost, b=held)


def status_of(consumer):
    """The heartbeat text: ok, or what is wrong."""
    if consumer.flush_failures:
        return "cannot write to Redis (%d flushes failed in a row)" % consumer.flush_failures
    if len(consumer.queue) >= PAUSE_QUEUE:
        return "behind: %d CMOS records waiting" % len(consumer.queue)
    return "ok"


def process_name(options, environ=os.environ):
    """The name of this worker's stats (`minard:stats:<name>`). Under supervisord it is the
    supervisord process name (data-consumer-cmos-0), the same after every restart, so
    /metrics does not show a dead `...-<old pid>` process for an hour after each one;
    elsewhere the port and the pid."""
    supervised = environ.get("SUPERVISOR_PROCESS_NAME", "").strip()
    if supervised and all(c.isalnum() or c in "-_." for c in supervised):
        return supervised
    return "data-consumer-%s-%d" % (urlsplit(address_for(options)).port, os.getpid())


def make_service(options, reactor):
    process = process_name(options)
    base = ProcessBase(options, process, heartbeat_name=process)
    consumer = DataConsumer(address_for(options), kinds_for(options), base.redis,
                            base.stats, reactor)
    base.status = lambda: status_of(consumer)
    consumer.setServiceParent(base.service)
    return base.service
