"""The data consumer against a real Redis: CMOS rates and base currents from real record
bytes, partials written once a second, data-driven finalisation and roll-ups, corrupt
input, Redis outages."""
import math
import struct

import numpy as np
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from minard import constants as C
from minard.services import data_consumer
from minard.services.data_consumer import DataConsumer, kinds_for
from minard.stats import Stats
from minard.store import keys
from minard.store.connection import connect
from minard.store.datastream import decode_slot_state
from tests.channel_support import assert_means, final, parts
from tests.support import RedisServer, RedisTestMixin, SyncRedis

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


class KindsTests(unittest.TestCase):
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

    def worker(self, kinds=("cmos", "base"), url=None, state_redis=None):
        redis = connect(url or self.redis_server.url, reply_timeout=3)
        self.connections.append(redis)
        w = DataConsumer("tcp://127.0.0.1:1", kinds, redis, Stats("test-consumer"),
                         self.clock, link_factory=FakeLink, state_redis=state_redis)
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
    def finalise(self, w):
        """One finalising round of every quantity of the worker, after any running one."""
        for f in list(w.finalisers.values()):
            if f.running is not None:
                yield f.running
        w.finalise()
        for f in w.finalisers.values():
            if f.running is not None:
                yield f.running

    def parts(self, name, interval, b):
        return parts(self.sync, name, interval, b)

    def final(self, name, interval, b):
        return final(self.sync, name, interval, b)

    def assert_final(self, got, means):
        assert_means(self, got, means)


