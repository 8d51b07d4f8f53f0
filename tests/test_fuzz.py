"""Property-based tests (hypothesis) of the decoders not fuzzed next to their own tests.

tests/test_wire_controlhost.py, test_wire_sno.py, test_wire_datastream.py and
test_web_timeparse.py already fuzz "any bytes never raise anything unexpected". Here:
what those leave out - that nothing received intact is lost when a stream turns corrupt,
that records survive any split, the ZeroMQ receipt stamp, per-record accounting of the
SNO decoder under mutation of real records, the data-stream record splitter, the CMOS and
BASE payload decoders against their own encoders, and the HTTP query parameters and form
fields of both web sites (answers are 200/400/404/413, never 500).
"""
import struct

from hypothesis import HealthCheck, assume, given, settings, strategies as st
from twisted.trial import unittest

from minard import zmqlink
from minard.constants import MAX_RECORD_SIZE, RECORD_PMT
from minard.wire import controlhost, datastream as ds, sno
from tests.test_wire_sno import hand_built

TAGS = st.sampled_from([b"RAWDATA", b"RECHDR", b"Born", b"Died", b"X"])


def caspur(tag, payload):
    return tag.ljust(8, b"\x00") + struct.pack(">i", len(payload)) + payload


def pieces(data, cuts):
    cuts = sorted(c % (len(data) + 1) for c in cuts)
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


class ControlHostProperties(unittest.TestCase):

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(TAGS, st.binary(max_size=80)), max_size=8),
           st.integers(-2 ** 31, -1) | st.integers(301, 2 ** 31 - 1),
           st.binary(max_size=40), st.lists(st.integers(0, 2000), max_size=4))
    def test_frames_before_a_lie_are_kept(self, messages, bad_size, after, cuts):
        """Whatever the split, every frame complete before a size lie comes out, either
        from feed() or in CorruptStream.frames; nothing after it does."""
        good = b"".join(caspur(t, p) for t, p in messages)
        stream = good + b"RAWDATA\x00" + struct.pack(">i", bad_size) + after
        decoder = controlhost.FrameDecoder(controlhost.CASPUR, max_size=300)
        got = []
        with self.assertRaises(controlhost.CorruptStream) as cm:
            for piece in pieces(stream, cuts) + [b""]:
                got += decoder.feed(piece)
        got += cm.exception.frames
        self.assertEqual(got, [(t.ljust(8, b"\x00"), p) for t, p in messages])

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(TAGS, st.binary(max_size=300)), max_size=6),
           st.lists(st.integers(0, 3000), max_size=6), st.sampled_from(["caspur", "ligier"]))
    def test_any_split_any_dialect(self, messages, cuts, dialect_name):
        dialect = controlhost.DIALECTS[dialect_name]
        stream = b"".join(dialect.frame(t, p) for t, p in messages)
        decoder = controlhost.FrameDecoder(dialect)
        got = []
        for piece in pieces(stream, cuts):
            got += decoder.feed(piece)
        self.assertEqual(got, [(t.ljust(8, b"\x00"), p) for t, p in messages])
        self.assertEqual(decoder.buffered, 0)


class StampProperties(unittest.TestCase):

    @given(st.integers(-2 ** 63, 2 ** 63 - 1))
    def test_round_trip(self, ns):
        self.assertEqual(zmqlink.unstamp(zmqlink.stamp(ns)), ns)

    @given(st.binary().filter(lambda b: len(b) != 8))
    def test_wrong_length_is_none(self, frame):
        self.assertIsNone(zmqlink.unstamp(frame))


EVENT = st.tuples(st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 16 - 1),
                  st.integers(0, 2 ** 24 - 1), st.integers(0, 2 ** 27 - 1),
                  st.lists(st.tuples(st.integers(0, 19), st.integers(0, 15),
                                     st.integers(0, 31), st.integers(0, 2047)), max_size=5))


