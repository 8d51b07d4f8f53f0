"""The pull worker against a real Redis: per-second flushes, several workers, retries,
occupancy through the per-channel store (partials, data-driven finalisation)."""
import random
import time

import numpy as np
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from minard import zmqlink
from minard.services.dispatch_pull import PullWorker
from minard.stats import Stats
from minard.store import channels, keys
from minard.store.connection import connect
from minard.store.events import EventStore
from tests.channel_support import assert_occupancy, final
from tests.support import RedisServer, RedisTestMixin, SyncRedis
from tests.test_aggregate_events import expected_sums, random_events
from tests.test_wire_sno import hand_built

T0 = 1_700_000_000


def message(second, events, offset_ns=0):
    ns = second * 1_000_000_000 + offset_ns
    return [zmqlink.stamp(ns)] + [hand_built(r, s, g, t, h) for r, s, g, t, h in events]


@defer.inlineCallbacks
def settle_channels(worker):
    """Let the worker's occupancy write and the finalising round after it complete."""
    for _ in range(20):
        if worker.channels.in_flight is not None:
            yield worker.channels.in_flight
        elif worker.finaliser.running is not None:
            yield worker.finaliser.running
        else:
            return


class PullWorkerTests(RedisTestMixin, unittest.TestCase):
    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)

    def worker(self, name="w"):
        clock = task.Clock()
        clock.advance(T0)
        return PullWorker(name, "unused", EventStore(self.redis), Stats(name), clock,
                          redis=self.redis), clock

    @defer.inlineCallbacks
    def drain(self, worker):
        for _ in range(200):
            if not worker.pending and worker.in_flight is None:
                return
            d = worker.in_flight or worker.pump()
            if d is not None:
                yield d

    def field_sum(self, pattern, field):
        total = 0
        for key in self.sync.command("KEYS", pattern):
            value = self.sync.command("HGET", key, field)
            total += int(value or 0)
        return total

    @defer.inlineCallbacks
    def test_two_workers_add_up_to_the_truth(self):
        rng = random.Random(11)
        events = random_events(rng, 400)
        workers = [self.worker("a"), self.worker("b")]
        for i in range(0, 400, 20):
            second = T0 + (i // 100)          # four seconds of events
            w, _ = workers[(i // 20) % 2]
            w.on_message(message(second, events[i:i + 20], offset_ns=i))
        for w, clock in workers:
            clock.advance(10)
            w.tick()
            yield self.drain(w)
        trig, nhit, charge, occ, hist = expected_sums(events)
        for field, count in trig.items():
            self.assertEqual(self.field_sum("ts:1:*:trig", field), count, field)
            self.assertEqual(self.field_sum("ts:1:*:trig:nhit", field), nhit[field])
            self.assertEqual(self.field_sum("ts:1:*:trig:charge", field), charge[field])
            self.assertEqual(self.field_sum("ts:65536:*:trig", field), count)
        # occupancy: both workers' partials of the 5-s bucket T0 .. T0+4, finalised once
        # both have passed it (progress T0 + 8), from all their hits and events
        for w, _ in workers:
            yield settle_channels(w)
        yield workers[0][0].finaliser.finalise()
        self.assertEqual(self.sync.command("KEYS", "ts:*:occupancy*"), [])
        assert_occupancy(self, final(self.sync, "occupancy", 5, T0 // 5), occ, 400)
        parts = self.sync.hgetall(keys.channel_part("occupancy", 5, T0 // 5))
        self.assertEqual(set(parts) - {"~v"}, {w._run for w, _ in workers})
        self.assertEqual(sum(channels.decode_part(
            self.sync.get_bytes("HGET", keys.channel_part("occupancy", 5, T0 // 5), w._run),
            "ratio")[1] for w, _ in workers), 400)
        # the 60-s bucket of T0 is still open (nobody has passed its end): not finalised
        self.assertIsNone(final(self.sync, "occupancy", 60, T0 // 60))
        self.assertEqual(self.sync.command("ZSCORE", keys.channel_open("occupancy"),
                                           keys.bucket_member(60, T0 // 60)),
                         str((T0 // 60 + 1) * 60 - 1))
        progress = self.sync.hgetall(keys.channel_writers("occupancy"))
        self.assertEqual({k: v.split()[0] for k, v in progress.items()},
                         {w._run: str(T0 + 8) for w, _ in workers})
        h = {}
        for key in self.sync.command("KEYS", "ts:60:*:nhit:hist"):
            for k, v in self.sync.hgetall(key).items():
                h[int(k)] = h.get(int(k), 0) + int(v)
        self.assertEqual(h, hist)
        last = self.sync.hgetall("ts:65536:%d:trig" % (T0 // 65536))
        self.assertEqual((int(last["run"]), int(last["subrun"]), int(last["gtid"])),
                         events[-1][:3])
        self.assertEqual(self.sync.command("GET", "ts:1:%d:heartbeat" % (T0 + 3)), "1")
        self.assertLessEqual(self.sync.command("LLEN", "ts:1:%d:nhit" % T0), 100)
        ttl = self.sync.command("TTL", "ts:1:%d:trig" % T0)
        self.assertTrue(2300 < ttl <= 2400, ttl)

    @defer.inlineCallbacks
    def test_idle_worker_keeps_heartbeat(self):
        w, clock = self.worker()
        for _ in range(3):
            clock.advance(1)
            w.tick()
            yield self.drain(w)
        second = int(clock.seconds() - 1.3)
        self.assertEqual(self.sync.command("GET", "ts:1:%d:heartbeat" % second), "1")
        self.assertEqual(self.sync.command("KEYS", "ts:1:*:trig"), [])

    @defer.inlineCallbacks
    def test_repeated_flush_counted_once(self):
        store = EventStore(self.redis)
        w, clock = self.worker()
        w.on_message(message(T0, [(1, 1, 1, 1, [])]))
        clock.advance(5)
        w.close_seconds(T0 + 2)
        payload = w.pending[0][2]
        first = yield store.flush(payload)
        again = yield store.flush(payload)
        self.assertEqual((int(first), int(again)), (1, 0))
        self.assertEqual(self.sync.command("HGET", "ts:1:%d:trig" % T0, "TOTAL"), "1")

    @defer.inlineCallbacks
    def test_redis_down_then_back_loses_nothing(self):
        w, clock = self.worker()
        self.redis_server.stop()
        self.addCleanup(lambda: self.redis_server.process or self.redis_server.start())
        for s in range(3):
            w.on_message(message(T0 + s, [(1, 1, 1, 1, [(1, 1, 1, 7)])] * 5))
        clock.advance(5)
        w.tick()
        d = w.in_flight
        self.assertIsNotNone(d)
        self.redis_server.start()
        # the lazy connection reconnects; the worker retries until the queue is empty
        deadline = time.time() + 20
        while (w.pending or w.in_flight) and time.time() < deadline:
            clock.advance(1.5)
            w.tick()
            if w.in_flight is not None:
                try:
                    yield w.in_flight
                except Exception:
                    pass
            yield task.deferLater(__import__("twisted.internet.reactor").internet.reactor,
                                  0.1, lambda: None)
        self.assertEqual(self.field_sum("ts:1:*:trig", "TOTAL"), 15)
        self.assertEqual(w.stats.counters.get("dropped_events", 0), 0)

    @defer.inlineCallbacks
    def test_stop_flushes_open_second(self):
        w, clock = self.worker()
        w.on_message(message(int(clock.seconds()), [(1, 1, 1, 1, [(4, 5, 6, 9)])] * 3))
        yield w.stopService()
        self.assertEqual(self.field_sum("ts:1:*:trig", "TOTAL"), 3)
        # its occupancy partial is in Redis, and it no longer holds up finalisation
        blob = self.sync.get_bytes("HGET", keys.channel_part("occupancy", 5, T0 // 5), w._run)
        hits, events = channels.decode_part(blob, "ratio")
        self.assertEqual(events, 3)
        self.assertEqual({int(i): hits[i] for i in np.flatnonzero(hits)},
                         {4 << 9 | 5 << 5 | 6: 3.0})
        self.assertEqual(self.sync.hgetall(keys.channel_writers("occupancy")), {})

    def test_corrupt_message_counted_not_fatal(self):
        w, clock = self.worker()
        w.on_message([b"short"])
        w.on_message([b"12345678", b"garbage"])
        w.on_message([zmqlink.stamp(T0 * 10**9), b"\x00" * 5])
        self.assertEqual(w.stats.counters["corrupt_message_without_records"], 1)
        self.assertEqual(w.stats.counters["corrupt_bad_receipt_stamp"], 1)
        self.assertEqual(w.stats.counters["corrupt_short_header"], 1)


class FinaliseTests(RedisTestMixin, unittest.TestCase):
    """Occupancy buckets are finalised by data, not by the wall clock."""

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)

    def worker(self, name, redis=None, start=T0):
        clock = task.Clock()
        clock.advance(start)
        redis = redis or self.redis
        return PullWorker(name, "unused", EventStore(redis), Stats(name), clock,
                          redis=redis), clock

    @defer.inlineCallbacks
    def drain(self, w):
        while w.pending or w.in_flight:
            yield w.in_flight or w.pump()

    @defer.inlineCallbacks
    def test_no_bucket_finalised_while_a_live_worker_has_not_passed_it(self):
        a, clock_a = self.worker("a")
        b, clock_b = self.worker("b")
        ch = 2 << 9 | 3 << 5 | 4
        for s in range(5):  # bucket T0 .. T0+4: 3 events from a, 2 from b per second
            a.on_message(message(T0 + s, [(1, 1, 1, 1, [(2, 3, 4, 100)])] * 3))
            b.on_message(message(T0 + s, [(1, 1, 1, 1, [(2, 3, 4, 100)])] * 2
                                 + [(1, 1, 1, 1, [(0, 0, 1, 5)])]))
        # b has closed T0 + 3 only; a is far ahead (whatever the wall clock says)
        clock_b.advance(5.2)
        b.tick()
        yield settle_channels(b)
        clock_a.advance(100)
        a.tick()
        yield settle_channels(a)
        self.assertEqual(b.channels["occupancy"].progress, T0 + 3)
        self.assertEqual(a.channels["occupancy"].progress, T0 + 98)
        self.assertEqual((yield a.finaliser.finalise()), 0)
        self.assertIsNone(final(self.sync, "occupancy", 5, T0 // 5))
        # b's last second of the bucket closes: now it is finalised, from both workers
        clock_b.advance(1)
        b.tick()
        yield settle_channels(b)
        assert_occupancy(self, final(self.sync, "occupancy", 5, T0 // 5),
                         {ch: 25, 1: 5}, 30)
        self.assertEqual(self.sync.command("ZRANGE", keys.channel_open("occupancy"), 0, -1),
                         [keys.bucket_member(60, T0 // 60), keys.bucket_member(86400,
                                                                              T0 // 86400)])

    @defer.inlineCallbacks
    def catch_up(self, w, clock, sync, start):
        """Redis is back: tick until the partials are written and the minute of `start`
        finalised (30 s at most)."""
        deadline = time.time() + 30
        while time.time() < deadline:
            clock.advance(1)
            w.tick()
            yield self.drain(w)
            try:
                yield settle_channels(w)
            except Exception:
                pass
            if not w.channels.unwritten() and final(sync, "occupancy", 60, start // 60):
                return
            yield task.deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def test_backlog_after_an_outage_finalises_every_bucket(self):
        """Redis away for 40 s of events: the partials wait in memory; once it is back,
        every 5-s bucket and the 60-s bucket is finalised from all its data."""
        own = RedisServer().start()
        self.addCleanup(own.cleanup)
        redis = connect(own.url, reply_timeout=2)
        self.addCleanup(redis.disconnect)
        start = (T0 // 60 + 1) * 60  # a minute boundary
        w, clock = self.worker("w", redis, start=start)
        yield settle_channels(w)
        own.stop()
        ch = 2 << 9 | 3 << 5 | 4
        expected = {}  # 5-s bucket -> (hits of ch, events)
        for s in range(60):  # a minute of events, Redis unreachable
            n = 1 + s % 3
            hit = s % 2
            w.on_message(message(start + s, [(1, 1, 1, 1, [(2, 3, 4, 100)] * hit)] * n))
            h, e = expected.get((start + s) // 5, (0, 0))
            expected[(start + s) // 5] = (h + hit * n, e + n)
            clock.advance(1)
            w.tick()
        # the first write waits for the reconnection; the minute waits in memory
        self.assertIsNotNone(w.channels.in_flight)
        self.assertEqual(len(w.channels["occupancy"].delta), 12)
        own.start()
        yield self.catch_up(w, clock, SyncRedis(own.port), start)
        sync = SyncRedis(own.port)
        for b, (h, e) in sorted(expected.items()):
            assert_occupancy(self, final(sync, "occupancy", 5, b), {ch: h} if h else {}, e)
        assert_occupancy(self, final(sync, "occupancy", 60, start // 60),
                         {ch: sum(h for h, _ in expected.values())},
                         sum(e for _, e in expected.values()))
        self.assertEqual(w.stats.counters.get("dropped_occupancy_events", 0), 0)
        self.assertEqual(w.stats.counters["finalised_occupancy"], 13)

    @defer.inlineCallbacks
    def test_outage_longer_than_the_bound_drops_the_oldest_counted(self):
        """While Redis is away the write waits for the reconnection: what waits in memory
        is still bounded (here 4 buckets of 5 s), the oldest data are dropped and
        counted, and the rest arrives exactly."""
        own = RedisServer().start()
        self.addCleanup(own.cleanup)
        redis = connect(own.url, reply_timeout=2)
        self.addCleanup(redis.disconnect)
        start = (T0 // 60 + 1) * 60
        w, clock = self.worker("w", redis, start=start)
        w.channels["occupancy"].max_open = 4
        yield settle_channels(w)
        own.stop()
        events = {}
        for s in range(60):
            n = 1 + s % 4
            w.on_message(message(start + s, [(1, 1, 1, 1, [(0, 1, 2, 100)])] * n))
            events[(start + s) // 5] = events.get((start + s) // 5, 0) + n
            clock.advance(1)
            w.tick()
            self.assertLessEqual(len(w.channels["occupancy"].delta), 4)
        kept = sorted(events)[-4:]
        dropped = sum(n for b, n in events.items() if b not in kept)
        self.assertEqual(w.stats.counters["dropped_occupancy_events"], dropped)
        self.flushLoggedErrors()
        own.start()
        sync = SyncRedis(own.port)
        yield self.catch_up(w, clock, SyncRedis(own.port), start)
        ch = 1 << 5 | 2
        for b in sorted(events):
            got = final(sync, "occupancy", 5, b)
            if b in kept:
                assert_occupancy(self, got, {ch: events[b]}, events[b])
            else:
                self.assertIsNone(got, b)
        assert_occupancy(self, final(sync, "occupancy", 60, start // 60),
                         {ch: sum(events[b] for b in kept)}, sum(events[b] for b in kept))
        self.assertEqual(w.stats.counters["dropped_occupancy_events"], dropped)

    @defer.inlineCallbacks
    def test_a_stalled_redis_does_not_make_a_live_worker_look_gone(self):
        """Redis stalls for longer than the writer timeout; when it wakes up, the first
        worker to write is far ahead of one that has not written yet (its write comes
        a moment later). That one is alive: no bucket is finalised without its data.
        (Timeout, lag and the outage a finaliser notices are scaled down here.)"""
        own = RedisServer().start()
        self.addCleanup(own.cleanup)
        self.addCleanup(lambda: own.process and own.resume())
        conns = [connect(own.url, reply_timeout=None) for _ in range(2)]
        for c in conns:
            self.addCleanup(c.disconnect)
        start = (T0 // 60 + 1) * 60
        (a, clock_a), (b, clock_b) = [self.worker(n, c, start=start)
                                      for n, c in zip("ab", conns)]
        for w in (a, b):
            w.finaliser.writer_timeout = 2
            w.finaliser.writer_lag = 5
            w.finaliser.outage_gap = 1.0
        ch = 2 << 9 | 3 << 5 | 4
        for s in range(5):
            a.on_message(message(start + s, [(1, 1, 1, 1, [(2, 3, 4, 100)])]))
            b.on_message(message(start + s, [(1, 1, 1, 1, [(2, 3, 4, 100)])] * 3))
        for w, clock in ((a, clock_a), (b, clock_b)):
            clock.advance(4.5)  # progress start + 3: the bucket is open
            w.tick()
            yield settle_channels(w)
        own.pause()
        clock_a.advance(20)
        a.tick()  # written as soon as Redis wakes up, then a finalises
        d = a.channels.in_flight
        yield task.deferLater(reactor, 3.5, lambda: None)
        own.resume()
        yield d
        yield settle_channels(a)
        yield task.deferLater(reactor, 0.3, lambda: None)  # b writes a moment later
        self.assertIsNone(final(SyncRedis(own.port), "occupancy", 5, start // 5))
        clock_b.advance(20)
        b.tick()
        yield settle_channels(b)
        yield a.finaliser.finalise()
        assert_occupancy(self, final(SyncRedis(own.port), "occupancy", 5, start // 5),
                         {ch: 20}, 20)
        # finalised once (the 60-s bucket is still open)
        self.assertEqual(sum(w.stats.counters.get("finalised_occupancy", 0) for w in (a, b)), 1)


class WallClockStepTests(RedisTestMixin, unittest.TestCase):
    """Issue 12 item 6: the wall clock stepped back. Ticks run on the scheduling clock
    (monotonic in the role) and go on; a second already written is never written twice."""

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)

    @defer.inlineCallbacks
    def test_step_back_never_writes_a_second_twice(self):
        clock = task.Clock()
        wall = [float(T0)]
        w = PullWorker("w", "unused", EventStore(self.redis), Stats("w"), clock,
                       redis=self.redis)
        w.wall = lambda: wall[0]
        rng = random.Random(3)
        events = random_events(rng, 60)

        @defer.inlineCallbacks
        def run(seconds, per_second=10):
            for _ in range(seconds):
                s = int(wall[0])
                w.on_message(message(s, events[:per_second], offset_ns=1000))
                for _ in range(5):
                    wall[0] += 0.2
                    clock.advance(0.2)
                    w.tick()
                    if w.in_flight is not None:
                        yield w.in_flight
        yield run(20)
        written = {s: int(self.sync.command("HGET", keys.trig(1, s), "TOTAL") or 0)
                   for s in range(T0, T0 + 20)}
        wall[0] -= 15  # NTP steps the clock back 15 s
        yield run(20)
        w.tick()
        while w.pending or w.in_flight is not None:
            clock.advance(0.2)
            w.tick()
            if w.in_flight is not None:
                yield w.in_flight
        for s in range(T0, T0 + 17):  # written before the step: as they were
            self.assertEqual(int(self.sync.command("HGET", keys.trig(1, s), "TOTAL") or 0),
                             written[s], "second %d written twice" % s)
        self.assertEqual(w.stats.counters["clock_steps_back"], 1)
        self.assertGreater(w.stats.counters["clock_step_dropped_events"], 0)
        # the seconds after the ones written before the step are written normally
        later = int(self.sync.command("HGET", keys.trig(1, T0 + 22), "TOTAL") or 0)
        self.assertEqual(later, 10)
        self.assertFalse(w.stepped_back)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_a_late_batch_is_still_added(self):
        """Lateness within LATE_LIMIT (a push holding a batch under back-pressure) without
        a step is data not yet counted: it is added to its second."""
        clock = task.Clock()
        clock.advance(T0 + 5)
        w = PullWorker("w", "unused", EventStore(self.redis), Stats("w"), clock,
                       redis=self.redis)
        events = random_events(random.Random(4), 10)
        w.tick()  # closes up to T0 + 3
        w.on_message(message(T0 + 1, events))
        w.tick()
        while w.pending or w.in_flight is not None:
            d = w.in_flight or w.pump()
            if d is not None:
                yield d
        self.assertEqual(int(self.sync.command("HGET", keys.trig(1, T0 + 1), "TOTAL")), 10)
        self.assertEqual(w.stats.counters.get("late_batches"), 1)
        self.assertNotIn("clock_step_dropped_events", w.stats.counters)
