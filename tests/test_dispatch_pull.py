"""The pull worker against a real Redis: per-second flushes, several workers, retries."""
import random
import time

from twisted.internet import defer, task
from twisted.trial import unittest

from minard import zmqlink
from minard.services.dispatch_pull import PullWorker
from minard.stats import Stats
from minard.store.connection import connect
from minard.store.events import EventStore
from tests.support import RedisTestMixin
from tests.test_aggregate_events import expected_sums, random_events
from tests.test_wire_sno import hand_built

T0 = 1_700_000_000


def message(second, events, offset_ns=0):
    ns = second * 1_000_000_000 + offset_ns
    return [zmqlink.stamp(ns)] + [hand_built(r, s, g, t, h) for r, s, g, t, h in events]


class PullWorkerTests(RedisTestMixin, unittest.TestCase):
    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)

    def worker(self, name="w"):
        clock = task.Clock()
        clock.advance(T0)
        return PullWorker(name, "unused", EventStore(self.redis), Stats(name), clock), clock

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
        hits = {}
        for key in self.sync.command("KEYS", "ts:5:*:occupancy:hits"):
            for k, v in self.sync.hgetall(key).items():
                hits[int(k)] = hits.get(int(k), 0) + int(v)
        self.assertEqual(hits, occ)
        counted = sum(int(self.sync.command("GET", k))
                      for k in self.sync.command("KEYS", "ts:5:*:occupancy:count"))
        self.assertEqual(counted, 400)
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
        w.on_message(message(int(clock.seconds()), [(1, 1, 1, 1, [])] * 3))
        yield w.stopService()
        self.assertEqual(self.field_sum("ts:1:*:trig", "TOTAL"), 3)

    def test_corrupt_message_counted_not_fatal(self):
        w, clock = self.worker()
        w.on_message([b"short"])
        w.on_message([b"12345678", b"garbage"])
        w.on_message([zmqlink.stamp(T0 * 10**9), b"\x00" * 5])
        self.assertEqual(w.stats.counters["corrupt_message_without_records"], 1)
        self.assertEqual(w.stats.counters["corrupt_bad_receipt_stamp"], 1)
        self.assertEqual(w.stats.counters["corrupt_short_header"], 1)


class FinaliseCatchUpTests(RedisTestMixin, unittest.TestCase):
    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)

    @defer.inlineCallbacks
    def test_backlog_finalises_every_bucket(self):
        """After an outage the queued seconds drain in order, and each 5-s bucket is
        finalised once its seconds are in — not only the bucket due by the wall clock."""
        from minard.store.finalise import Finaliser
        clock = task.Clock()
        start = (T0 // 5) * 5
        clock.advance(start)
        w = PullWorker("w", "unused", EventStore(self.redis), Stats("w"), clock,
                       finaliser=Finaliser(self.redis))
        for s in range(30):  # 30 s of events, all queued before Redis is reached
            w.on_message(message(start + s, [(1, 1, 1, 1, [(2, 3, 4, 100)])]))
        clock.advance(40)
        w.close_seconds(start + 35)
        while w.pending or w.in_flight:
            yield w.in_flight or w.pump()
        yield task.deferLater(__import__("twisted.internet.reactor").internet.reactor,
                              0.2, lambda: None)
        for b in range(start // 5, start // 5 + 6):
            occupancy = self.sync.hgetall("ts:5:%d:occupancy" % b)
            self.assertEqual(occupancy, {str(2 << 9 | 3 << 5 | 4): "1"}, b)
