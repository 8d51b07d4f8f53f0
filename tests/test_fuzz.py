"""Property-based tests (hypothesis) of the decoders not fuzzed next to their own tests.

tests/test_wire_controlhost.py, test_wire_sno.py, test_wire_datastream.py and
test_web_timeparse.py already fuzz "any bytes never raise anything unexpected". Here:
what those leave out - that nothing received intact is lost when a stream turns corrupt,
that records survive any split, the ZeroMQ receipt stamp, per-record accounting of the
SNO decoder under mutation of real records, the data-stream record splitter, the CMOS and
BASE payload decoders against their own encoders, and the HTTP query parameters and form
fields of both web sites (answers are 200/400/404/413, never 500).
"""
import http.client as http_client
import json
import struct
from urllib.parse import quote_from_bytes, urlencode

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import reactor, threads
from twisted.trial import unittest

from minard import zmqlink
from minard.constants import MAX_RECORD_SIZE
from minard.wire import controlhost, datastream as ds, sno
from tests.logserver_support import LogServerMixin, basic
from tests.test_aggregate_events import pmt_hits
from tests.test_wire_sno import hand_built
from tests.web_support import SiteTestMixin

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
            # nhit: the PMT hits, not the FEC/D's (SPEC §3)
            self.assertEqual(batch.nhit.tolist(), [len(pmt_hits(e[4])) for e, *_ in items])

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


# -- CMOS and BASE payloads against SPEC §2.4, read field by field here --------------------

U32 = st.integers(0, 2 ** 32 - 1)
MASKS = st.lists(U32, min_size=16, max_size=16)


def cmos_payload(crate, slot_mask, masks, counts, error=0, busy=(0,) * 16):
    return (struct.pack(">II16II", crate, slot_mask, *masks, error)
            + struct.pack(">256I", *counts) + struct.pack(">16I", *busy))


def base_payload(crate, slot_mask, masks, raw, error=0, busy=bytes(512)):
    return struct.pack(">II16II", crate, slot_mask, *masks, error) + raw + busy


def cmos_expected(crate, slot_mask, masks, counts):
    present = [s for s in range(16) if slot_mask >> s & 1]
    rows = []
    for k, slot in enumerate(present[:8]):
        for ch in range(32):
            count = counts[k * 32 + ch]
            rows.append((crate << 9 | slot << 5 | ch, count, not count >> 31,
                         bool(masks[slot] >> ch & 1)))
    return rows, max(0, len(present) - 8)


class PayloadProperties(unittest.TestCase):

    @settings(max_examples=150, deadline=None)
    @given(st.integers(0, 19), st.integers(0, 0xFFFF), MASKS,
           st.lists(U32, min_size=256, max_size=256), U32)
    def test_cmos_matches_spec(self, crate, slot_mask, masks, counts, error):
        rec = ds.decode_cmos(cmos_payload(crate, slot_mask, masks, counts, error))
        rows, truncated = cmos_expected(crate, slot_mask, masks, counts)
        self.assertEqual(rec.crate, crate)
        self.assertEqual(rec.truncated_slots, truncated)
        self.assertEqual(list(zip(rec.index.tolist(), rec.count.tolist(), rec.valid.tolist(),
                                  rec.masked_in.tolist())), rows)

    @settings(max_examples=150, deadline=None)
    @given(st.integers(0, 19), st.integers(0, 0xFFFF), MASKS,
           st.binary(min_size=512, max_size=512))
    def test_base_matches_spec(self, crate, slot_mask, masks, raw):
        rec = ds.decode_base(base_payload(crate, slot_mask, masks, raw))
        expected = [(crate << 9 | s << 5 | ch, raw[s * 32 + ch] - 127)
                    for s in range(16) if slot_mask >> s & 1
                    for ch in range(32) if masks[s] >> ch & 1]
        self.assertEqual(list(zip(rec.index.tolist(), rec.current.tolist())), expected)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(["cmos", "base"]), st.integers(0, 19), st.integers(0, 0xFFFF),
           MASKS, st.integers(0, 1163), st.integers(1, 255), st.integers(-40, 40))
    def test_damaged_payload_is_a_counted_kind_or_in_range(self, kind, crate, slot_mask,
                                                          masks, position, xor, resize):
        """A valid payload with a byte changed and/or its length changed: decoded with
        every index in range, or a CorruptRecord of a named kind - nothing else."""
        if kind == "cmos":
            good = cmos_payload(crate, slot_mask, masks, [1] * 256)
            decode = ds.decode_cmos
        else:
            good = base_payload(crate, slot_mask, masks, bytes(range(256)) * 2)
            decode = ds.decode_base
        i = position % len(good)
        bad = good[:i] + bytes([good[i] ^ xor]) + good[i + 1:]
        bad = bad[:len(bad) + resize] if resize < 0 else bad + b"\xff" * resize
        try:
            rec = decode(bad)
        except ds.CorruptRecord as e:
            self.assertIn(e.kind, ("bad_length", "bad_crate", "bad_slot_mask"))
            if resize:
                self.assertEqual(e.kind, "bad_length")
            return
        self.assertEqual(resize, 0)
        self.assertTrue(0 <= rec.crate < 20)
        self.assertTrue((rec.index < 10240).all())
        self.assertTrue(((rec.index >> 9) == rec.crate).all())