class ValuesTests(ConsumerTestBase):
    """Known counts and currents in, the expected finalised buckets out."""

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
        b = T0 // 5
        # every worker has written, but none has passed the bucket's last second yet
        for w in workers:
            yield self.finalise(w)
        self.assertIsNone(self.final("cmos", 5, b))
        self.assertIsNone(self.final("base", 5, b))
        self.clock.advance(5 + data_consumer.GRACE)  # progress T0 + 5: the bucket is done
        for w in workers:
            yield self.flush(w)
        for w in workers:  # whichever claimed the bucket has finalised it
            yield self.finalise(w)
        for name in ("cmos", "base"):
            means = {i: sum(v) / len(v) for i, v in samples[name].items()}
            self.assertGreater(len(means), 150)
            self.assert_final(self.final(name, 5, b), means)
            # the longer intervals' partials hold the same sums and samples
            for H in (60, 86400):
                num, den = self.parts(name, H, T0 // H)
                self.assertEqual({int(i): int(den[i]) for i in np.flatnonzero(den)},
                                 {i: len(v) for i, v in samples[name].items()})
                for i, v in samples[name].items():
                    self.assertLess(abs(num[i] - sum(v)), 1e-9 * max(1.0, abs(sum(v))))
                self.assertIsNone(self.final(name, H, T0 // H))  # not over yet
        self.assertEqual(sum(w.stats.counters.get("finalised_cmos", 0) for w in workers), 1)
        self.assertEqual(sum(w.stats.counters.get("finalised_base", 0) for w in workers), 1)
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
        got, lens = self.parts("cmos", 5, T0 // 5)
        self.assertEqual(lens[idx(0)], 0)     # masked out
        self.assertEqual(got[idx(1)], (600 - 100) / 4.0)
        self.assertEqual(lens[idx(1)], 1)
        self.assertEqual(got[idx(2)], 500.0)  # 40 -> 1040 in 2 s
        self.assertEqual(got[idx(3)], 500.0)  # only the second interval
        self.assertEqual(lens[idx(3)], 1)
        self.assertEqual(got[idx(4)], 100.0 + 500.0)  # 200/2 + 1000/2
        self.assertEqual(lens[idx(4)], 2)
        self.assertEqual(int(lens.sum()), 28 + 31)  # t+2: 0 out, 1 invalid, 2 wrapped, 3 same
        self.assertFalse(self.sync.command("EXISTS", keys.channel_part("cmos", 5, T0 // 5 + 2)))
        self.assertEqual(w.stats.counters["cmos_invalid_counts"], 1)
        # and finalised, once the worker is past the bucket: the means
        self.clock.advance(5 + data_consumer.GRACE)
        yield self.flush(w)
        yield self.finalise(w)
        f = self.final("cmos", 5, T0 // 5)
        self.assertTrue(math.isnan(f["values"][idx(0)]))
        self.assertEqual(f["values"][idx(1)], 125.0)
        self.assertEqual(f["values"][idx(4)], 300.0)
        self.assertEqual(f["denominator"], 59)

    @defer.inlineCallbacks
    def test_more_than_eight_slots(self):
        w = self.worker()
        t = T0 * NS
        mask = 0b1111111111  # ten slots: only the first eight carry counts
        w.on_message(message(t, cmos(1, mask, [0] * 256)))
        w.on_message(message(t + NS, cmos(1, mask, [10 * (1 + k // 32) for k in range(256)])))
        yield self.flush(w)
        got, lens = self.parts("cmos", 5, T0 // 5)
        self.assertEqual(int(np.count_nonzero(lens)), 256)
        self.assertEqual(got[1 << 9 | 7 << 5 | 31], 80.0)
        self.assertEqual(lens[1 << 9 | 8 << 5], 0)
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
        got, lens = self.parts("base", 5, T0 // 5)
        self.assertEqual((got[3 << 9 | 5], lens[3 << 9 | 5]), (3.0, 1))
        self.assertEqual(int(lens.sum()), 32)

    @defer.inlineCallbacks
    def tick(self, w, seconds=1):
        """Let the worker's ticker run for `seconds`, each write and finalising done."""
        for _ in range(seconds):
            self.clock.advance(1)
            if w.channels.in_flight is not None:
                yield w.channels.in_flight
            yield self.finalise(w)

    @defer.inlineCallbacks
    def test_idle_ticks_finalise(self):
        """Nothing new arrives: the ticks move the progress on (GRACE behind the clock),
        and the bucket is finalised once the progress has passed its last second."""
        w = self.worker(kinds=("base",))
        w.on_message(message(T0 * NS, base(0, 1, [127 + 4] * 512)))
        yield self.tick(w, 3 + data_consumer.GRACE)  # progress T0 + 3
        self.assertEqual(w.channels["base"].progress, T0 + 3)
        self.assertIsNone(self.final("base", 5, T0 // 5))
        progress = self.sync.hgetall(keys.channel_writers("base"))[w._run]
        self.assertEqual(progress.split()[0], str(T0 + 3))
        yield self.tick(w)                           # progress T0 + 4: the bucket is done
        f = self.final("base", 5, T0 // 5)
        self.assertEqual(f["crate:avg"][0], 4.0)
        self.assertEqual(int(np.count_nonzero(~np.isnan(f["values"]))), 32)
        self.assertEqual(w.stats.counters["finalised_base"], 1)
        self.assertNotIn("finalised_cmos", w.stats.counters)
        self.assertEqual(self.sync.hgetall(keys.channel_writers("cmos")), {})

    @defer.inlineCallbacks
    def test_cmos_records_waiting_for_their_rates_hold_the_progress_back(self):
        """A bucket is not finalised while a CMOS record of it waits for the state
        script, however far the clock has gone: its rate would be missing."""
        w = self.worker(kinds=("cmos",))
        w.on_message(message(T0 * NS, cmos(0, 1, [100] * 32)))
        yield self.drain(w)
        self.clock.advance(3)
        held = w.pump_cmos
        w.pump_cmos = lambda: None  # the state script does not answer for a while
        w.on_message(message((T0 + 3) * NS, cmos(0, 1, [400] * 32)))
        yield self.tick(w, 20)
        self.assertEqual(w.progress(), T0 + 2)
        self.assertIsNone(self.final("cmos", 5, T0 // 5))
        w.pump_cmos = held
        yield self.drain(w)
        yield self.tick(w)
        f = self.final("cmos", 5, T0 // 5)
        self.assertEqual(f["values"][:32].tolist(), [100.0] * 32)
        self.assertTrue(np.isnan(f["values"][32:]).all())

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
        got, lens = self.parts("cmos", 5, T0 // 5)
        self.assertEqual(np.flatnonzero(lens).tolist(), list(range(32)))
        self.assertEqual(got[0], 20.0)
        got, lens = self.parts("base", 60, T0 // 60)
        self.assertEqual((got[31], lens[31]), (-7.0, 1))
        # it stopped cleanly: the other workers need not wait for it
        self.assertEqual(self.sync.hgetall(keys.channel_writers("cmos")), {})
        self.assertEqual(self.sync.hgetall(keys.channel_writers("base")), {})


class OutageTests(ConsumerTestBase):
    def setUp(self):
        ConsumerTestBase.setUp(self)
        self.own = RedisServer().start()

    @defer.inlineCallbacks
    def tearDown(self):
        # trial runs cleanups before tearDown: this Redis must outlive the workers' stop
        yield ConsumerTestBase.tearDown(self)
        self.own.cleanup()

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
            try:
                yield self.flush(w)
            except Exception:
                pass
            if not w.queue and not w.channels.unwritten():
                break
            self.clock.advance(data_consumer.RETRY_DELAY)
            yield task.deferLater(reactor, 0.1, lambda: None)
        check = self.own.command
        got, lens = parts(SyncRedis(self.own.port), "base", 5, T0 // 5)
        self.assertEqual((got[0], lens[0]), (3.0, 1))
        # the CMOS state was lost with the Redis restart (no persistence): no rate yet,
        # but the new pair is stored for the next record
        state = check("HGET", "cmos:state:0", "0").encode("utf-8", "surrogateescape")
        self.assertEqual(decode_slot_state(state)[0].tolist(), [100] * 32)

    @defer.inlineCallbacks
    def test_state_calls_wait_out_a_stalled_redis(self):
        """Redis frozen with a CMOS record's state call in flight: the call, on its own
        connection without a reply timeout, is answered when Redis wakes up. (Timed out
        and retried, it would be applied twice: the retry finds the record's own pair
        and the record gets no rate.)"""
        state = connect(self.own.url, reply_timeout=None)
        self.connections.append(state)
        w = self.worker(kinds=("cmos",), url=self.own.url, state_redis=state)
        w.on_message(message(T0 * NS, cmos(0, 1, [100] * 32)))
        yield self.drain(w)
        self.own.pause()
        try:
            w.on_message(message(T0 * NS + NS, cmos(0, 1, [300] * 32)))
            d = w.cmos_in_flight
            self.assertIsNotNone(d)
            # longer than the other connection's reply timeout (3 s)
            yield task.deferLater(reactor, 3.5, lambda: None)
            self.assertIs(w.cmos_in_flight, d)
        finally:
            self.own.resume()
        yield d
        self.assertNotIn("cmos_state_errors", w.stats.counters)
        yield self.flush(w)
        got, lens = parts(SyncRedis(self.own.port), "cmos", 5, T0 // 5)
        self.assertEqual(got[:32].tolist(), [200.0] * 32)
        self.assertEqual(lens[:32].tolist(), [1] * 32)

    @defer.inlineCallbacks
    def test_long_outage_is_bounded_and_counted(self):
        """Redis away for a minute of base records: the write waits for the
        reconnection, what waits in memory stays bounded (here 3 buckets of 5 s), the
        oldest samples are dropped and counted, the rest arrive exactly."""
        w = self.worker(kinds=("base",), url=self.own.url)
        w.channels["base"].max_open = 3
        self.own.stop()
        self.clock.advance(1)  # the first write (progress only) waits for the reconnection
        self.assertIsNotNone(w.channels.in_flight)
        samples = {}
        for s in range(5, 65):
            w.on_message(message((T0 + s) * NS, base(0, 1, [127 + s % 7] * 512)))
            samples.setdefault((T0 + s) // 5, []).append(s % 7)
            self.clock.advance(1)
            self.assertLessEqual(len(w.channels["base"].delta), 3)
        kept = sorted(samples)[-3:]
        dropped = 32 * sum(len(v) for b, v in samples.items() if b not in kept)
        # counted by the writer now, in the stats with the next write (Redis is away)
        self.assertEqual(w.channels["base"].dropped, dropped)
        self.own.start()
        sync = SyncRedis(self.own.port)
        for _ in range(100):
            self.clock.advance(1)
            if w.channels.in_flight is not None:
                try:
                    yield w.channels.in_flight
                except Exception:
                    pass
            yield self.finalise(w)
            if final(sync, "base", 5, kept[-1]) is not None:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        for b in sorted(samples):
            f = final(sync, "base", 5, b)
            if b in kept:
                mean = sum(samples[b]) / len(samples[b])
                self.assertEqual(f["values"][:32].tolist(), [float(np.float32(mean))] * 32, b)
                self.assertEqual(f["denominator"], 32 * len(samples[b]))
            else:
                self.assertIsNone(f, b)
        self.assertEqual(w.stats.counters["dropped_base_samples"], dropped)
        self.flushLoggedErrors()


class RetryOrderTests(unittest.TestCase):
    """Failed state-script calls go back in receipt order."""

    class State:
        def __init__(self):
            self.calls = []

        def rates(self, batch):
            d = defer.Deferred()
            self.calls.append(d)
            return d

    def test_calls_lost_with_their_connection_are_retried_oldest_first(self):
        clock = task.Clock()
        clock.advance(T0)
        w = DataConsumer("tcp://127.0.0.1:1", ("cmos",), None, Stats("order"), clock,
                         link_factory=FakeLink)
        w.state = self.State()
        for k in range(4):
            w.on_message(message((T0 + k) * NS, cmos(0, 1, [100 * k] * 32)))
        self.assertEqual(len(w.state.calls), data_consumer.CMOS_IN_FLIGHT)
        # the connection goes: every call on it fails, oldest first
        for d in list(w.state.calls):
            d.errback(ConnectionError("Lost connection"))
        self.assertEqual([ns for _, ns, *_ in w.queue], [(T0 + k) * NS for k in range(4)])
        clock.advance(10)
        self.assertEqual(w.progress(), T0 - 1)  # their bucket waits for their rates
        self.flushLoggedErrors()

    def test_stop_does_not_wait_for_ever_for_a_state_call(self):
        """A state call has no reply timeout (it waits out a stalled Redis); SIGTERM
        still ends within STOP_TIMEOUT, the record kept (and reported) unrated."""
        clock = task.Clock()
        clock.advance(T0)
        w = DataConsumer("tcp://127.0.0.1:1", ("cmos",), None, Stats("stop"), clock,
                         link_factory=FakeLink)
        w.state = self.State()
        w.startService()
        w.on_message(message(T0 * NS, cmos(0, 1, [1] * 32)))
        self.assertIsNotNone(w.cmos_in_flight)
        stopped = w.stopService()
        for _ in range(int(data_consumer.STOP_TIMEOUT / 0.2) + 5):
            clock.advance(0.2)
        self.assertTrue(stopped.called)
        self.assertEqual(len(w.queue), 1)


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
