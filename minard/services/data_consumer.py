"""`data-consumer`: ZeroMQ PULL (5557 CMOS, 5558 BASE) -> CMOS rates and base currents
in Redis (SPEC §3, §4). Any number of workers per port.

* CMOS: the rate of a channel comes from its previous (count, receipt time), shared by
  all workers in Redis and updated atomically per record by a Lua script
  (store/datastream.py). Records queue while a script call is in flight and go out
  together in the next one, so a busy worker makes few round trips. The receipt time is
  the producer's stamp (ZeroMQ frame 0), so every worker agrees on it.
* BASE: raw − 127 of the masked-in channels of present slots.
* Values go to the per-channel store (store/channels.py): this worker's running partial
  of every open 5-s, 60-s and 1-day bucket is overwritten once a second, with its
  progress (the second up to which every record it received is in them); buckets every
  worker has passed are then finalised, by whichever worker claims them.
* While Redis is away, records and partials wait in memory, bounded; what a bound drops
  is counted. A partial overwrites the one before it, so a retried write that had in
  fact been applied counts nothing twice.
* Corrupt input (bad stamp, truncated records, wrong payload length, unknown record ids)
  is counted per kind and logged once per interval; it never stops the worker.
* SIGTERM (stopService) flushes everything held, within a time limit.
"""
import collections
import os
import uuid
from urllib.parse import urlsplit

import numpy as np
from twisted.internet import defer, task

from minard import constants as C, curve, zmqlink
from minard.clock import wall as wall_clock
from minard.services.common import ProcessBase, ZmqWorker
from minard.stats import CorruptionLog
from minard.store.channels import ChannelStore, Finaliser
from minard.store.connection import connect
from minard.store.datastream import CmosState
from minard.wire import datastream as ds

