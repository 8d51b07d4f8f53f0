"""Once-only finalisation of hash buckets with card/crate roll-ups, against a real Redis."""
import random

from twisted.internet import defer
from twisted.trial import unittest

from minard.constants import HASH_EXPIRE, HASH_INTERVALS, FINALISE_DELAY
from minard.store import finalise
from minard.store.connection import connect
from minard.store.finalise import Finaliser, due_bucket
from tests.support import RedisTestMixin


def close_enough(a, b, rel=1e-9):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


class DueBucketTests(unittest.TestCase):
    def test_boundaries(self):
        for H in HASH_INTERVALS:
            for p in (0, 7, 123456):
                due_at = (p + 1) * H + FINALISE_DELAY
                self.assertEqual(due_bucket(H, due_at), p)
                self.assertEqual(due_bucket(H, due_at + H - 1), p)
                self.assertEqual(due_bucket(H, due_at - 1), p - 1)

    def test_reference_by_hand(self):
        values, card_avg, card_max, crate_avg, crate_max = finalise.reference(
            {"0": 2, "1": 4, "40": 10, "600": 3}, {"0": 2, "1": 1, "40": 5, "600": 0}, "mean")
        self.assertEqual(values, {0: 1.0, 1: 4.0, 40: 2.0})
        self.assertEqual(card_avg, {0: 2.5, 32: 2.0})
        self.assertEqual(card_max, {0: 4.0, 32: 2.0})
        self.assertEqual(crate_avg, {0: 7.0 / 3})
        self.assertEqual(crate_max, {0: 4.0})
        values, *_ = finalise.reference({5: 3, 6: 1}, 4, "ratio")
        self.assertEqual(values, {5: 0.75, 6: 0.25})


