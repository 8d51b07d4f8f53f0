"""The data consumer against a real Redis: CMOS rates and base currents from real record
bytes, per-second flush, finalised hashes and roll-ups, corrupt input, Redis outages."""
import struct

import numpy as np
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from minard import constants as C
from minard.services import data_consumer
from minard.services.data_consumer import ChannelSums, DataConsumer, kinds_for
from minard.stats import Stats
from minard.store import finalise
from minard.store.connection import connect
from minard.store.datastream import decode_slot_state
from tests.support import RedisServer, RedisTestMixin

T0 = 1_700_000_000  # a multiple of 5: bucket boundary
NS = 1_000_000_000
FULL = [0xFFFFFFFF] * 16


def cmos(crate, slot_mask, counts, masks=FULL):
    payload = (struct.pack(">II", crate, slot_mask) + struct.pack(">16I", *masks)
               + struct.pack(">I", 0)
               + struct.pack(">256I", *(list(counts) + [0] * (256 - len(counts))))
               + bytes(64))
    return struct.pack(">III", C.RECORD_CMOS, len(payload), 0) + payload


def base(crate, slot_mask, raw, masks=FULL):
    payload = (struct.pack(">II", crate, slot_mask) + struct.pack(">16I", *masks)
               + struct.pack(">I", 0) + bytes(raw) + bytes(512))
    return struct.pack(">III", C.RECORD_BASE, len(payload), 0) + payload


def message(t_ns, *records):
    return [struct.pack(">q", t_ns)] + list(records)


class FakeLink:
    def __init__(self, address, on_message):
        self.address = address
        self.on_message = on_message
        self.closed = False

    paused = False

    def kick(self):
        pass

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False

    def shutdown(self):
        self.closed = True


class ChannelSumsTests(unittest.TestCase):
    def test_buckets_and_bound(self):
        sums = ChannelSums(max_buckets=2)
        self.assertEqual(sums.add(T0, np.array([1, 2]), np.array([1.0, 2.0])), 0)
        self.assertEqual(sums.add(T0 + 4, np.array([1]), np.array([3.0])), 0)
        self.assertEqual(sums.add(T0 + 5, np.array([9]), np.array([-1.0])), 0)
        self.assertEqual(sums.add(T0 + 10, np.array([9]), np.array([-1.0])), 3)  # oldest goes
        out = sums.take()
        self.assertEqual([(t, i.tolist(), s.tolist(), n.tolist()) for t, i, s, n in out],
                         [(T0 + 5, [9], [-1.0], [1]), (T0 + 10, [9], [-1.0], [1])])
        self.assertEqual(sums.take(), [])

    def test_kinds(self):
        self.assertEqual(kinds_for({"port": 5557, "zmq": None}), ("cmos",))
        self.assertEqual(kinds_for({"port": 5557, "zmq": "tcp://127.0.0.1:5558"}), ("base",))
        self.assertEqual(kinds_for({"port": 6000, "zmq": None}), ("cmos", "base"))