# -- HTTP query parameters and forms, over real HTTP -----------------------------------------

HOSTILE = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "builder/../builder",
           "<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "\x00", "%00",
           "9" * 400, "-" + "9" * 30, "1e308", "nan", "inf", "-inf", "0x10", " 1", "",
           "TOTAL," * 80, "\u202e", "\ud7ff", "x" * 5000]
PLAUSIBLE = ["TOTAL", "PULGT", "PULGT-nhit", "100L-charge", "gtid", "run", "heartbeat",
             "L2:gtid", "occupancy", "cmos", "base", "dispatcher", "nhit", "nhit_hist",
             "builder", "avg", "max", "process", "0", "1", "3", "15", "31", "19", "20", "-1",
             "5", "60", "1700000000", "1699999000", "1700000100", "2023-11-14T22:13:20.000Z",
             "2023-11-14T22:00:00Z"]
VALUES = st.one_of(st.sampled_from(PLAUSIBLE), st.sampled_from(HOSTILE),
                   st.text(max_size=30), st.integers().map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))

ROUTES = {
    "metric": ["expr", "start", "stop", "now", "step"],
    "metric_hash": ["name", "start", "stop", "now", "step", "crate", "card", "channel",
                    "method"],
    "owl_tubes": ["name", "start", "stop", "now", "step", "method"],
    "query": ["name", "seconds", "step"],
    "get_status": ["name"],
    "get_alarm": ["start"],
    "get_l2": ["name"],
    "tail": ["name", "seek"],
    "graph": ["name"],
    "view_log": ["name"],
    "nearline": [],
    "snostream": [],
}
PAGES = {"graph", "view_log", "nearline", "snostream"}


WINDOW = {"start": "1699999000", "stop": "1700000000", "step": "60", "now": "1700000000"}
#: A valid request of each route; the strategy damages some of its parameters.
VALID = {
    "metric": dict(WINDOW, expr="TOTAL,PULGT-nhit,gtid"),
    "metric_hash": dict(WINDOW, name="cmos", crate="3", card="15", channel="16",
                        method="max"),
    "owl_tubes": dict(WINDOW, name="base", method="avg"),
    "query": {"name": "nhit", "seconds": "10", "step": "60"},
    "get_status": {"name": "builder"},
    "get_alarm": {"start": "-5"},
    "get_l2": {"name": "process"},
    "tail": {"name": "builder", "seek": "0"},
    "graph": {"name": "PULGT-nhit"},
    "view_log": {"name": "builder"},
    "nearline": {},
    "snostream": {},
}


def one_damaged(valid, key, value):
    """`valid` with `key` set to `value` (removed when value is None; key None: intact)."""
    params = dict(valid)
    if key is not None:
        params[key] = value
    return [(k, v) for k, v in params.items() if v is not None]


def query_strategy(route):
    names = st.sampled_from(ROUTES[route] + ["junk", "name[]", ""])
    params = st.lists(st.tuples(names, VALUES), max_size=6)
    raw = st.binary(max_size=40).map(lambda b: "name=" + quote_from_bytes(b))
    valid = VALID[route]
    near_valid = st.builds(one_damaged, st.just(valid),
                           st.sampled_from(sorted(valid) + [None]) if valid else st.none(),
                           st.one_of(VALUES, st.none()))
    return st.one_of(near_valid.map(urlencode), near_valid.map(urlencode),
                     params.map(urlencode), raw)


