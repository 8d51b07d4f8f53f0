"""The per-channel store (store/channels.py): packed formats, writers' partials, the
data-driven finalisation and the reads, against a real Redis."""
import math
import random

import numpy as np
from twisted.internet import defer
from twisted.trial import unittest

from minard import constants as C
from minard.store import channels, keys
from minard.store.channels import ChannelStore, ChannelWriter, Finaliser
from minard.store.connection import connect
from tests.support import RedisConnectionMixin, RedisTestMixin

N = C.N_CHANNELS


def reference(num, den, mode):
    """What a finalised bucket holds, by plain Python: {channel: value}, card and crate
    {group: (avg, max)} over the channels with a value."""
    values = {}
    for i in range(N):
        if mode == "ratio":
            if den > 0 and num[i] > 0:
                values[i] = num[i] / den
        elif den[i] > 0:
            values[i] = num[i] / den[i]
    groups = {"card": {}, "crate": {}}
    for i, v in values.items():
        groups["card"].setdefault(i >> 5, []).append(v)
        groups["crate"].setdefault(i >> 9, []).append(v)
    out = {level: {g: (sum(vs) / len(vs), max(vs)) for g, vs in gs.items()}
           for level, gs in groups.items()}
    return values, out


def close(a, b, rel=2e-7):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


class FormatTests(unittest.TestCase):
    def test_part_round_trip(self):
        rng = np.random.default_rng(1)
        num = rng.integers(0, 1000, N).astype(float)
        blob = channels.encode_part("ratio", num, 777)
        got, events = channels.decode_part(blob, "ratio")
        self.assertTrue(np.array_equal(got, num))
        self.assertEqual(events, 777)
        den = rng.integers(0, 9, N)
        blob = channels.encode_part("mean", num * 0.5, den)
        got, got_den = channels.decode_part(blob, "mean")
        self.assertTrue(np.array_equal(got, num * 0.5))
        self.assertTrue(np.array_equal(got_den, den))
        self.assertRaises(ValueError, channels.decode_part, blob, "ratio")
        self.assertRaises(ValueError, channels.decode_part, blob[:-1], "mean")
        self.assertRaises(ValueError, channels.decode_part, b"x" * len(blob), "mean")

    def test_final_by_hand(self):
        num = np.zeros(N)
        den = np.zeros(N, dtype=np.int64)
        num[[0, 1, 40, 600]] = [2, 4, 10, 3]
        den[[0, 1, 40, 600]] = [2, 1, 5, 0]  # channel 600: no samples, no value
        values, total = channels.finalise_values(num, den, "mean")
        blob = channels.encode_final(values, total)
        self.assertEqual(len(blob), channels.FINAL_SIZE)
        self.assertLessEqual(len(blob), 50 * 1024)
        f = channels.decode_final(blob)
        self.assertEqual(f["denominator"], 8)
        self.assertEqual(f["values"][0], 1.0)
        self.assertEqual(f["values"][1], 4.0)
        self.assertEqual(f["values"][40], 2.0)
        self.assertTrue(math.isnan(f["values"][600]))
        self.assertEqual(int(np.sum(~np.isnan(f["values"]))), 3)
        self.assertEqual(f["card:avg"][0], 2.5)
        self.assertEqual(f["card:max"][0], 4.0)
        self.assertEqual(f["card:avg"][1], 2.0)
        self.assertTrue(math.isnan(f["card:avg"][2]))
        self.assertTrue(np.isclose(f["crate:avg"][0], 7.0 / 3))
        self.assertEqual(f["crate:max"][0], 4.0)
        self.assertTrue(math.isnan(f["crate:max"][1]))

    def test_ratio_keeps_channels_with_hits(self):
        num = np.zeros(N)
        num[[5, 6]] = [3, 1]
        values, events = channels.finalise_values(num, 4, "ratio")
        self.assertEqual(values[5], 0.75)
        self.assertEqual(values[6], 0.25)
        self.assertEqual(int(np.sum(~np.isnan(values))), 2)
        values, _ = channels.finalise_values(num, 0, "ratio")
        self.assertTrue(np.all(np.isnan(values)))

    def test_random_against_reference(self):
        rng = random.Random(7)
        num = np.zeros(N)
        den = np.zeros(N, dtype=np.int64)
        for i in rng.sample(range(N), 3000):
            den[i] = rng.randint(0, 9)
            num[i] = rng.uniform(-50, 5000) * max(den[i], 1)
        values, total = channels.finalise_values(num, den, "mean")
        f = channels.decode_final(channels.encode_final(values, total))
        want, groups = reference(num, den, "mean")
        got = {i: v for i, v in enumerate(f["values"]) if not math.isnan(v)}
        self.assertEqual(set(got), set(want))
        for i in want:
            self.assertTrue(close(got[i], want[i]), (i, got[i], want[i]))
        for level, size in (("card", 32 * 0 + 320), ("crate", 20)):
            for g in range(size):
                if g in groups[level]:
                    avg, mx = groups[level][g]
                    self.assertTrue(close(f[level + ":avg"][g], avg))
                    self.assertTrue(close(f[level + ":max"][g], mx))
                else:
                    self.assertTrue(math.isnan(f[level + ":avg"][g]))

    def test_offsets(self):
        values = np.arange(N, dtype=np.float64)
        blob = channels.encode_final(values, 1)
        off, n = channels.series_offset(3, 15, 17)
        self.assertEqual(np.frombuffer(blob[off:off + n], "<f4")[0], (3 << 9) | (15 << 5) | 17)
        off, n = channels.series_offset(2, 4, method="max")
        self.assertEqual(np.frombuffer(blob[off:off + n], "<f4")[0], (2 << 9) | (4 << 5) | 31)
        off, n = channels.series_offset(19, method="avg")
        self.assertEqual(np.frombuffer(blob[off:off + n], "<f4")[0], (19 << 9) + 255.5)

    def test_json_values(self):
        self.assertEqual(channels.to_json_values(np.array([0.0034, np.nan, 1 / 3], "<f4")),
                         [0.0034, None, 0.3333333])


