"""Fault injection with real processes and a real Redis (SPEC §7, issue 7 part 2).

A ControlHost dispatcher written here (tests.test_pipeline's) feeds
`twistd minard --role=dispatch-push`, N x `--role=dispatch-pull` write a private
redis-server; the test then restarts Redis, freezes it, kills and restarts the dispatcher,
kills pull workers, and compares what is stored, second by second, with what was sent.

Events are only sent in the first half of each wall-clock second (fraction 0.05-0.55), so
the second the push side stamps on a batch (a little later than the test wrote it, never
earlier) is the second the test counted it in: every
second can be compared exactly, and a loss can be pinned to the seconds it happened in.

What the design allows to be lost (and nothing else may be):
* Redis restarted (with its data saved on shutdown), or frozen for longer than the reply
  timeout: nothing. The workers keep their flushes queued and retry; a flush id makes a
  retried flush that Redis had already applied harmless (so nothing is counted twice).
  Frozen for 12 s or 70 s in the middle of the event stream and of a data stream (a data
  server written here -> data-producer -> data-consumers): every 5-s and 60-s bucket of
  occupancy, CMOS rates and base currents is finalised once, with the values the test
  computes from what it sent (RedisFrozenTests).
* The dispatcher dying in the middle of a frame: that incomplete frame (it was never
  received), counted by the push as `partial_frames_dropped`.
* A size field that lies (corrupt stream): the push counts it and drops the connection;
  what the dispatcher had queued behind the lie on that connection is gone with it.
* A pull worker given SIGTERM: nothing (its open seconds are flushed before it exits).
* A pull worker killed with SIGKILL: at most what it held - its open seconds and the
  messages queued to it - so only the seconds from ~2.5 s before to 0.5 s after the kill
  may be short; every other second is exact, counted by the surviving workers.
"""
import os
import random
import signal
import struct
import time

import numpy as np
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from minard import constants as C
from minard.store.datastream import decode_slot_state
from tests.channel_support import (assert_means, assert_occupancy, buckets, final,
                                   open_buckets, parts)
from tests.support import RedisServer, RoleProcess, SyncRedis, free_port, wait_for
from tests.test_aggregate_events import pmt_hits, random_events
from tests.test_pipeline import TestDispatcherFactory, frame
from tests.test_wire_sno import hand_built

#: Events are sent only while time.time() % 1 is in this window.
SEND_WINDOW = (0.05, 0.55)
#: The feeder writes every TICK seconds; events per second = PER_TICK / TICK * 0.5.
TICK = 0.01
PER_TICK = 30
PREFIX = 12  # caspur framing


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class EventPool:
    """A few hundred random events as ready frames, with their nhit and charge."""

    def __init__(self, seed, size=300):
        rng = random.Random(seed)
        events = random_events(rng, size)
        self.frames = [frame(PREFIX, b"RAWDATA", hand_built(*e)) for e in events]
        self.nhit = [len(pmt_hits(e[4])) for e in events]  # SPEC §3: not the FEC/D's
        self.charge = [sum(h[3] for h in pmt_hits(e[4])) for e in events]
        # the channel of every hit (a channel hit twice in an event counts twice)
        self.channels = [np.array([c << 9 | d << 5 | e for c, d, e, _ in ev[4]], dtype=np.int64)
                         for ev in events]
        self.position = 0
        self.last_channels = None

    def take(self, n):
        """(bytes, nhit sum, charge sum) of the next n events; `last_channels` is then the
        channels they hit."""
        size = len(self.frames)
        idx = [(self.position + i) % size for i in range(n)]
        self.position = (self.position + n) % size
        self.last_channels = np.concatenate([self.channels[i] for i in idx])
        return (b"".join(self.frames[i] for i in idx), sum(self.nhit[i] for i in idx),
                sum(self.charge[i] for i in idx))