def http(port, method, path, body=None, headers=None):
    """(status, headers, body) over a plain blocking connection (runs in a thread)."""
    connection = http_client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


class SiteQueryProperties(SiteTestMixin, unittest.TestCase):
    """Any query string on any route of the main site: 200, 400 or 404 with a JSON (or
    escaped HTML) answer - never a 500, never unescaped markup from the request."""

    timeout = 120

    def test_any_query_on_any_route(self):
        port = self.port.getHost().port
        self.sync.command("SET", "dispatcher", "<b>host</b>")

        def check(route, query):
            status, headers, body = http(port, "GET", "/%s?%s" % (route, query))
            self.assertIn(status, (200, 400, 404), "%s?%s -> %d %r"
                          % (route, query, status, body[:200]))
            self.assertIn("default-src 'self'", headers.get("Content-Security-Policy", ""))
            if route in PAGES:
                self.assertTrue(headers["Content-Type"].startswith("text/html"))
                self.assertNotIn(b"<script>alert", body)
                self.assertNotIn(b"<img src=x", body)
            else:
                self.assertEqual(headers["Content-Type"], "application/json; charset=utf-8")
                answer = json.loads(body)
                if status != 200:
                    self.assertTrue(answer["error"])

        def run():
            for route in sorted(ROUTES):
                settings(max_examples=120, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))(
                    given(st.just(route), query_strategy(route))(check))()

        return threads.deferToThread(run)


class LogFormProperties(LogServerMixin, unittest.TestCase):
    """Any form body posted (with valid credentials) to the logging server: 200, 400 or
    413 - never a 500/503, never a traceback - and the log file keeps one line per post."""

    timeout = 120

    def test_any_form(self):
        from minard.web.logsite import TokenBuckets
        self.logsite.requests = TokenBuckets(1e9, 1e9, reactor.seconds)
        port = self.port
        names = st.sampled_from(["builder", "BUILDER", "nobody", "", "../builder",
                                 "builder\x00", "<b>builder</b>", "builder\n"])
        levels = st.sampled_from(["10", "20", "21", "30", "40", "1000", "1001", "-1", "4e1"])
        anything = st.one_of(VALUES, names, levels, st.text(max_size=2000))
        valid = {"/heartbeat": {"name": "builder", "status": "ok"},
                 "/log": {"name": "builder", "level": "20", "message": "hello"}}

        def near_valid(path):
            keys = sorted(valid[path]) + ["notify", "extra"]
            return st.builds(one_damaged, st.just(valid[path]),
                             st.sampled_from(keys + [None]), st.one_of(anything, st.none()))

        fields = st.fixed_dictionaries({}, optional={
            "name": names, "status": anything, "level": levels | VALUES,
            "message": anything, "notify": st.just("")})
        big = st.integers(64 * 1024 - 10, 64 * 1024 + 10).map(
            lambda n: ("name=builder&level=20&message=" + "m" * n).encode())

        def bodies(path):
            return st.one_of(near_valid(path).map(lambda p: urlencode(p).encode()),
                             near_valid(path).map(lambda p: urlencode(p).encode()),
                             fields.map(lambda f: urlencode(f).encode()),
                             st.binary(max_size=300), big)

        def check(path, body):
            status, headers, answer = http(port, "POST", path, body, {
                "Authorization": basic().decode(),
                "Content-Type": "application/x-www-form-urlencoded"})
            self.assertIn(status, (200, 400, 413), "%s %r -> %d %r"
                          % (path, body[:200], status, answer[:200]))
            if status == 200:
                self.assertEqual(answer, b"ok\n")
                written.append(path == "/log")
            else:
                self.assertTrue(json.loads(answer)["error"])

        written = []

        def run():
            for path in sorted(valid):
                settings(max_examples=150, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))(
                    given(st.just(path), bodies(path))(check))()
            return self.log_lines("builder") if "builder.log" in self.log_files() else []

        d = threads.deferToThread(run)

        def lines_are_lines(lines):
            self.assertEqual(len(lines), sum(written))  # one line per accepted post
            for line in lines:
                self.assertRegex(line, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - builder - ")

        return d.addCallback(lines_are_lines)