#: How often the worker flushes and finalises (s).
TICK = 1.0
#: Progress (the second up to which every record received is in the partials) stays
#: this far behind the clock, for records still on their way from the producer (s).
GRACE = 2
#: Most CMOS records waiting for the state script (about 10 minutes of real load).
MAX_QUEUED_RECORDS = 20000
#: CMOS records per state-script call at most: no script may hold Redis for more than
#: 5 ms, and a record costs the script ~70 µs (all counts valid) to ~240 µs (some invalid)
#: with 8 slots (SLOWLOG: bench/bench_store_scripts.py, bench/README.md).
CMOS_BATCH = 16
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

    def __init__(self, address, kinds, redis, stats, clock, link_factory=None,
                 state_redis=None):
        self.address = address
        self.kinds = list(kinds)
        # The state script is not idempotent: a call whose reply timed out may still be
        # applied when a stalled Redis wakes up, and its retry then finds its own
        # records' pairs and yields no rates. So in the service the state calls have a
        # connection of their own without a reply timeout (`state_redis`): they wait
        # out a stalled Redis and are answered; only a lost connection fails them.
        self.state = CmosState(redis if state_redis is None else state_redis)
        self.redis = redis
        self.stats = stats
        self.clock = clock
        self.link_factory = link_factory or PausablePullLink
        self.corruption = CorruptionLog(stats, clock=clock.seconds)
        self.queue = collections.deque()   # CMOS records waiting for the state script
        self.cmos_calls = collections.deque()  # state-script calls awaiting replies
        self.cmos_retry_at = 0.0
        self.flush_retry_at = 0.0
        self.flush_failures = 0            # in a row
        self._stopping = False
        # writer ids must never collide between workers (each owns its partials)
        self._run = "data-consumer-%s" % (uuid.uuid4().hex,)
        self.channels = ChannelStore(redis, self._run, self.kinds, stats)
        self.finalisers = {}

    # -- receiving -------------------------------------------------------------------

    def make_link(self):
        if self.link_keys is None:
            return self.link_factory(self.address, self.on_message)
        return self.link_factory(self.address, self.on_message, keys=self.link_keys)

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
            self.channels.add_name(name)
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
        writer = self.channels.add_name(name)
        if writer.progress is not None and second <= writer.progress:
            self.stats.incr("late_samples", len(index))  # a new field: finalised again
        writer.add_samples(second, index, values)

    # -- CMOS state ------------------------------------------------------------------

    @property
    def cmos_in_flight(self):
        """The oldest state-script call still waiting for its reply, or None."""
        return self.cmos_calls[0][0] if self.cmos_calls else None

    def pump_cmos(self):
        """Send queued CMOS records to the state script, in batches, with at most
        CMOS_IN_FLIGHT calls outstanding (one connection: Redis runs them in order, and
        this worker handles one reply while Redis runs the next call)."""
        while self.queue and len(self.cmos_calls) < CMOS_IN_FLIGHT:
            if self.clock.seconds() < self.cmos_retry_at:
                break
            batch = [self.queue.popleft() for _ in range(min(CMOS_BATCH, len(self.queue)))]
            d = self.state.rates(batch)
            self.cmos_calls.append((d, batch))
            d.addCallbacks(self._rated, self._rating_failed, callbackArgs=(batch, d),
                           errbackArgs=(batch, d))
            d.addErrback(lambda f: self.log.failure("CMOS bookkeeping failed", f))
        return self.cmos_in_flight

    def _done_call(self, d):
        for i, (call, batch) in enumerate(self.cmos_calls):
            if call is d:
                del self.cmos_calls[i]
                return

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
        # back in receipt order: when a connection is lost, every call on it fails, the
        # newest last, and its records must not go out before the older ones (a record
        # rated after a newer one of its crate gets no rate)
        self.queue = collections.deque(sorted(list(batch) + list(self.queue),
                                              key=lambda record: record[1]))
        self.cmos_retry_at = self.clock.seconds() + RETRY_DELAY
        self.corruption.trouble("cmos_state_failed", failure.getErrorMessage())

    # -- flushing and finalising -----------------------------------------------------

    def tick(self):
        try:
            if self.link is not None:
                self.link.kick()
            self.pump_cmos()
            self.flush()
            self.stats.set("queued_records", len(self.queue))
            self.stats.set("open_partials", sum(len(w.partials)
                                                for w in self.channels.writers.values()))
        except Exception:
            self.log.failure("data consumer tick failed")

    def progress(self):
        """The second up to which every record received is in the partials: GRACE s
        behind the clock, and before the oldest CMOS record still waiting for its rate."""
        progress = int(self.wall_time()) - GRACE
        waiting = [self.queue[0]] if self.queue else []
        waiting += [batch[0] for _, batch in self.cmos_calls if batch]
        for crate, ns, *_ in waiting:
            progress = min(progress, ns // 1_000_000_000 - 1)
        return progress

    def flush(self, progress=None):
        """Write the partials and progress of every quantity (one call in flight), then
        finalise what every worker has passed."""
        if self.channels.in_flight is not None:
            return self.channels.in_flight
        if self.clock.seconds() < self.flush_retry_at:
            return None
        progress = self.progress() if progress is None else progress
        for name in self.kinds:
            self.channels.add_name(name).advance(progress)
        d = self.channels.write()
        if d is None:
            return None

        def applied(names):
            if not self._stopping:
                self.finalise()

        def failed(failure):
            self.flush_retry_at = self.clock.seconds() + RETRY_DELAY

        return self.watch_flush(d, applied, failed)

    def finalise(self):
        for name in self.kinds:
            f = self.finalisers.get(name)
            if f is None:
                f = self.finalisers[name] = Finaliser(self.redis, name, self._run, self.stats)

            def failed(failure):
                self.stats.incr("finalise_errors")
                self.corruption.trouble("finalise_failed", failure.getErrorMessage())

            f.finalise().addErrback(failed)

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
            if d is not None:  # no reply timeout on a state call: bound the wait here
                d.addTimeout(deadline - self.clock.seconds(), self.clock)
            if d is None:
                if self.queue:  # waiting out a retry delay
                    yield task.deferLater(self.clock, 0.2, lambda: None)
                    continue
                # every record received is in the partials: progress up to now
                d = self.flush(progress=int(self.wall_time()))
                if d is None:
                    if not self.channels.unwritten():
                        break
                    yield task.deferLater(self.clock, 0.2, lambda: None)
                    continue
            try:
                yield d
            except Exception:
                pass
        lost = len(self.queue)
        if lost or self.channels.unwritten():
            self.log.error("stopping with {n} CMOS records and partials unwritten", n=lost)
        else:
            yield self.channels.leave()


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
                            base.stats, reactor,
                            state_redis=connect(options["redis"], reply_timeout=None))
    consumer.wall = wall_clock
    consumer.link_keys = curve.link_keys(options, "client", [address_for(options)])
    base.status = lambda: status_of(consumer)
    consumer.setServiceParent(base.service)
    return base.service