class Feeder:
    """Streams events to the dispatcher's current connection in the middle of each second
    and remembers, per second, how many events (and their nhit and charge) went out."""

    def __init__(self, factory, pool):
        self.factory = factory
        self.pool = pool
        self.sent = {}       # second -> [events, nhit, charge]
        self.hits = {}       # second -> hits per channel
        self.times = []      # (time, events) of every write
        self.loop = None

    def start(self):
        self.loop = task.LoopingCall(self.tick)
        self.loop.start(TICK)

    def stop(self):
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None

    def tick(self):
        now = time.time()
        if not SEND_WINDOW[0] <= now % 1 < SEND_WINDOW[1] or not self.factory.connections:
            return
        self.send(PER_TICK, now)

    def send(self, n, now=None):
        now = time.time() if now is None else now
        data, nhit, charge = self.pool.take(n)
        self.factory.connections[0].transport.write(data)
        row = self.sent.setdefault(int(now), [0, 0, 0])
        row[0] += n
        row[1] += nhit
        row[2] += charge
        hits = self.hits.get(int(now))
        if hits is None:
            hits = self.hits[int(now)] = np.zeros(C.N_CHANNELS, dtype=np.int64)
        hits += np.bincount(self.pool.last_channels, minlength=C.N_CHANNELS)
        self.times.append((now, n))

    def total(self):
        return sum(row[0] for row in self.sent.values())

    def sent_between(self, start, stop):
        return sum(n for t, n in self.times if start <= t <= stop)

    @defer.inlineCallbacks
    def run(self, seconds):
        self.start()
        yield sleep(seconds)
        self.stop()


@defer.inlineCallbacks
def until_fraction(fraction):
    """Wait until time.time() % 1 == fraction (the next time it comes)."""
    now = time.time()
    delay = (fraction - now % 1) % 1
    yield sleep(delay)


class FaultTestCase(unittest.TestCase):
    """A private Redis, a test dispatcher, push and pull processes, per-second checks."""

    timeout = 120
    seed = 1

    def setUp(self):
        self.redis = RedisServer().start()
        self.addCleanup(self._cleanup_redis)
        self.sync = SyncRedis(self.redis.port)
        self.processes = []
        self.addCleanup(self._stop_processes)
        self.factory = TestDispatcherFactory(PREFIX)
        self.dispatcher_port = free_port()
        self.zmq = "tcp://127.0.0.1:%d" % free_port()
        self.listening = reactor.listenTCP(self.dispatcher_port, self.factory,
                                           interface="127.0.0.1")
        self.addCleanup(self._stop_listening)
        self.pool = EventPool(self.seed)
        self.feeder = Feeder(self.factory, self.pool)
        self.addCleanup(self.feeder.stop)

    def _cleanup_redis(self):
        if self.redis.process is not None and self.redis.process.poll() is None:
            self.redis.resume()
        self.redis.cleanup()

    def _stop_processes(self):
        for p in self.processes:
            p.stop()

    def _stop_listening(self):
        if self.listening is not None:
            listening, self.listening = self.listening, None
            for connection in list(self.factory.connections):
                connection.transport.abortConnection()
            return listening.stopListening()

    def spawn(self, role, *args):
        p = RoleProcess(role, "--redis", self.redis.url, *args).start()
        self.processes.append(p)
        return p

    def handshakes(self):
        return [c for c in self.factory.connections if len(c.handshake_done()) >= 3]

    @defer.inlineCallbacks
    def start_pipeline(self, workers):
        """Start N pull workers and a push; wait until all are up and connected."""
        self.pulls = [self.spawn("dispatch-pull", "--zmq", self.zmq, "--name", "pull-%d" % i)
                      for i in range(workers)]
        self.push = self.spawn("dispatch-push", "--host", "127.0.0.1",
                               "--port", str(self.dispatcher_port), "--zmq", self.zmq)
        yield wait_for(lambda: self.handshakes(), timeout=30)
        yield wait_for(lambda: all(self.sync.command("EXISTS", "minard:stats:pull-%d" % i)
                                   for i in range(workers)), timeout=30)
        yield sleep(0.5)  # the PULL sockets have connected to the PUSH socket

    # -- reading what was stored ---------------------------------------------------------

    def stored(self, seconds):
        """second -> [TOTAL, Σ nhit, Σ charge] as stored in the 1-s buckets."""
        out = {}
        for s in seconds:
            out[s] = [int(self.sync.command("HGET", "ts:1:%d:%s" % (s, suffix), "TOTAL") or 0)
                      for suffix in ("trig", "trig:nhit", "trig:charge")]
        return out

    def stored_total(self):
        total = 0
        for key in self.sync.command("KEYS", "ts:1:*:trig"):
            total += int(self.sync.command("HGET", key, "TOTAL") or 0)
        return total

    def stats(self, process):
        return {k: float(v) for k, v in self.sync.hgetall("minard:stats:" + process).items()}

    def pull_stats(self, key):
        return sum(self.stats("pull-%d" % i).get(key, 0) for i in range(len(self.pulls)))

    @defer.inlineCallbacks
    def settle(self, expected_total, timeout=20):
        """Wait until the stored total reaches expected_total, then a little longer (a
        double count would show up), and return the stored per-second rows (the caller's
        comparison says what is missing if it never does)."""
        try:
            yield wait_for(lambda: self.stored_total() >= expected_total, timeout=timeout)
        except AssertionError:
            pass
        yield sleep(2.0)
        return self.stored(sorted(self.feeder.sent))

    def assert_exact(self, stored, seconds=None):
        seconds = sorted(self.feeder.sent) if seconds is None else seconds
        for s in seconds:
            self.assertEqual(stored[s], self.feeder.sent[s], "second %d" % s)
        self.assertEqual(self.stored_total(), self.feeder.total())

    def assert_alive(self, *processes):
        for p in processes or self.processes:
            self.assertTrue(p.alive(), p.log()[-3000:])


