"""Data-server framing, subscription and CMOS/BASE payloads (SPEC §2.4), from real bytes."""
import struct

import numpy as np
from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from minard import constants as C
from minard.wire import datastream as ds


def cmos_bytes(crate, slot_mask, channel_masks, counts, error=0):
    """A CMOS payload laid out by hand from the SPEC table (not with the module)."""
    counts = list(counts) + [0] * (256 - len(counts))
    return (struct.pack(">II", crate, slot_mask)
            + struct.pack(">16I", *channel_masks)
            + struct.pack(">I", error)
            + struct.pack(">256I", *counts)
            + struct.pack(">16I", *([0xAAAA] * 16)))


def base_bytes(crate, slot_mask, channel_masks, raw):
    return (struct.pack(">II", crate, slot_mask)
            + struct.pack(">16I", *channel_masks)
            + struct.pack(">I", 0)
            + bytes(raw) + bytes([1] * 512))


def message(rid, version, payload):
    return struct.pack(">III", rid, len(payload), version) + payload


class FramingTests(unittest.TestCase):
    def stream(self):
        cm = cmos_bytes(3, 0b101, [0xFFFFFFFF] * 16, range(64))
        return [
            (C.RECORD_SRSP, C.RECORD_SCMD, b"OK\0"),
            (C.RECORD_CMOS, 0, cm),
            (C.RECORD_BASE, 7, base_bytes(1, 1, [1] * 16, [127] * 512)),
            (0x41424344, 0, b""),
        ]

    def test_split_at_every_byte(self):
        expected = self.stream()
        data = b"".join(message(*m) for m in expected)
        self.assertEqual(len(data), 4 * 12 + 3 + 1164 + 1100)
        for cut in range(len(data) + 1):
            decoder = ds.FrameDecoder()
            frames = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
            self.assertEqual([tuple(f) for f in frames], expected, "cut at %d" % cut)
            self.assertEqual(decoder.buffered, 0)

    def test_byte_by_byte(self):
        expected = self.stream()
        data = b"".join(message(*m) for m in expected)
        decoder = ds.FrameDecoder()
        frames = []
        for i in range(len(data)):
            frames += decoder.feed(data[i:i + 1])
        self.assertEqual([tuple(f) for f in frames], expected)

    def test_oversized_record_is_corrupt_stream(self):
        decoder = ds.FrameDecoder()
        data = struct.pack(">III", C.RECORD_CMOS, C.MAX_RECORD_SIZE + 1, 0)
        self.assertRaises(ds.CorruptStream, decoder.feed, data)
        # and it stays broken: the connection must be dropped
        self.assertRaises(ds.CorruptStream, decoder.feed, b"")

    def test_max_size_record_is_fine(self):
        decoder = ds.FrameDecoder()
        payload = bytes(C.MAX_RECORD_SIZE)
        frames = decoder.feed(message(C.RECORD_CMOS, 0, payload))
        self.assertEqual(len(frames[0].payload), C.MAX_RECORD_SIZE)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
    def test_fuzz_never_raises_anything_else(self, data, cuts):
        decoder = ds.FrameDecoder(max_size=200)
        pieces, last = [], 0
        for c in sorted(cuts):
            pieces.append(data[last:c])
            last = c
        pieces.append(data[last:])
        total = 0
        try:
            for p in pieces:
                for f in decoder.feed(p):
                    self.assertLessEqual(len(f.payload), 200)
                    total += 12 + len(f.payload)
        except ds.CorruptStream:
            return
        self.assertEqual(total + decoder.buffered, len(data))

    def test_split_records(self):
        data = message(C.RECORD_CMOS, 0, b"abc") + message(C.RECORD_BASE, 1, b"")
        self.assertEqual([tuple(r) for r in ds.split_records(data)],
                         [(C.RECORD_CMOS, 0, b"abc"), (C.RECORD_BASE, 1, b"")])
        for cut in range(1, len(data)):
            if cut == 15:
                continue  # a whole first record
            e = self.assertRaises(ds.CorruptRecord, ds.split_records, data[:cut])
            self.assertEqual(e.kind, "truncated")


class SubscriptionTests(unittest.TestCase):
    def test_subscribe_bytes(self):
        self.assertEqual(
            ds.encode_subscribe([C.RECORD_CMOS, C.RECORD_BASE]),
            b"SCmd" + b"\0\0\0\x08" + b"\0\0\0\0" + b"CMOSBASE")

    def test_decode_subscribe(self):
        self.assertEqual(ds.decode_subscribe(b"CMOSBASE"), [C.RECORD_CMOS, C.RECORD_BASE])
        self.assertRaises(ds.CorruptRecord, ds.decode_subscribe, b"CMOSBAS")

    def test_response(self):
        self.assertEqual(ds.encode_response("OK"), b"SRsp\0\0\0\x03SCmdOK\0")
        self.assertTrue(ds.response_ok(b"OK\0"))
        self.assertTrue(ds.response_ok(b"OK\0junk"))
        self.assertFalse(ds.response_ok(b"unknown record type\0"))
        self.assertEqual(ds.decode_response(b"too many subscriptions\0"),
                         "too many subscriptions")
        self.assertEqual(ds.decode_response(b"\xff\x01"), "\ufffd\x01")

    def test_names(self):
        self.assertEqual(ds.record_name(C.RECORD_CMOS), "CMOS")
        self.assertEqual(ds.record_name(1), "0x00000001")
        self.assertEqual(ds.record_id("BASE"), C.RECORD_BASE)


