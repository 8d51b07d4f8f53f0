"""The CMOS previous-count state script, against a real Redis. (CMOS rates and base
currents themselves go to the per-channel store: tests/test_channels.py.)"""
import numpy as np
from twisted.internet import defer
from twisted.trial import unittest

from minard import constants as C
from minard.store.connection import connect
from minard.store.datastream import CmosState, decode_slot_state
from tests.support import RedisTestMixin

T0 = 1_700_000_000_123_456_789  # ns, beyond 2^53: exactness matters
SEC = 1_000_000_000


def record(crate, t_ns, slots, masked=None):
    """A CMOS record's channels: `slots` is {slot: 32 counts}; a count with bit 31 set is
    invalid; `masked` is {slot: 32 masked-in flags} (default all in)."""
    order = sorted(slots)
    index = np.array([crate << 9 | s << 5 | c for s in order for c in range(32)], np.uint16)
    counts = np.array([slots[s] for s in order], dtype=np.uint32).ravel()
    valid = (counts & np.uint32(1 << 31)) == 0
    m = np.array([(masked or {}).get(s, [1] * 32) for s in order], dtype=bool).ravel()
    return (crate, t_ns, index, counts, valid, m)


def one(channel_counts, fill=0):
    """32 counts: `fill` except the given {channel: count}."""
    counts = [fill] * 32
    for ch, c in channel_counts.items():
        counts[ch] = c
    return counts


def stored(sync, crate, slot):
    """The stored (counts, receipt ns) arrays of a slot."""
    value = sync.command("HGET", "cmos:state:%d" % crate, str(slot))
    return decode_slot_state(value.encode("utf-8", "surrogateescape"))