class WriterTests(unittest.TestCase):
    def test_partials_of_every_interval(self):
        w = ChannelWriter("cmos", "w1")
        w.add_samples(120, [1, 2], [10.0, 20.0])
        w.add_samples(124, [1], [30.0])
        w.add_samples(125, [1], [5.0])
        w.advance(125)
        parts = {(H, b): channels.decode_part(blob, "mean")
                 for H, b, field, blob in w.collect()}
        self.assertEqual(sorted(parts), [(5, 24), (5, 25), (60, 2), (86400, 0)])
        self.assertEqual(parts[5, 24][0][1], 40.0)
        self.assertEqual(parts[5, 24][1][1], 2)
        self.assertEqual(parts[60, 2][0][1], 45.0)
        self.assertEqual(parts[86400, 0][1][1], 3)

    def test_written_partials_leave_memory_and_late_data_get_a_new_field(self):
        w = ChannelWriter("occupancy", "w1")
        hits = np.zeros(N)
        hits[7] = 3
        w.add_hits(100, hits, 10)
        w.advance(104)
        parts = w.collect()
        self.assertEqual({p[2] for p in parts}, {"w1"})
        w.written(parts, 104)
        self.assertNotIn((5, 20), w.partials)   # ended and in Redis
        self.assertIn((60, 1), w.partials)      # still open
        self.assertEqual(w.collect(), [])       # nothing new: nothing to write
        w.add_hits(101, hits, 1)                # late: bucket (5, 20) again
        parts = {(H, b): field for H, b, field, blob in w.collect()}
        self.assertEqual(parts[5, 20], "w1#1")  # added beside the first, not over it
        self.assertEqual(parts[60, 1], "w1")

    def test_failed_write_keeps_partials_dirty(self):
        w = ChannelWriter("base", "w1")
        w.add_samples(10, [3], [1.0])
        w.advance(20)
        first = w.collect()
        w.add_samples(11, [3], [2.0])
        second = w.collect()  # the first never reached Redis: the newer partial has both
        blob = [p for p in second if p[0] == 5][0][3]
        num, den = channels.decode_part(blob, "mean")
        self.assertEqual((num[3], den[3]), (3.0, 2))
        self.assertEqual(len(first), len(second))

    def test_bounded_while_redis_is_away(self):
        w = ChannelWriter("base", "w1", max_open=3)
        for s in range(0, 50, 5):
            w.add_samples(s, [1], [1.0])
            w.collect()
        self.assertEqual(len([k for k in w.partials if k[0] == 5]), 3)
        self.assertEqual(w.dropped, 7)


