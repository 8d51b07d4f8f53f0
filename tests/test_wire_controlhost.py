"""ControlHost framing: real bytes built from SPEC §2.1, split at every byte."""
import struct

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from minard.wire.controlhost import CASPUR, LIGIER, CorruptStream, FrameDecoder, tag_bytes


def caspur(tag, payload):
    return tag.ljust(8, b"\x00") + struct.pack(">i", len(payload)) + payload


def ligier(tag, payload):
    return tag.ljust(8, b"\x00") + struct.pack(">i", len(payload)) + b"\x00" * 4 + payload


MESSAGES = [(b"RAWDATA", b"\x01" * 56), (b"RECHDR", b""), (b"Born", b"abc"),
            (b"RAWDATA", bytes(range(200)))]


class FramingTests(unittest.TestCase):
    def test_encode_matches_spec(self):
        self.assertEqual(CASPUR.frame("RAWDATA", b"xy"), caspur(b"RAWDATA", b"xy"))
        self.assertEqual(LIGIER.frame("RAWDATA", b"xy"), ligier(b"RAWDATA", b"xy"))

    def test_handshake(self):
        self.assertEqual(
            CASPUR.client_handshake("w RAWDATA w RECHDR", "minard"),
            caspur(b"Subscrib", b"w RAWDATA w RECHDR") + caspur(b"Always", b"")
            + caspur(b"MyId", b"minard"))
        self.assertEqual(
            LIGIER.client_handshake("w RAWDATA", "minard"),
            ligier(b"_Subscri", b"w RAWDATA") + ligier(b"_Always", b"")
            + ligier(b"_MyId", b"minard"))

    def check_every_split(self, dialect, encode):
        stream = b"".join(encode(t, p) for t, p in MESSAGES)
        expected = [(t.ljust(8, b"\x00"), p) for t, p in MESSAGES]
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1, 7):
                d = FrameDecoder(dialect)
                got = d.feed(stream[:i]) + d.feed(stream[i:j]) + d.feed(stream[j:])
                self.assertEqual(got, expected, (i, j))
                self.assertEqual(d.buffered, 0)

    def test_every_split_caspur(self):
        self.check_every_split(CASPUR, caspur)

    def test_every_split_ligier(self):
        self.check_every_split(LIGIER, ligier)

    def test_byte_by_byte(self):
        stream = b"".join(caspur(t, p) for t, p in MESSAGES)
        d = FrameDecoder(CASPUR)
        got = []
        for i in range(len(stream)):
            got += d.feed(stream[i:i + 1])
        self.assertEqual([p for _, p in got], [p for _, p in MESSAGES])

    def test_negative_size_is_corrupt(self):
        d = FrameDecoder(CASPUR)
        self.assertRaises(CorruptStream, d.feed, b"RAWDATA\x00" + struct.pack(">i", -1))

    def test_oversize_is_corrupt(self):
        d = FrameDecoder(CASPUR)
        good = caspur(b"RAWDATA", b"x" * 130000)
        self.assertEqual(len(d.feed(good)), 1)
        self.assertRaises(CorruptStream, d.feed, b"RAWDATA\x00" + struct.pack(">i", 130001))
        self.assertRaises(CorruptStream, d.feed, b"")

    def test_tag_bytes(self):
        self.assertEqual(tag_bytes("RAWDATA"), b"RAWDATA\x00")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
    def test_fuzz_never_crashes(self, data, cuts):
        """Any bytes, any split: frames or CorruptStream, never another exception."""
        d = FrameDecoder(CASPUR, max_size=300)
        cuts = sorted(cuts)
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        try:
            for piece in pieces:
                for tag, payload in d.feed(piece):
                    self.assertEqual(len(tag), 8)
                    self.assertLessEqual(len(payload), 300)
        except CorruptStream:
            pass