class FinaliseTests(RedisTestMixin, unittest.TestCase):
    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.other = connect(self.redis_server.url)
        self.rng = random.Random(1234)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.redis.disconnect()
        yield self.other.disconnect()

    def fill_mean(self, H, b, name, n=3000):
        sums, lens = {}, {}
        channels = self.rng.sample(range(10240), n)
        for ch in channels:
            lens[str(ch)] = self.rng.randint(0, 9)  # zero samples: no value
            sums[str(ch)] = repr(self.rng.uniform(-50, 5000) * max(lens[str(ch)], 1))
        sums["garbage"] = "1"
        sums["99999"] = "5"
        lens["99999"] = "1"
        self._hset("ts:%d:%d:%s:sum" % (H, b, name), sums)
        self._hset("ts:%d:%d:%s:len" % (H, b, name), lens)
        return sums, lens

    def _hset(self, key, mapping):
        items = list(mapping.items())
        for i in range(0, len(items), 500):
            args = []
            for k, v in items[i:i + 500]:
                args += [k, v]
            self.sync.command("HSET", key, *args)

    def check(self, H, b, name, expected):
        values, card_avg, card_max, crate_avg, crate_max = expected
        base = "ts:%d:%d:%s" % (H, b, name)
        for suffix, want in [("", values), (":card:avg", card_avg), (":card:max", card_max),
                             (":crate:avg", crate_avg), (":crate:max", crate_max)]:
            got = self.sync.hgetall(base + suffix)
            self.assertEqual(set(got), {str(k) for k in want}, suffix)
            for k, v in want.items():
                self.assertTrue(close_enough(float(got[str(k)]), v),
                                "%s%s[%s]: %s != %r" % (base, suffix, k, got[str(k)], v))
            ttl = self.sync.command("TTL", base + suffix)
            self.assertTrue(H * HASH_EXPIRE - 5 <= ttl <= H * HASH_EXPIRE, (suffix, ttl))

    @defer.inlineCallbacks
    def test_mean_matches_reference(self):
        H, b = 5, 345678901
        sums, lens = self.fill_mean(H, b, "cmos")
        expected = finalise.reference({k: float(v) for k, v in sums.items()
                                       if k.isdigit() and int(k) < 10240},
                                      {k: int(v) for k, v in lens.items()}, "mean")
        self.assertGreater(len(expected[0]), 2000)
        result = yield Finaliser(self.redis).finalise("cmos", "mean", H, b)
        self.assertEqual(result, 1)
        self.check(H, b, "cmos", expected)
        lock = "ts:5:%d:cmos:lock" % b
        self.assertEqual(self.sync.command("GET", lock), "1")
        self.assertTrue(H * HASH_EXPIRE - 5 <= self.sync.command("TTL", lock) <= H * HASH_EXPIRE)
        # a second attempt does nothing, even if the raw data changed meanwhile
        self.sync.command("HSET", "ts:5:%d:cmos:sum" % b, "0", "1e9")
        self.sync.command("HSET", "ts:5:%d:cmos:len" % b, "0", "1")
        again = yield Finaliser(self.other).finalise("cmos", "mean", H, b)
        self.assertEqual(again, 0)
        self.check(H, b, "cmos", expected)

    @defer.inlineCallbacks
    def test_ratio_matches_reference(self):
        H, b = 60, 28000000
        hits = {str(ch): str(self.rng.randint(1, 500)) for ch in self.rng.sample(range(10240), 9000)}
        self._hset("ts:60:%d:occupancy:hits" % b, hits)
        self.sync.command("SET", "ts:60:%d:occupancy:count" % b, "777")
        expected = finalise.reference({k: int(v) for k, v in hits.items()}, 777, "ratio")
        result = yield Finaliser(self.redis).finalise("occupancy", "ratio", H, b)
        self.assertEqual(result, 1)
        self.check(H, b, "occupancy", expected)

    @defer.inlineCallbacks
    def test_ratio_without_events_writes_nothing_but_locks(self):
        self.sync.command("HSET", "ts:5:10:occupancy:hits", "3", "4")
        result = yield Finaliser(self.redis).finalise("occupancy", "ratio", 5, 10)
        self.assertEqual(result, 1)
        self.assertEqual(self.sync.command("EXISTS", "ts:5:10:occupancy"), 0)
        self.assertEqual(self.sync.command("GET", "ts:5:10:occupancy:lock"), "1")

    @defer.inlineCallbacks
    def test_concurrent_finalisers_finalise_once(self):
        now = 1700000000
        expected = {}
        for H in HASH_INTERVALS:
            p = due_bucket(H, now)
            sums, lens = self.fill_mean(H, p, "base", n=2000)
            expected[H] = finalise.reference(
                {k: float(v) for k, v in sums.items() if k.isdigit() and int(k) < 10240},
                {k: int(v) for k, v in lens.items()}, "mean")
        # many attempts from two connections, interleaved in flight at once
        attempts = []
        for i in range(6):
            conn = self.redis if i % 2 else self.other
            attempts.append(Finaliser(conn).finalise_due("base", "mean", now))
        results = yield defer.gatherResults(attempts)
        for H in HASH_INTERVALS:
            self.assertEqual(sum(r[H] for r in results), 1, H)
            self.check(H, due_bucket(H, now), "base", expected[H])

    @defer.inlineCallbacks
    def test_failed_read_leaves_no_lock(self):
        self.sync.command("SET", "ts:5:20:cmos:sum", "not a hash")
        f = Finaliser(self.redis)
        yield self.assertFailure(f.finalise("cmos", "mean", 5, 20), Exception)
        self.assertEqual(self.sync.command("EXISTS", "ts:5:20:cmos:lock"), 0)
        # once the data are sane, the next attempt finalises
        self.sync.command("DEL", "ts:5:20:cmos:sum")
        self.sync.command("HSET", "ts:5:20:cmos:sum", "7", "9")
        self.sync.command("HSET", "ts:5:20:cmos:len", "7", "3")
        self.assertEqual((yield f.finalise("cmos", "mean", 5, 20)), 1)
        self.assertEqual(self.sync.hgetall("ts:5:20:cmos"), {"7": "3"})

    @defer.inlineCallbacks
    def test_failed_write_removes_lock_and_partial_output(self):
        self.sync.command("HSET", "ts:5:21:cmos:sum", "7", "9")
        self.sync.command("HSET", "ts:5:21:cmos:len", "7", "3")
        self.sync.command("SET", "ts:5:21:cmos:crate:max", "in the way")
        f = Finaliser(self.redis)
        yield self.assertFailure(f.finalise("cmos", "mean", 5, 21), Exception)
        for suffix in ("lock", "card:avg"):
            self.assertEqual(self.sync.command("EXISTS", "ts:5:21:cmos:" + suffix), 0)
        self.assertEqual(self.sync.command("EXISTS", "ts:5:21:cmos"), 0)
        self.assertEqual((yield f.finalise("cmos", "mean", 5, 21)), 1)
        self.assertEqual(self.sync.hgetall("ts:5:21:cmos:crate:max"), {"0": "3"})

    @defer.inlineCallbacks
    def test_finalise_due_reports_errors(self):
        now = 1700000000
        p = due_bucket(60, now)
        self.sync.command("SET", "ts:60:%d:base:sum" % p, "x")
        f = Finaliser(self.redis)
        failure = yield self.assertFailure(f.finalise_due("base", "mean", now), Exception)
        self.assertIn("WRONGTYPE", str(failure))

    @defer.inlineCallbacks
    def test_script_cache_flushed(self):
        """EVALSHA falls back to EVAL when Redis lost its script cache (restart)."""
        f = Finaliser(self.redis)
        self.sync.command("HSET", "ts:5:1:cmos:sum", "1", "2")
        self.sync.command("HSET", "ts:5:1:cmos:len", "1", "1")
        self.assertEqual((yield f.finalise("cmos", "mean", 5, 1)), 1)
        self.sync.command("SCRIPT", "FLUSH")
        self.sync.command("HSET", "ts:5:2:cmos:sum", "1", "2")
        self.sync.command("HSET", "ts:5:2:cmos:len", "1", "4")
        self.assertEqual((yield f.finalise("cmos", "mean", 5, 2)), 1)
        self.assertEqual(self.sync.hgetall("ts:5:2:cmos"), {"1": "0.5"})