class FuzzTests(unittest.TestCase):
    """Any frames at all: counted as corrupt or accepted, never an unexpected error."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=1300), min_size=0, max_size=4),
           st.sampled_from([C.RECORD_CMOS, C.RECORD_BASE, 0x504D5420, 0]),
           st.integers(0, 1300), st.booleans())
    def test_fuzz(self, frames, rid, length, stamped):
        self.feed(frames, rid, length, stamped)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from([C.RECORD_CMOS, C.RECORD_BASE]), st.integers(0, 25),
           st.integers(0, 0x1FFFF), st.binary(min_size=1200, max_size=1200))
    def test_fuzz_well_framed(self, rid, crate, slot_mask, rest):
        size = C.CMOS_PAYLOAD_SIZE if rid == C.RECORD_CMOS else C.BASE_PAYLOAD_SIZE
        payload = (struct.pack(">II", crate, slot_mask) + rest)[:size]
        w = self.feed([], rid, size, True, payload)
        if crate < 20 and slot_mask < 0x10000:
            self.assertEqual(w.stats.counters.get("records_" + ("cmos" if rid == C.RECORD_CMOS
                                                                 else "base")), 1)

    def feed(self, frames, rid, length, stamped, payload=None):
        clock = task.Clock()
        clock.advance(T0)
        w = DataConsumer("tcp://127.0.0.1:1", ("cmos",), None, Stats("fuzz"), clock,
                         link_factory=FakeLink)
        w.pump_cmos = lambda: None  # no Redis here: records just queue
        w.link = FakeLink(None, None)
        # a plausible header with a random body, and raw random frames
        body = payload if payload is not None else (frames[0] if frames else b"")
        record = struct.pack(">III", rid, length, 0) + body[:length]
        message_frames = ([struct.pack(">q", T0 * NS)] if stamped else []) + [record] + frames
        w.on_message(message_frames)
        self.assertNotIn("corrupt_undecodable_message", w.stats.counters)
        for crate, ns, index, count, valid, masked in w.queue:
            self.assertTrue((index < C.N_CHANNELS).all())
        return w


class ConsumerTestBase(RedisTestMixin, unittest.TestCase):
    def setUp(self):
        RedisTestMixin.setUp(self)
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.connections = []
        self.workers = []

    @defer.inlineCallbacks
    def tearDown(self):
        for w in self.workers:
            if w.running:
                yield w.stopService()
        for c in self.connections:
            yield c.disconnect()

    def worker(self, kinds=("cmos", "base"), url=None):
        redis = connect(url or self.redis_server.url, reply_timeout=3)
        self.connections.append(redis)
        w = DataConsumer("tcp://127.0.0.1:1", kinds, redis, Stats("test-consumer"),
                         self.clock, link_factory=FakeLink)
        w.startService()
        self.workers.append(w)
        return w

    @defer.inlineCallbacks
    def drain(self, w):
        while w.queue or w.cmos_in_flight is not None:
            d = w.cmos_in_flight or w.pump_cmos()
            if d is None:
                self.clock.advance(data_consumer.RETRY_DELAY)
                continue
            yield d

    @defer.inlineCallbacks
    def flush(self, w):
        yield self.drain(w)
        d = w.flush()
        if d is not None:
            yield d

    @defer.inlineCallbacks
    def finalise(self, w, now):
        result = yield w.finaliser.finalise_due("cmos", "mean", now)
        result2 = yield w.finaliser.finalise_due("base", "mean", now)
        return result, result2


class ValuesTests(ConsumerTestBase):
    """Known counts and currents in, the expected finalised hashes out."""

    def scenario(self):
        """Messages (stamp ns, records) and the values each channel should get."""
        rng = np.random.default_rng(5)
        msgs = []
        samples = {"cmos": {}, "base": {}}
        crates = [0, 7, 18]
        slots = {0: 0b11, 7: 0b1000000000000001, 18: 0xFF00}
        masks = {c: [int(x) for x in rng.integers(0, 2 ** 32, 16)] for c in crates}
        times = [T0 * NS + int(k * 0.9 * NS) + 12345 for k in range(5)]  # within 5 s
        rates = {c: rng.uniform(10, 5000, 256) for c in crates}
        prev = {}
        for k, t in enumerate(times):
            for crate in crates:
                counts = (rates[crate] * (t - T0 * NS) / NS).astype(np.int64) + 1000
                present = [s for s in range(16) if slots[crate] >> s & 1]
                for j, slot in enumerate(present):
                    for ch in range(32):
                        idx = crate << 9 | slot << 5 | ch
                        c = int(counts[j * 32 + ch])
                        if k and masks[crate][slot] >> ch & 1:
                            pc, pt = prev[idx]
                            if c > pc:
                                samples["cmos"].setdefault(idx, []).append(
                                    (c - pc) / ((t - pt) / NS))
                        prev[idx] = (c, t)
                raw = rng.integers(0, 256, 512)
                for slot in range(16):
                    if slots[crate] >> slot & 1:
                        for ch in range(32):
                            if masks[crate][slot] >> ch & 1:
                                samples["base"].setdefault(crate << 9 | slot << 5 | ch, []).append(
                                    float(raw[slot * 32 + ch]) - 127)
                msgs.append(message(t, cmos(crate, slots[crate], counts.tolist(),
                                            masks[crate]),
                                    base(crate, slots[crate], raw.tolist(), masks[crate])))
        return msgs, samples

    @defer.inlineCallbacks
    def run_with(self, n_workers):
        msgs, samples = self.scenario()
        workers = [self.worker() for _ in range(n_workers)]
        for i, m in enumerate(msgs):
            w = workers[i % n_workers]
            w.on_message(m)
            yield self.drain(w)  # records of a crate reach Redis in order
        for w in workers:
            yield self.flush(w)
        results = yield self.finalise(workers[0], T0 + 5 + C.FINALISE_DELAY)
        self.assertEqual(results[0][5], 1)
        self.assertEqual(results[1][5], 1)
        b = T0 // 5
        for name in ("cmos", "base"):
            means = {i: sum(v) / len(v) for i, v in samples[name].items()}
            self.assertGreater(len(means), 150)
            expected = finalise.reference(means, {i: 1 for i in means}, "mean")
            key = "ts:5:%d:%s" % (b, name)
            for suffix, want in zip(("", ":card:avg", ":card:max", ":crate:avg", ":crate:max"),
                                    expected):
                got = self.sync.hgetall(key + suffix)
                self.assertEqual(set(got), {str(k) for k in want}, name + suffix)
                for k, v in want.items():
                    self.assertLess(abs(float(got[str(k)]) - v), 1e-9 * max(1.0, abs(v)),
                                    (name + suffix, k))
        # the longer intervals received the same raw sums
        for H in (60, 86400):
            self.assertEqual(set(self.sync.hgetall("ts:%d:%d:cmos:len" % (H, T0 // H))),
                             {str(i) for i in samples["cmos"]})
        total = sum(w.stats.counters.get("cmos_rates", 0) for w in workers)
        self.assertEqual(total, sum(len(v) for v in samples["cmos"].values()))

    def test_one_worker(self):
        return self.run_with(1)

    def test_two_workers(self):
        return self.run_with(2)


class RulesTests(ConsumerTestBase):
    @defer.inlineCallbacks
    def test_cmos_rules(self):
        w = self.worker()
        masks = [0] * 16
        masks[3] = 0xFFFFFFFE  # channel 0 of slot 3 masked out
        t = T0 * NS
        counts0 = [100] * 32
        w.on_message(message(t, cmos(2, 1 << 3, counts0, masks)))
        counts1 = [100 + 50 * ch for ch in range(32)]
        counts1[1] = 0x80000000 | 500  # invalid
        counts1[2] = 40                # went down: wrap
        counts1[3] = 100               # unchanged
        w.on_message(message(t + 2 * NS, cmos(2, 1 << 3, counts1, masks)))
        yield self.drain(w)
        counts2 = [c + 1000 for c in counts1]
        counts2[1] = 600               # valid again: from the last valid count (100 at t)
        w.on_message(message(t + 4 * NS, cmos(2, 1 << 3, counts2, masks)))
        # Δt ≥ 10 s: no rate
        w.on_message(message(t + 14 * NS, cmos(2, 1 << 3, [c + 5 for c in counts2], masks)))
        yield self.flush(w)
        idx = lambda ch: 2 << 9 | 3 << 5 | ch
        got = self.sync.hgetall("ts:5:%d:cmos:sum" % (T0 // 5))
        lens = self.sync.hgetall("ts:5:%d:cmos:len" % (T0 // 5))
        self.assertNotIn(str(idx(0)), got)     # masked out
        self.assertEqual(float(got[str(idx(1))]), (600 - 100) / 4.0)
        self.assertEqual(lens[str(idx(1))], "1")
        self.assertEqual(float(got[str(idx(2))]), 500.0)  # 40 -> 1040 in 2 s
        self.assertEqual(float(got[str(idx(3))]), 500.0)  # only the second interval
        self.assertEqual(float(got[str(idx(4))]), 100.0 + 500.0)  # 200/2 + 1000/2
        self.assertEqual(lens[str(idx(4))], "2")
        self.assertFalse(self.sync.hgetall("ts:5:%d:cmos:sum" % (T0 // 5 + 2)))  # t+14
        self.assertEqual(w.stats.counters["cmos_invalid_counts"], 1)

    @defer.inlineCallbacks
    def test_more_than_eight_slots(self):
        w = self.worker()
        t = T0 * NS
        mask = 0b1111111111  # ten slots: only the first eight carry counts
        w.on_message(message(t, cmos(1, mask, [0] * 256)))
        w.on_message(message(t + NS, cmos(1, mask, [10 * (1 + k // 32) for k in range(256)])))
        yield self.flush(w)
        got = self.sync.hgetall("ts:5:%d:cmos:sum" % (T0 // 5))
        self.assertEqual(len(got), 256)
        self.assertEqual(float(got[str(1 << 9 | 7 << 5 | 31)]), 80.0)
        self.assertNotIn(str(1 << 9 | 8 << 5), got)
        self.assertEqual(w.stats.counters["cmos_truncated_records"], 2)
        self.assertEqual(w.stats.counters["cmos_truncated_slots"], 4)

    @defer.inlineCallbacks
    def test_corrupt_input_is_counted_never_fatal(self):
        w = self.worker()
        t = T0 * NS
        good = base(3, 1, [130] * 512)
        w.on_message([b"short"])                                 # no records
        w.on_message([b"1234567", good])                         # bad stamp
        w.on_message(message(1 * NS, good))                      # absurd stamp
        w.on_message(message(t, good[:-1]))                      # truncated record
        w.on_message(message(t, good + b"\0\0"))                 # stray bytes
        bad_len = struct.pack(">III", C.RECORD_CMOS, 10, 0) + bytes(10)
        w.on_message(message(t, bad_len))                        # wrong CMOS length
        w.on_message(message(t, struct.pack(">III", 0x58595A57, 0, 0)))  # unknown id
        bad_crate = bytearray(cmos(25, 1, [0] * 32))
        w.on_message(message(t, bytes(bad_crate)))
        w.on_message(message(t, good, good[:40]))                # one good, one truncated
        c = w.stats.counters
        self.assertEqual(c["corrupt_message_without_records"], 1)
        self.assertEqual(c["corrupt_bad_receipt_stamp"], 2)
        self.assertEqual(c["corrupt_truncated"], 3)
        self.assertEqual(c["corrupt_cmos_bad_length"], 1)
        self.assertEqual(c["corrupt_unknown_record"], 1)
        self.assertEqual(c["corrupt_cmos_bad_crate"], 1)
        self.assertEqual(c["records_base"], 1)
        yield self.flush(w)
        self.assertEqual(self.sync.command("HGET", "ts:5:%d:base:sum" % (T0 // 5),
                                           str(3 << 9 | 5)), "3")

    @defer.inlineCallbacks
    def test_idle_ticks_finalise(self):
        w = self.worker(kinds=("base",))
        w.on_message(message(T0 * NS, base(0, 1, [127 + 4] * 512)))
        self.clock.advance(1)  # the ticker flushes and tries to finalise
        yield self.flush(w)
        if w.finalising.get("base") is not None:
            yield w.finalising["base"]
        self.assertFalse(self.sync.hgetall("ts:5:%d:base" % (T0 // 5)))
        self.clock.advance(5 + C.FINALISE_DELAY - 1)  # nothing new: the tick still finalises
        yield w.finalising["base"]
        self.assertEqual(self.sync.hgetall("ts:5:%d:base:crate:avg" % (T0 // 5)), {"0": "4"})
        self.assertGreaterEqual(w.stats.counters["finalised_base"], 1)
        self.assertNotIn("finalised_cmos", w.stats.counters)

    @defer.inlineCallbacks
    def test_reading_pauses_while_behind(self):
        self.patch(data_consumer, "PAUSE_QUEUE", 3)
        self.patch(data_consumer, "RESUME_QUEUE", 1)
        w = self.worker()
        for k in range(5):  # the first goes out at once, the rest queue up
            w.on_message(message(T0 * NS + k * NS // 10, cmos(0, 1, [k] * 32)))
        self.assertTrue(w.link.paused)
        self.assertEqual(w.stats.counters["read_pauses"], 1)
        yield self.drain(w)
        self.assertFalse(w.link.paused)
        self.assertEqual(w.stats.counters["cmos_records_rated"], 5)

    @defer.inlineCallbacks
    def test_stop_flushes_the_open_second(self):
        w = self.worker()
        w.on_message(message(T0 * NS, cmos(0, 1, [1] * 32)))
        w.on_message(message(T0 * NS + NS // 2, cmos(0, 1, [11] * 32),
                             base(0, 1, [120] * 512)))
        yield w.stopService()
        self.assertTrue(self.workers[0].link is None)
        self.assertEqual(len(self.sync.hgetall("ts:5:%d:cmos:sum" % (T0 // 5))), 32)
        self.assertEqual(self.sync.command("HGET", "ts:5:%d:cmos:sum" % (T0 // 5), "0"), "20")
        self.assertEqual(self.sync.command("HGET", "ts:60:%d:base:sum" % (T0 // 60), "31"), "-7")


class OutageTests(ConsumerTestBase):
    def setUp(self):
        ConsumerTestBase.setUp(self)
        self.own = RedisServer().start()
        self.addCleanup(self.own.cleanup)

    @defer.inlineCallbacks
    def test_redis_away_then_back(self):
        w = self.worker(url=self.own.url)
        w.on_message(message(T0 * NS, cmos(0, 1, [0] * 32)))
        yield self.drain(w)
        self.own.stop()
        t = T0 * NS + NS
        w.on_message(message(t, cmos(0, 1, [100] * 32), base(0, 1, [130] * 512)))
        self.clock.advance(1)
        w.tick()
        self.assertTrue(w.queue or w.cmos_in_flight is not None)  # held, not lost
        self.own.start()
        # the held call goes through once Redis is back (or fails and is retried)
        for _ in range(100):
            yield self.drain(w)
            yield self.flush(w)
            if w.unsent is None and not w.queue and not any(len(s) for s in w.sums.values()):
                break
            self.clock.advance(data_consumer.RETRY_DELAY)
            yield task.deferLater(reactor, 0.1, lambda: None)
        check = self.own.command
        self.assertEqual(check("HGET", "ts:5:%d:base:sum" % (T0 // 5), "0"), "3")
        # the CMOS state was lost with the Redis restart (no persistence): no rate yet,
        # but the new pair is stored for the next record
        state = check("HGET", "cmos:state:0", "0").encode("utf-8", "surrogateescape")
        self.assertEqual(decode_slot_state(state)[0].tolist(), [100] * 32)


class ProcessNameTests(unittest.TestCase):
    """The stats name of a consumer worker (`minard:stats:<name>`)."""

    def test_under_supervisord_the_name_survives_restarts(self):
        options = {"port": 5557, "zmq": None}
        env = {"SUPERVISOR_PROCESS_NAME": "data-consumer-cmos-1"}
        self.assertEqual(data_consumer.process_name(options, env), "data-consumer-cmos-1")

    def test_elsewhere_port_and_pid(self):
        import os

        options = {"port": 5558, "zmq": None}
        self.assertEqual(data_consumer.process_name(options, {}),
                         "data-consumer-5558-%d" % os.getpid())
        odd = {"SUPERVISOR_PROCESS_NAME": "a b"}  # not a safe key part: ignored
        self.assertEqual(data_consumer.process_name(options, odd),
                         "data-consumer-5558-%d" % os.getpid())