class RedisFaultTests(FaultTestCase):
    """Redis going away and coming back: nothing is lost, nothing is counted twice."""

    timeout = 150

    @defer.inlineCallbacks
    def test_redis_restarted_with_its_data(self):
        """Redis shut down with SHUTDOWN SAVE (as supervisord stopping a persistent
        Redis), down for 3 s while events keep coming, started again on the same port."""
        yield self.start_pipeline(2)
        yield self.feeder.run(2.0)
        yield until_fraction(0.8)
        try:
            self.sync.command("SHUTDOWN", "SAVE")
        except (RuntimeError, OSError):
            pass  # the server closes the connection instead of answering
        self.redis.process.wait(10)
        self.redis.process = None
        self.assertTrue(os.path.exists(os.path.join(self.redis.directory, "dump.rdb")))
        down_since = time.time()
        yield self.feeder.run(3.0)   # events keep coming while Redis is away
        self.redis.start()           # same port, same directory: loads dump.rdb
        down_for = time.time() - down_since
        yield self.feeder.run(2.0)
        stored = yield self.settle(self.feeder.total())
        self.assert_exact(stored)
        self.assert_alive()
        # the outage was seen, and nothing was dropped
        # nothing was dropped (the flushes waited in the connection's queue and in the
        # workers' bounded pending queue; with nothing lost there is nothing to count)
        self.assertEqual(self.pull_stats("dropped_events"), 0)
        self.assertEqual(self.pull_stats("flushed_events"), self.feeder.total())
        self.assertEqual(self.stats("dispatch-push").get("dropped_records", 0), 0)
        self.assertGreater(down_for, 2.5)

    @defer.inlineCallbacks
    def test_redis_killed_and_restarted_empty(self):
        """Redis killed (SIGKILL, no persistence) and started again empty: what it held is
        gone (that is Redis's loss), but every second the workers had not yet flushed,
        and everything after, arrives exactly once in the new Redis."""
        yield self.start_pipeline(2)
        yield self.feeder.run(2.5)
        yield until_fraction(0.8)
        killed_in = int(time.time())
        self.redis.process.kill()
        self.redis.process.wait()
        self.redis.process = None
        yield self.feeder.run(2.0)
        self.redis.start()
        yield self.feeder.run(2.0)
        after = [s for s in self.feeder.sent if s >= killed_in]
        expected = sum(self.feeder.sent[s][0] for s in after)
        yield wait_for(lambda: sum(row[0] for row in self.stored(after).values()) >= expected,
                       timeout=20)
        yield sleep(2.0)
        stored = self.stored(sorted(self.feeder.sent))
        for s in sorted(self.feeder.sent):
            if s >= killed_in:      # open in the workers' memory at the kill, or later
                self.assertEqual(stored[s], self.feeder.sent[s], "second %d" % s)
            elif s < killed_in - 1:  # flushed to the Redis that died
                self.assertEqual(stored[s], [0, 0, 0], "second %d" % s)
            else:                   # flushed by some workers at about the moment of the kill
                self.assertLessEqual(stored[s][0], self.feeder.sent[s][0], "second %d" % s)
        self.assert_alive()
        self.assertEqual(self.pull_stats("dropped_events"), 0)

    @defer.inlineCallbacks
    def test_network_to_redis_stalled(self):
        """Redis frozen (SIGSTOP) for 15 s, longer than the 10-s reply timeout: the
        flushes in flight time out (counted), are retried, and nothing is lost or doubled
        even if Redis applies a timed-out flush once it wakes up."""
        yield self.start_pipeline(2)
        yield self.feeder.run(2.0)
        yield until_fraction(0.8)
        self.redis.pause()
        try:
            yield self.feeder.run(15.0)
        finally:
            self.redis.resume()
        yield self.feeder.run(2.0)
        stored = yield self.settle(self.feeder.total(), timeout=60)
        self.assert_exact(stored)
        self.assert_alive()
        yield wait_for(lambda: self.pull_stats("flush_errors") >= 1, timeout=10)
        self.assertEqual(self.pull_stats("dropped_events"), 0)
        self.assertEqual(self.pull_stats("flushed_events"), self.feeder.total())
        self.assertEqual(self.stats("dispatch-push").get("dropped_records", 0), 0)