class CmosTests(unittest.TestCase):
    def test_two_slots(self):
        masks = [0] * 16
        masks[2] = 0xFFFFFFFF
        masks[9] = 0x00000005  # channels 0 and 2 of slot 9
        counts = list(range(1000, 1032)) + [5, 6, 0x80000007] + list(range(29))
        rec = ds.decode_cmos(cmos_bytes(4, (1 << 2) | (1 << 9), masks, counts))
        self.assertEqual(rec.crate, 4)
        self.assertEqual(rec.truncated_slots, 0)
        self.assertEqual(len(rec.index), 64)
        self.assertEqual(list(rec.index[:32]), [4 << 9 | 2 << 5 | c for c in range(32)])
        self.assertEqual(list(rec.index[32:]), [4 << 9 | 9 << 5 | c for c in range(32)])
        self.assertEqual(list(rec.count[:32]), list(range(1000, 1032)))
        self.assertEqual(int(rec.count[34]), 0x80000007)
        self.assertFalse(rec.valid[34])
        self.assertEqual(int(rec.valid.sum()), 63)
        self.assertTrue(rec.masked_in[:32].all())
        self.assertEqual([bool(x) for x in rec.masked_in[32:35]], [True, False, True])
        self.assertEqual(int(rec.masked_in[32:].sum()), 2)

    def test_more_than_eight_slots(self):
        counts = [s * 100 + c for s in range(8) for c in range(32)]
        rec = ds.decode_cmos(cmos_bytes(0, 0b1111111111, [0xFFFFFFFF] * 16, counts))
        self.assertEqual(rec.truncated_slots, 2)
        self.assertEqual(len(rec.index), 256)
        self.assertEqual(int(rec.index[-1]), 7 << 5 | 31)
        self.assertEqual(int(rec.count[-1]), 731)

    def test_empty_slot_mask(self):
        rec = ds.decode_cmos(cmos_bytes(0, 0, [0xFFFFFFFF] * 16, []))
        self.assertEqual(len(rec.index), 0)

    def test_corrupt(self):
        good = cmos_bytes(1, 1, [1] * 16, [1])
        for bad, kind in [(good[:-1], "bad_length"), (good + b"\0", "bad_length"),
                          (b"", "bad_length"),
                          (struct.pack(">I", 20) + good[4:], "bad_crate"),
                          (good[:4] + struct.pack(">I", 1 << 16) + good[8:], "bad_slot_mask")]:
            e = self.assertRaises(ds.CorruptRecord, ds.decode_cmos, bad)
            self.assertEqual(e.kind, kind)

    def test_encode_round_trip(self):
        masks = [0xFFFF0000 + i for i in range(16)]
        counts = np.arange(256) * 3
        payload = ds.encode_cmos(7, 0b11, masks, counts)
        self.assertEqual(payload, cmos_bytes(7, 0b11, masks, counts, error=0)[:1100]
                         + bytes(64))


class BaseTests(unittest.TestCase):
    def test_currents_by_slot_number(self):
        raw = [0] * 512
        raw[5 * 32 + 0] = 127
        raw[5 * 32 + 1] = 200
        raw[5 * 32 + 3] = 0
        raw[6 * 32 + 1] = 130  # slot 6 absent
        raw[12 * 32 + 31] = 255
        masks = [0] * 16
        masks[5] = 0b1011
        masks[6] = 0xFFFFFFFF
        masks[12] = 1 << 31
        rec = ds.decode_base(base_bytes(2, (1 << 5) | (1 << 12), masks, raw))
        self.assertEqual(rec.crate, 2)
        base = 2 << 9
        self.assertEqual(list(rec.index), [base | 5 << 5 | 0, base | 5 << 5 | 1,
                                           base | 5 << 5 | 3, base | 12 << 5 | 31])
        self.assertEqual(list(rec.current), [0.0, 73.0, -127.0, 128.0])

    def test_corrupt(self):
        good = base_bytes(1, 1, [1] * 16, [0] * 512)
        self.assertEqual(ds.decode_base(good).crate, 1)
        e = self.assertRaises(ds.CorruptRecord, ds.decode_base, good[:-3])
        self.assertEqual(e.kind, "bad_length")
        e = self.assertRaises(ds.CorruptRecord, ds.decode_base, struct.pack(">I", 99) + good[4:])
        self.assertEqual(e.kind, "bad_crate")

    def test_encode(self):
        raw = [i % 256 for i in range(512)]
        masks = list(range(16))
        self.assertEqual(ds.encode_base(3, 0xFFFF, masks, raw),
                         base_bytes(3, 0xFFFF, masks, raw)[:588] + bytes(512))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=0, max_size=1200))
    def test_fuzz_payloads(self, data):
        for decode in (ds.decode_cmos, ds.decode_base):
            try:
                rec = decode(data)
            except ds.CorruptRecord:
                continue
            self.assertTrue((rec.index < C.N_CHANNELS).all())