def mutate(record, kind, position, value):
    """A real record damaged in one of the ways the long fuzz run uses."""
    if kind == "truncate":
        return record[:position % (len(record) + 1)]
    if kind == "flip":
        i = position % len(record)
        return record[:i] + bytes([record[i] ^ (1 << (value % 8))]) + record[i + 1:]
    if kind == "nhit_lie":   # NPmtHit larger than the hits that follow
        nhit = struct.unpack(">H", record[26:28])[0]
        return record[:26] + struct.pack(">H", min(0xFFFF, nhit + 1 + value % 100)) + record[28:]
    if kind == "garbage":
        return bytes((position * 31 + value * 7 + i) % 256 for i in range(value % 200))
    raise ValueError(kind)


class SnoProperties(unittest.TestCase):

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(EVENT, st.sampled_from(["none", "truncate", "flip", "nhit_lie",
                                                       "garbage"]),
                              st.integers(0, 10 ** 6), st.integers(0, 255)),
                    min_size=1, max_size=12))
    def test_mutated_records_accounted_one_by_one(self, items):
        """Every record is exactly one of: an event, another record, or a counted corrupt
        record; intact events decode exactly as they were built."""
        records, intact = [], []
        for event, kind, position, value in items:
            raw = hand_built(*event)
            if kind != "none":
                raw = mutate(raw, kind, position, value)
            records.append(raw)
            intact.append(kind == "none")
        batch = sno.decode_batch(records)
        per_record = sum(v for k, v in batch.corrupt.items() if k != "hit_bad_crate")
        self.assertEqual(batch.n_events + batch.n_other + per_record, len(records))
        self.assertGreaterEqual(batch.n_events, sum(intact))
        self.assertTrue((batch.channels >= 0).all() and (batch.channels < 10240).all())
        self.assertTrue((batch.trig < 2 ** 27).all())
        # records whose damage is detectable by structure alone are never events
        for raw, (event, kind, _, _) in zip(records, items):
            if kind == "nhit_lie":
                single = sno.decode_batch([raw])
                self.assertEqual(single.corrupt, {"pmt_truncated": 1})
        if all(intact):
            self.assertEqual(batch.trig.tolist(), [e[3] for e, *_ in items])
            self.assertEqual(batch.nhit.tolist(), [len(e[4]) for e, *_ in items])

    @settings(max_examples=100, deadline=None)
    @given(st.lists(EVENT, min_size=1, max_size=8), st.integers(0, 3))
    def test_any_alignment_same_answer(self, events, shift):
        """Records that do not start on a word boundary decode the same (slow path)."""
        records = [hand_built(*e) for e in events]
        aligned = sno.decode_batch(records)
        shifted = sno.decode_batch([b"\x00" * shift] + records if shift else records)
        self.assertEqual(aligned.trig.tolist(), shifted.trig.tolist())
        self.assertEqual(aligned.charge.tolist(), shifted.charge.tolist())
        self.assertEqual(aligned.channels.tolist(), shifted.channels.tolist())
        self.assertEqual(aligned.last, shifted.last)


PAYLOAD_IDS = st.sampled_from([ds.record_id("CMOS"), ds.record_id("BASE"),
                               ds.record_id("SCmd"), ds.record_id("SRsp"), 0xFFFFFFFF, 0])


class DataStreamProperties(unittest.TestCase):

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(PAYLOAD_IDS, st.integers(0, 2 ** 32 - 1), st.binary(max_size=200)),
                    max_size=6),
           st.integers(MAX_RECORD_SIZE + 1, 2 ** 32 - 1), st.binary(max_size=40),
           st.lists(st.integers(0, 3000), max_size=4))
    def test_frames_before_an_oversize_length_are_kept(self, records, bad, after, cuts):
        good = b"".join(ds.encode_record(r, v, p) for r, v, p in records)
        stream = good + struct.pack(">III", ds.record_id("CMOS"), bad, 0) + after
        decoder = ds.FrameDecoder()
        got = []
        with self.assertRaises(ds.CorruptStream) as cm:
            for piece in pieces(stream, cuts) + [b""]:
                got += decoder.feed(piece)
        got += getattr(cm.exception, "frames", [])
        self.assertEqual([(f.record_id, f.version, f.payload) for f in got], records)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=3000))
    def test_split_records_total(self, data):
        """split_records: records, or CorruptRecord with a kind; never anything else."""
        try:
            records = ds.split_records(data)
        except ds.CorruptRecord as e:
            self.assertTrue(e.kind)
            return
        self.assertEqual(b"".join(records), data)