class DispatcherFaultTests(FaultTestCase):

    @defer.inlineCallbacks
    def test_dispatcher_dies_mid_frame_then_lies_about_a_size(self):
        yield self.start_pipeline(2)
        first = self.factory.connections[0]
        yield self.feeder.run(1.5)
        # the dispatcher process dies in the middle of a frame
        data, _, _ = self.pool.take(1)
        first.transport.write(data[:len(data) // 2])
        yield sleep(0.2)
        yield self._stop_listening()
        yield sleep(1.5)
        self.listening = reactor.listenTCP(self.dispatcher_port, self.factory,
                                           interface="127.0.0.1")
        yield wait_for(lambda: self.handshakes(), timeout=30)
        again = self.factory.connections[0]
        self.assertIsNot(again, first)
        self.assertEqual([t for t, _ in again.handshake_done()],
                         [b"Subscrib", b"Always", b"MyId"])
        self.assertEqual(again.handshake_done()[0][1], b"w RAWDATA w RECHDR")
        yield self.feeder.run(1.5)
        # a size field that lies: the push drops this connection and reconnects
        yield until_fraction(0.3)
        self.feeder.send(10)
        behind, _, _ = self.pool.take(5)  # queued behind the lie: lost with the connection
        again.transport.write(b"RAWDATA\x00" + struct.pack(">i", -5) + behind)
        yield wait_for(lambda: again not in self.factory.connections, timeout=10)
        yield wait_for(lambda: self.handshakes(), timeout=30)
        yield self.feeder.run(1.5)
        stored = yield self.settle(self.feeder.total())
        self.assert_exact(stored)
        self.assert_alive()
        push = self.stats("dispatch-push")
        self.assertEqual(push["records"], self.feeder.total())
        self.assertEqual(push["connections"], 3)
        self.assertEqual(push["connected"], 1)
        self.assertEqual(push["corrupt_stream"], 1)
        self.assertEqual(push["corrupt_streams_dropped"], 1)
        self.assertEqual(push.get("partial_frames_dropped"), 1)
        self.assertEqual(self.sync.command("GET", "dispatcher"), "127.0.0.1")


class WorkerFaultTests(FaultTestCase):

    @defer.inlineCallbacks
    def test_sigterm_worker_loses_nothing(self):
        yield self.start_pipeline(3)
        yield until_fraction(0.1)
        self.feeder.start()
        yield sleep(2.4)            # SIGTERM at fraction ~0.5, in the middle of sending
        self.pulls[0].signal(signal.SIGTERM)
        yield wait_for(lambda: not self.pulls[0].alive(), timeout=15)
        yield sleep(2.0)
        self.feeder.stop()
        stored = yield self.settle(self.feeder.total())
        self.assert_exact(stored)
        self.assert_alive(self.push, *self.pulls[1:])
        self.assertIn(self.pulls[0].process.returncode, (0, -signal.SIGTERM),
                      self.pulls[0].log()[-3000:])
        self.assertNotIn("unflushed", self.pulls[0].log())
        # its last stats snapshot is taken after its last flush: the counters add up
        self.assertEqual(self.pull_stats("flushed_events"), self.feeder.total())
        self.assertEqual(self.pull_stats("dropped_events"), 0)
        self.assertEqual(self.stats("pull-0")["open_seconds"], 0)

    @defer.inlineCallbacks
    def test_sigkill_worker_loses_at_most_what_it_held(self):
        yield self.start_pipeline(3)
        yield until_fraction(0.1)
        self.feeder.start()
        yield sleep(3.4)
        killed_at = time.time()
        self.pulls[0].process.kill()
        self.pulls[0].process.wait()
        yield sleep(3.0)
        self.feeder.stop()
        sent = self.feeder.total()
        # everything the survivors can count: wait until it stops growing
        yield wait_for(lambda: self.stored(sorted(self.feeder.sent))[max(self.feeder.sent)]
                       == self.feeder.sent[max(self.feeder.sent)], timeout=30)
        yield sleep(2.0)
        stored = self.stored(sorted(self.feeder.sent))
        lost = sent - self.stored_total()
        held = [s for s in self.feeder.sent if killed_at - 2.5 < s + 1 and s <= killed_at + 0.5]
        for s in self.feeder.sent:
            if s in held:
                self.assertLessEqual(stored[s][0], self.feeder.sent[s][0], "second %d" % s)
            else:
                self.assertEqual(stored[s], self.feeder.sent[s], "second %d" % s)
        bound = self.feeder.sent_between(killed_at - 2.5, killed_at + 0.5)
        self.assertGreaterEqual(lost, 0)
        self.assertLessEqual(lost, bound)
        self.assertLess(bound, sent / 2)  # the bound is not everything
        self.assert_alive(self.push, *self.pulls[1:])
        # what the stats say: the push forwarded everything; the survivors flushed all they
        # received; the dead worker's last report is frozen and the gap between what the
        # push sent and what the workers flushed is at least the loss.
        push = self.stats("dispatch-push")
        self.assertEqual(push["records"], sent)
        self.assertEqual(push.get("dropped_records", 0), 0)
        survivors = sum(self.stats("pull-%d" % i)["flushed_events"] for i in (1, 2))
        dead = self.stats("pull-0")
        self.assertLess(dead["updated"], killed_at + 0.1)
        self.assertGreaterEqual(sent - survivors - dead.get("flushed_events", 0), lost)
        self.assertLessEqual(survivors + dead.get("flushed_events", 0), self.stored_total())


class DataServerFaultTests(unittest.TestCase):
    """The data server restarted (dying in the middle of a record), then lying about a
    length: data-producer reconnects, resubscribes, and every record received intact
    reaches the base-current sums exactly once."""

    timeout = 90
    CRATE = 7

    def setUp(self):
        from tests.test_datastream_pipeline import TestServerFactory
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        self.sync = SyncRedis(self.redis.port)
        self.factory = TestServerFactory()
        self.port = free_port()
        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")
        self.addCleanup(self._stop_listening)
        self.processes = []
        self.addCleanup(lambda: [p.stop() for p in self.processes])
        self.sent = 0

    def _stop_listening(self):
        if self.listening is not None:
            listening, self.listening = self.listening, None
            for client in list(self.factory.clients):
                client.transport.abortConnection()
            return listening.stopListening()

    def record(self, step):
        from tests.test_datastream_pipeline import FULL, base_record
        return base_record(self.CRATE, 0xFFFF, FULL, [(127 + step) % 256] * 512)

    def send(self, n):
        self.factory.send(b"".join(self.record(self.sent + i) for i in range(n)))
        self.sent += n

    def samples(self):
        """Base-current samples stored per channel of the crate (all must agree): the
        consumer's partials of the day bucket(s)."""
        counts = np.zeros(C.N_CHANNELS, dtype=np.int64)
        for b in buckets(self.sync, "base", 86400, "part"):
            counts += parts(self.sync, "base", 86400, b)[1]
        values = set(counts[self.CRATE << 9:(self.CRATE + 1) << 9].tolist())
        return values.pop() if len(values) == 1 else sorted(values)

    def subscribed(self, n):
        return len(self.factory.subscriptions) >= n and self.factory.clients

    @defer.inlineCallbacks
    def test_data_server_restart_mid_record_then_oversize_length(self):
        base_zmq = "tcp://127.0.0.1:%d" % free_port()
        producer = RoleProcess("data-producer", "--redis", self.redis.url, "--port",
                               str(self.port), "--cmos-zmq",
                               "tcp://127.0.0.1:%d" % free_port(), "--base-zmq",
                               base_zmq).start()
        consumer = RoleProcess("data-consumer", "--redis", self.redis.url,
                               "--zmq", base_zmq).start()
        self.processes += [producer, consumer]
        yield wait_for(lambda: self.subscribed(1), timeout=30)
        yield wait_for(lambda: self.sync.command("KEYS", "minard:stats:data-consumer*"),
                       timeout=30)
        yield sleep(0.5)
        self.send(20)
        yield wait_for(lambda: self.samples() == 20, timeout=15)
        # the data server dies in the middle of a record
        half = self.record(0)
        self.factory.send(half[:len(half) // 2])
        yield sleep(0.2)
        yield self._stop_listening()
        yield sleep(1.5)
        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")
        yield wait_for(lambda: self.subscribed(2), timeout=30)
        self.assertEqual(self.factory.subscriptions[1], b"CMOSBASE")
        self.send(15)
        # a length that lies, right behind 5 good records: those 5 are kept
        client = self.factory.clients[0]
        self.send(5)
        client.transport.write(struct.pack(">III", 0x42415345, 10 ** 9, 0) + b"junk")
        yield wait_for(lambda: client not in self.factory.clients, timeout=10)
        yield wait_for(lambda: self.subscribed(3), timeout=30)
        self.send(10)
        yield wait_for(lambda: self.samples() == self.sent, timeout=20)
        yield sleep(2.0)
        self.assertEqual(self.samples(), self.sent)   # once each, nothing more
        stats = {k: float(v) for k, v in
                 self.sync.hgetall("minard:stats:data-producer").items()}
        self.assertEqual(stats["records_base"], self.sent)
        self.assertEqual(stats["corrupt_stream"], 1)
        self.assertEqual(stats.get("dropped_records", 0), 0)
        for p in self.processes:
            self.assertTrue(p.alive(), p.log()[-3000:])


# -- Redis frozen in the middle of both streams ---------------------------------------------

class DataFeeder:
    """Sends, once a second in the middle of the second, a CMOS record for each of
    CMOS_CRATES and a BASE record for BASE_CRATE to the test data server's client (the
    data-producer), and remembers what it sent.

    A CMOS rate depends on the receipt stamps the producer gives two records; to know
    every record's stamp afterwards, each record also carries `witness` counts: record k
    of a crate has one valid count, in its own channel of the witness slots, and invalid
    counts (bit 31) in all the others, so the CMOS state in Redis keeps that record's
    stamp for that channel (an invalid count leaves the stored pair alone)."""

    CMOS_CRATES = (3, 9)
    DATA_SLOTS = (2, 11)
    WITNESS_SLOTS = (4, 5, 6, 13, 14, 15)   # 192 records of each crate at most
    BASE_CRATE = 7
    BASE_SLOTS = 0xFFFF & ~(1 << 5)         # slot 5 absent

    def __init__(self, factory, seed=5):
        self.factory = factory
        self.rng = np.random.default_rng(seed)
        self.slots = sorted(self.DATA_SLOTS + self.WITNESS_SLOTS)
        self.slot_mask = sum(1 << s for s in self.slots)
        self.cmos_masks = [0xFFFFFFFF] * 16
        self.cmos_masks[11] = 0x0000FFFF     # the upper half of slot 11 masked out
        self.base_masks = [0xFFFFFFFF] * 16
        self.base_masks[3] = 0xF0F0F0F0
        # the data channels of a CMOS crate, in the order of their counts
        self.data_channels = [s << 5 | ch for s in self.DATA_SLOTS for ch in range(32)]
        self.rates = {c: self.rng.uniform(5, 3000, 64) for c in self.CMOS_CRATES}
        self.cmos_sent = {c: [] for c in self.CMOS_CRATES}  # [data counts (words)]
        self.base_sent = []                                  # (second, {channel: current})
        self.start_time = None
        self.loop = None

    def start(self):
        self.start_time = time.time()
        self.loop = task.LoopingCall(self.send)
        self.loop.start(1.0)

    def stop(self):
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None

    def send(self):
        if not self.factory.clients:
            return
        now = time.time()
        if not SEND_WINDOW[0] <= now % 1 < SEND_WINDOW[1]:
            return  # the reactor was late: skip this second rather than guess its stamp
        from tests.test_datastream_pipeline import base_record, cmos_record
        data = []
        for crate in self.CMOS_CRATES:
            k = len(self.cmos_sent[crate])
            if k >= 32 * len(self.WITNESS_SLOTS):
                raise AssertionError("out of witness channels")
            counts = (1000 + self.rates[crate] * (now - self.start_time)).astype(np.int64)
            counts[5] += 7 * k * k               # a channel whose rate grows
            if k % 5 == 3:
                counts[1] |= 1 << 31             # invalid now and then
            if k == 6:
                counts[2] = 17                   # a reset: no rate for it, once
            words = {}
            for j, ch in enumerate(self.data_channels):
                words[ch] = int(counts[j])
            witness = self.WITNESS_SLOTS[k // 32] << 5 | k % 32
            for slot in self.WITNESS_SLOTS:
                for ch in range(32):
                    words[slot << 5 | ch] = k + 1 if slot << 5 | ch == witness else 1 << 31
            ordered = [words[slot << 5 | ch] for slot in self.slots for ch in range(32)]
            self.cmos_sent[crate].append(counts)
            data.append(cmos_record(crate, self.slot_mask, self.cmos_masks, ordered))
        raw = self.rng.integers(0, 256, 512)
        currents = {}
        for slot in range(16):
            if self.BASE_SLOTS >> slot & 1:
                for ch in range(32):
                    if self.base_masks[slot] >> ch & 1:
                        currents[self.BASE_CRATE << 9 | slot << 5 | ch] = \
                            float(raw[slot * 32 + ch]) - 127
        self.base_sent.append((int(now), currents))
        data.append(base_record(self.BASE_CRATE, self.BASE_SLOTS, self.base_masks,
                                raw.tolist()))
        self.factory.send(b"".join(data))

    def witness_stamps(self, sync, crate):
        """The receipt stamp (ns) of each record sent for a crate, from the CMOS state
        (None for a record not yet through the state script)."""
        times = {}
        for slot in self.WITNESS_SLOTS:
            value = sync.command("HGET", "cmos:state:%d" % crate, str(slot))
            if value:
                times[slot] = decode_slot_state(value.encode("utf-8", "surrogateescape"))[1]
        out = []
        for k in range(len(self.cmos_sent[crate])):
            slot = self.WITNESS_SLOTS[k // 32]
            t = int(times[slot][k % 32]) if slot in times else 0
            out.append(t or None)
        return out

    def expected_cmos(self, stamps):
        """{interval: {bucket: {channel: mean rate}}} from the counts sent and the
        stamps, by the rules of SPEC §3, independently of minard."""
        samples = {}
        for crate in self.CMOS_CRATES:
            previous = {}
            for counts, t in zip(self.cmos_sent[crate], stamps[crate]):
                for j, local in enumerate(self.data_channels):
                    word = int(counts[j])
                    if word >> 31:
                        continue               # invalid: no rate, the last valid pair stays
                    channel = crate << 9 | local
                    slot, ch = local >> 5, local & 31
                    masked_in = self.cmos_masks[slot] >> ch & 1
                    if channel in previous and masked_in:
                        pc, pt = previous[channel]
                        if word > pc and 0 < t - pt < C.CMOS_MAX_DT * 10 ** 9:
                            samples.setdefault(channel, []).append(
                                (t // 10 ** 9, (word - pc) / ((t - pt) / 1e9)))
                    previous[channel] = (word, t)
        return _means(samples)

    def expected_base(self):
        samples = {}
        for second, currents in self.base_sent:
            for channel, v in currents.items():
                samples.setdefault(channel, []).append((second, v))
        return _means(samples)


def _means(samples):
    """{interval: {bucket: {channel: mean}}} of {channel: [(second, value)]}."""
    out = {}
    for interval in (5, 60):
        per = {}
        for channel, values in samples.items():
            for second, v in values:
                per.setdefault(second // interval, {}).setdefault(channel, []).append(v)
        out[interval] = {b: {ch: sum(vs) / len(vs) for ch, vs in chans.items()}
                         for b, chans in per.items()}
    return out


class RedisFrozenTests(FaultTestCase):
    """Redis frozen (SIGSTOP) in the middle of the event stream and the data stream, for
    12 s (longer than the 10-s reply timeout) and for 70 s (longer than a minute of data
    and than a writer's timeout): afterwards every 5-s and 60-s bucket of occupancy,
    CMOS rates and base currents is finalised, once, with the values the test computed
    from what it sent, as if Redis had never stopped.

    The stream ends just before a minute boundary so the last 60-s bucket is finalised a
    few seconds after the stream (every worker's progress has passed it)."""

    timeout = 300

    def setUp(self):
        FaultTestCase.setUp(self)
        from tests.test_datastream_pipeline import TestServerFactory
        self.data_factory = TestServerFactory()
        self.data_port = free_port()
        self.data_listening = reactor.listenTCP(self.data_port, self.data_factory,
                                                interface="127.0.0.1")
        self.addCleanup(self._stop_data_server)
        self.data = DataFeeder(self.data_factory)
        self.addCleanup(self.data.stop)
        self.first_seen = {}    # finalised key -> the blob first seen under it
        self.frozen = False
        self.poller = task.LoopingCall(self.poll_finals)
        self.addCleanup(lambda: self.poller.running and self.poller.stop())

    def _stop_data_server(self):
        for client in list(self.data_factory.clients):
            client.transport.abortConnection()
        return self.data_listening.stopListening()

    def poll_finals(self):
        """Remember the first blob of every finalised bucket: a bucket finalised before
        all its data were in would show up as a blob that changes later."""
        if self.frozen:
            return
        for key in self.sync.command("KEYS", "minard:chan:*"):
            if key not in self.first_seen:
                blob = self.sync.get_bytes("GET", key)
                if blob is not None:
                    self.first_seen[key] = blob

    @defer.inlineCallbacks
    def start_data_stream(self, cmos_consumers=1):
        """data-producer, CMOS and BASE consumers. One CMOS consumer: with several, the
        records of a crate queued during a stall are rated by whichever consumer's call
        reaches Redis first, and a record older than its crate's stored pair gets no rate
        (store/datastream.py) - a loss the design accepts, that would differ from a run
        without the stall."""
        cmos_zmq = "tcp://127.0.0.1:%d" % free_port()
        base_zmq = "tcp://127.0.0.1:%d" % free_port()
        self.spawn("data-producer", "--port", str(self.data_port),
                   "--cmos-zmq", cmos_zmq, "--base-zmq", base_zmq)
        for _ in range(cmos_consumers):
            self.spawn("data-consumer", "--zmq", cmos_zmq)
        self.spawn("data-consumer", "--zmq", base_zmq)
        yield wait_for(lambda: self.data_factory.subscriptions, timeout=30)
        yield wait_for(lambda: len(self.sync.command("KEYS", "minard:stats:data-consumer-*"))
                       == cmos_consumers + 1, timeout=30)

    @defer.inlineCallbacks
    def run_frozen(self, freeze):
        yield defer.gatherResults([self.start_pipeline(2), self.start_data_stream()])
        yield sleep(0.5)  # every PULL socket connected
        self.poller.start(0.25)
        yield until_fraction(0.1)
        self.feeder.start()
        yield until_fraction(0.3)
        self.data.start()
        yield sleep(3.5)                 # to fraction 0.8
        self.frozen = True
        self.redis.pause()
        try:
            yield sleep(freeze)
        finally:
            self.redis.resume()
            self.frozen = False
        # on until just before a minute boundary, at least 4 s more
        end = (int(time.time() + 4) // 60 + 1) * 60 - 0.3
        yield sleep(end - time.time())
        self.feeder.stop()
        self.data.stop()

        # the events, second by second (as the other Redis fault tests check them)
        stored = yield self.settle(self.feeder.total(), timeout=60)
        self.assert_exact(stored)
        # every CMOS record has been through the state script: its stamp is known
        stamps = {}
        for crate in DataFeeder.CMOS_CRATES:
            yield wait_for(lambda: None not in self.data.witness_stamps(self.sync, crate),
                           timeout=60)
            stamps[crate] = self.data.witness_stamps(self.sync, crate)
        expected = {"cmos": self.data.expected_cmos(stamps),
                    "base": self.data.expected_base(),
                    "occupancy": self.expected_occupancy()}
        # every bucket with data finalised: the last minute's a few seconds after its end
        yield wait_for(lambda: all(self.finalised(name, interval, set(want))
                                   for name, by in expected.items()
                                   for interval, want in by.items()), timeout=60)
        yield sleep(1.0)
        self.poll_finals()
        for name, by in expected.items():
            for interval, want in by.items():
                self.assertEqual(buckets(self.sync, name, interval), sorted(want),
                                 (name, interval))
                self.assertGreaterEqual(len(want), 1 if interval == 60 else freeze // 5)
                for b, values in sorted(want.items()):
                    got = final(self.sync, name, interval, b)
                    if name == "occupancy":
                        assert_occupancy(self, got, values[0], values[1], (name, interval, b))
                    else:
                        assert_means(self, got, values, (name, interval, b))
        # ... and each was finalised once, from all its data
        changed = [k for k, blob in self.first_seen.items()
                   if self.sync.get_bytes("GET", k) != blob]
        self.assertEqual(changed, [])
        self.assertGreater(len(self.first_seen), 0)
        self.assert_alive()
        # what the workers say: nothing dropped, the stall seen
        self.assertEqual(self.pull_stats("dropped_events"), 0)
        for process in self.sync.command("KEYS", "minard:stats:*"):
            stats = self.stats(process.split(":", 2)[2])
            for key, value in stats.items():
                if key.startswith("dropped_"):
                    self.assertEqual(value, 0, (process, key))
        self.assertEqual(self.stats("data-producer").get("dropped_records", 0), 0)
        self.assertEqual(self.stats("dispatch-push").get("dropped_records", 0), 0)

    def expected_occupancy(self):
        """{interval: {bucket: ({channel: hits}, events)}} of the events sent."""
        out = {}
        for interval in (5, 60):
            per = {}
            for second, row in self.feeder.sent.items():
                hits, events = per.setdefault(second // interval,
                                              [np.zeros(C.N_CHANNELS, dtype=np.int64), 0])
                hits += self.feeder.hits[second]
                per[second // interval][1] = events + row[0]
            out[interval] = {b: ({int(i): int(h[i]) for i in np.flatnonzero(h)}, e)
                             for b, (h, e) in per.items()}
        return out

    def finalised(self, name, interval, want):
        """Every bucket in `want` finalised, and none of the interval left open."""
        return (not open_buckets(self.sync, name, interval)
                and want <= set(buckets(self.sync, name, interval)))

    def test_redis_frozen_12_s(self):
        return self.run_frozen(12)

    def test_redis_frozen_70_s(self):
        return self.run_frozen(70)