class CmosStateTests(RedisTestMixin, unittest.TestCase):
    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.other = connect(self.redis_server.url)
        self.state = CmosState(self.redis)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.redis.disconnect()
        yield self.other.disconnect()

    def as_dict(self, result):
        index, rate = result
        return dict(zip(index.tolist(), rate.tolist()))

    @defer.inlineCallbacks
    def test_rates_from_successive_counts(self):
        first = yield self.state.rates([record(2, T0, {0: one({0: 100, 1: 100, 2: 500, 3: 7})})])
        self.assertEqual(self.as_dict(first[0]), {})
        dt = 1.5
        t1 = T0 + int(dt * SEC)
        masked = one({3: 0}, fill=1)
        second = yield self.state.rates([record(
            2, t1, {0: one({0: 400, 1: 100, 2: 400, 3: 10, 4: 3})}, masked={0: masked})])
        # ch 1: no increase; ch 2: went down (wrap); ch 3: masked out; 5..31 stayed at 0
        self.assertEqual(self.as_dict(second[0]), {2 << 9 | 0: 300 / dt, 2 << 9 | 4: 3 / dt})
        counts, times = stored(self.sync, 2, 0)
        self.assertEqual(counts[:5].tolist(), [400, 100, 400, 10, 3])
        self.assertEqual(set(times.tolist()), {t1})
        ttl = self.sync.command("TTL", "cmos:state:2")
        self.assertTrue(C.CMOS_STATE_TTL - 5 <= ttl <= C.CMOS_STATE_TTL)
        # after the wrap, counting resumes from the new value
        third = yield self.state.rates([record(2, t1 + 2 * SEC, {0: one({2: 480}, fill=0)})])
        self.assertEqual(self.as_dict(third[0]), {1026: 40.0})

    @defer.inlineCallbacks
    def test_invalid_count_keeps_the_last_valid_pair(self):
        yield self.state.rates([record(0, T0, {1: one({0: 100})})])
        out = yield self.state.rates([record(0, T0 + SEC, {1: one({0: (1 << 31) | 7})})])
        self.assertEqual(self.as_dict(out[0]), {})
        counts, times = stored(self.sync, 0, 1)
        self.assertEqual((int(counts[0]), int(times[0])), (100, T0))
        out = yield self.state.rates([record(0, T0 + 2 * SEC, {1: one({0: 300})})])
        self.assertEqual(self.as_dict(out[0])[32], 100.0)

    @defer.inlineCallbacks
    def test_nanosecond_exact_dt(self):
        yield self.state.rates([record(0, T0, {0: one({5: 0})})])
        out = yield self.state.rates([record(0, T0 + SEC + 1, {0: one({5: 1_000_000_001})})])
        self.assertEqual(self.as_dict(out[0]), {5: 1_000_000_001 / (1 + 1e-9)})
        self.assertLess(abs(out[0][1][0] - 1e9), 1e-6)

    @defer.inlineCallbacks
    def test_dt_limits(self):
        yield self.state.rates([record(1, T0, {0: one({})})])
        # exactly 10 s: no rate (0 < dt < 10), but the state moves on
        out = yield self.state.rates([record(1, T0 + 10 * SEC, {0: one({0: 50})})])
        self.assertEqual(self.as_dict(out[0]), {})
        out = yield self.state.rates([record(1, T0 + 10 * SEC + SEC // 2, {0: one({0: 60})})])
        self.assertEqual(self.as_dict(out[0]), {512: 20.0})
        # just under 10 s since the previous one
        out = yield self.state.rates([record(1, T0 + 20 * SEC, {0: one({0: 99})})])
        self.assertEqual(list(self.as_dict(out[0])), [512])
        # same time again, and an older record: stale, no rate and no state change
        out = yield self.state.rates([record(1, T0 + 20 * SEC, {0: one({0: 500})})])
        self.assertEqual(self.as_dict(out[0]), {})
        out = yield self.state.rates([record(1, T0, {0: one({0: 1000})})])
        self.assertEqual(self.as_dict(out[0]), {})
        self.assertEqual(int(stored(self.sync, 1, 0)[0][0]), 99)

    @defer.inlineCallbacks
    def test_batch_sees_its_own_earlier_records(self):
        batch = [record(3, T0 + i * SEC, {4: one({7: 1000 * i})}) for i in range(5)]
        batch.insert(2, record(4, T0, {4: one({7: 5})}))
        out = yield self.state.rates(batch)
        ch = 3 << 9 | 4 << 5 | 7
        self.assertEqual([self.as_dict(o) for o in out],
                         [{}, {ch: 1000.0}, {}, {ch: 1000.0}, {ch: 1000.0}, {ch: 1000.0}])

    @defer.inlineCallbacks
    def test_slots_are_independent(self):
        yield self.state.rates([record(7, T0, {0: one({}, 10), 15: one({}, 10)})])
        out = yield self.state.rates([record(7, T0 + SEC, {15: one({}, 20)})])
        self.assertEqual(len(out[0][0]), 32)
        self.assertEqual(set(out[0][0].tolist()), {7 << 9 | 15 << 5 | c for c in range(32)})
        out = yield self.state.rates([record(7, T0 + 2 * SEC, {0: one({}, 30), 15: one({}, 30)})])
        rates = self.as_dict(out[0])
        self.assertEqual(rates[7 << 9], 10.0)           # slot 0: over 2 s
        self.assertEqual(rates[7 << 9 | 15 << 5], 10.0)  # slot 15: over 1 s

    @defer.inlineCallbacks
    def test_two_workers_never_use_a_stale_pair(self):
        """Records of one crate split between two connections, in flight at once: every
        rate is computed from a consistent, earlier pair (constant true rate 250 Hz)."""
        rate = 250.0
        times = [T0 + int(i * 0.7 * SEC) + i * 13 for i in range(40)]
        counts = [int(rate * (t - T0) / SEC) for t in times]
        ds = []
        for i, (t, c) in enumerate(zip(times, counts)):
            state = CmosState(self.redis if i % 2 else self.other)
            ds.append(state.rates([record(6, t, {0: one({}, c)})]))
        results = yield defer.gatherResults(ds)
        rates = [r for out in results for r in out[0][1].tolist()]
        # some records may lose the race (their pair is already older than the stored one)
        self.assertGreaterEqual(len(rates), 32 * 10)
        for r in rates:
            self.assertLess(abs(r - rate), rate * 0.01)  # counts are truncated ints
        self.assertEqual(int(stored(self.sync, 6, 0)[0][0]), counts[-1])

    @defer.inlineCallbacks
    def test_empty_record(self):
        out = yield self.state.rates([record(5, T0, {})])
        self.assertEqual(len(out[0][0]), 0)