class StoreTests(RedisTestMixin, unittest.TestCase):
    def setUp(self):
        RedisTestMixin.setUp(self)
        self.conns = [connect(self.redis_server.url) for _ in range(3)]

    @defer.inlineCallbacks
    def tearDown(self):
        for c in self.conns:
            yield c.disconnect()

    def final(self, name, H, b):
        blob = self.sync.get_bytes("GET", keys.channel_final(name, H, b))
        return None if blob is None else channels.decode_final(blob)

    @defer.inlineCallbacks
    def test_two_writers_then_exact_values(self):
        a = ChannelStore(self.conns[0], "A", ["occupancy"])
        b = ChannelStore(self.conns[1], "B", ["occupancy"])
        fin = Finaliser(self.conns[2], "occupancy", "F")
        rng = np.random.default_rng(3)
        T = 1_000_000_020  # bucket 200000004 of 5 s, 16666667 of 60 s
        total_hits, total_events = np.zeros(N), 0
        for second in range(T, T + 5):
            for store in (a, b):
                hits = rng.integers(0, 3, N).astype(float)
                events = int(rng.integers(50, 100))
                store["occupancy"].add_hits(second, hits, events)
                total_hits += hits
                total_events += events
        a["occupancy"].advance(T + 4)
        b["occupancy"].advance(T + 3)  # b has not closed the bucket's last second yet
        yield a.write()
        yield b.write()
        self.assertEqual((yield fin.finalise()), 0)
        self.assertIsNone(self.final("occupancy", 5, T // 5))
        b["occupancy"].advance(T + 4)
        yield b.write()
        self.assertEqual((yield fin.finalise()), 1)
        f = self.final("occupancy", 5, T // 5)
        want, groups = reference(total_hits, total_events, "ratio")
        self.assertEqual(f["denominator"], total_events)
        got = {i: v for i, v in enumerate(f["values"]) if not math.isnan(v)}
        self.assertEqual(set(got), set(want))
        for i in want:
            self.assertTrue(close(got[i], want[i]))
        for card, (avg, mx) in groups["card"].items():
            self.assertTrue(close(f["card:avg"][card], avg))
            self.assertTrue(close(f["card:max"][card], mx))
        self.assertEqual(self.sync.command("ZCARD", keys.channel_open("occupancy")), 2)
        ttl = self.sync.command("TTL", keys.channel_final("occupancy", 5, T // 5))
        self.assertTrue(5 * C.HASH_EXPIRE - 5 <= ttl <= 5 * C.HASH_EXPIRE)
        # a finalised bucket is ~44 KB in Redis
        usage = self.sync.command("MEMORY", "USAGE", keys.channel_final("occupancy", 5, T // 5))
        self.assertLessEqual(usage, 50 * 1024)

    @defer.inlineCallbacks
    def test_late_part_reopens_and_refinalises_from_all_parts(self):
        a = ChannelStore(self.conns[0], "A", ["base"])
        fin = Finaliser(self.conns[2], "base", "F")
        a["base"].add_samples(100, [9], [4.0])
        a["base"].advance(104)
        yield a.write()
        yield fin.finalise()
        self.assertEqual(self.final("base", 5, 20)["values"][9], 4.0)
        # a worker that was judged gone comes back with the same bucket's data
        late = ChannelStore(self.conns[1], "L", ["base"])
        late["base"].add_samples(103, [9], [1.0])
        late["base"].advance(104)
        yield late.write()
        self.assertEqual((yield fin.finalise()), 1)  # the 5-s bucket again
        self.assertEqual(self.final("base", 5, 20)["values"][9], 2.5)
        a["base"].advance(119)
        late["base"].advance(119)
        yield a.write()
        yield late.write()
        self.assertEqual((yield fin.finalise()), 1)  # the 60-s bucket (no data after 103)
        self.assertEqual(self.final("base", 60, 1)["values"][9], 2.5)

    @defer.inlineCallbacks
    def test_part_written_while_finalising_keeps_the_bucket_open(self):
        a = ChannelStore(self.conns[0], "A", ["cmos"])
        a["cmos"].add_samples(100, [9], [4.0])
        a["cmos"].advance(104)
        yield a.write()
        member = keys.bucket_member(5, 20)
        version = self.sync.command("HGET", keys.channel_part("cmos", 5, 20), "~v")
        self.sync.command("HINCRBY", keys.channel_part("cmos", 5, 20), "~v", 1)
        done = yield channels.FINALISE_WRITE(
            self.conns[1], [keys.channel_final("cmos", 5, 20), keys.channel_open("cmos"),
                            keys.channel_part("cmos", 5, 20), keys.channel_claim("cmos", member)],
            [b"x", "60", member, version, "F"])
        self.assertEqual(int(done), 0)
        self.assertEqual(self.sync.command("ZSCORE", keys.channel_open("cmos"), member), "104")
        self.assertIsNone(self.sync.command("GET", keys.channel_final("cmos", 5, 20)))

    @defer.inlineCallbacks
    def test_concurrent_finalisers_finalise_once(self):
        a = ChannelStore(self.conns[0], "A", ["cmos"])
        for s in range(0, 60):
            a["cmos"].add_samples(s, [1, 2], [float(s), 1.0])
        a["cmos"].advance(65)
        yield a.write()
        fins = [Finaliser(c, "cmos", "F%d" % i) for i, c in enumerate(self.conns)]
        results = yield defer.gatherResults([f.finalise() for f in fins])
        self.assertEqual(sum(results), 13)  # twelve 5-s buckets and one 60-s bucket
        self.assertEqual(self.final("cmos", 60, 0)["values"][1], sum(range(60)) / 60)

    @defer.inlineCallbacks
    def test_a_gone_writer_stops_holding_up_finalisation(self):
        a = ChannelStore(self.conns[0], "A", ["cmos"])
        dead = ChannelStore(self.conns[1], "D", ["cmos"])
        dead["cmos"].advance(95)
        yield dead.write()
        a["cmos"].add_samples(100, [1], [1.0])
        a["cmos"].advance(104)
        yield a.write()
        patient = Finaliser(self.conns[2], "cmos", "F")
        self.assertEqual((yield patient.finalise()), 0)  # D may still bring data
        # D silent for > timeout, and A far enough ahead of it: D is gone
        a["cmos"].advance(200)
        yield a.write()
        yield defer.succeed(None)
        impatient = Finaliser(self.conns[2], "cmos", "F", writer_timeout=-1, writer_lag=60)
        self.assertEqual((yield impatient.finalise()), 2)
        self.assertEqual(self.sync.hgetall(keys.channel_writers("cmos")).keys(), {"A"})

    @defer.inlineCallbacks
    def test_stopped_writer_leaves(self):
        a = ChannelStore(self.conns[0], "A", ["cmos", "base"])
        a["cmos"].advance(10)
        a["base"].advance(10)
        yield a.write()
        self.assertEqual(set(self.sync.hgetall(keys.channel_writers("base"))), {"A"})
        yield a.leave()
        self.assertEqual(self.sync.hgetall(keys.channel_writers("base")), {})
        self.assertEqual(self.sync.hgetall(keys.channel_writers("cmos")), {})

    @defer.inlineCallbacks
    def test_corrupt_part_is_counted_not_fatal(self):
        from minard.stats import Stats
        stats = Stats("t")
        a = ChannelStore(self.conns[0], "A", ["base"])
        a["base"].add_samples(100, [9], [4.0])
        a["base"].advance(104)
        yield a.write()
        self.sync.command("HSET", keys.channel_part("base", 5, 20), "junk", "not a part")
        yield Finaliser(self.conns[2], "base", "F", stats).finalise()
        self.assertEqual(self.final("base", 5, 20)["values"][9], 4.0)
        self.assertEqual(stats.counters["corrupt_parts"], 1)

    @defer.inlineCallbacks
    def test_reads(self):
        a = ChannelStore(self.conns[0], "A", ["cmos"])
        ch = C.channel_index(3, 15, 20)
        for s in range(0, 15):
            a["cmos"].add_samples(s, [ch, 5], [0.1 * (s // 5 + 1), 2.0])
        a["cmos"].advance(14)
        yield a.write()
        yield Finaliser(self.conns[2], "cmos", "F").finalise()
        r = self.conns[1]
        got = yield channels.value_series(r, "cmos", 5, [0, 1, 2, 3], 3, 15, 20)
        self.assertEqual(got, [0.1, 0.2, 0.3, None])
        got = yield channels.value_series(r, "cmos", 5, [0, 3], 3, 15, method="max")
        self.assertEqual(got, [0.1, None])
        got = yield channels.value_series(r, "cmos", 5, [1], 0, method="avg")
        self.assertEqual(got, [2.0])
        position, blob = yield channels.latest(r, "cmos", 5, [3, 2, 1])
        self.assertEqual(position, 1)
        self.assertAlmostEqual(blob["values"][ch], 0.3, places=6)
        position, blob = yield channels.latest(r, "cmos", 5, [9])
        self.assertIsNone(position)


class CatchUpTests(RedisConnectionMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def test_a_backlog_is_written_in_several_calls_then_finalised(self):
        """After an outage a writer holds many partials: they go out PARTS_PER_CALL at a
        time, the progress last, and every bucket is finalised from them."""
        store = ChannelStore(self.redis, "A", ["base"])
        for s in range(0, 120):
            store["base"].add_samples(s, [7], [float(s)])
        store["base"].advance(119)
        self.sync.command("CONFIG", "SET", "slowlog-log-slower-than", "0")
        self.sync.command("SLOWLOG", "RESET")
        yield store.write()
        log = self.sync.command("SLOWLOG", "GET", "-1")
        self.sync.command("CONFIG", "SET", "slowlog-log-slower-than", "10000")
        calls = [e for e in log if e[3][0] in ("EVAL", "EVALSHA")]
        # 24 five-second + 2 one-minute + 1 day partials, 4 a call, then the progress
        self.assertEqual(len(calls), math.ceil(27 / channels.PARTS_PER_CALL) + 1)
        self.assertEqual(self.sync.hgetall(keys.channel_writers("base"))["A"].split()[0], "119")
        n = yield Finaliser(self.redis, "base", "F").finalise()
        self.assertEqual(n, 26)  # the day is still open
        for b in range(24):
            f = channels.decode_final(self.sync.get_bytes("GET", keys.channel_final("base", 5, b)))
            self.assertEqual(f["values"][7], (5 * b + 2.0))
        f = channels.decode_final(self.sync.get_bytes("GET", keys.channel_final("base", 60, 1)))
        self.assertEqual(f["values"][7], 89.5)
