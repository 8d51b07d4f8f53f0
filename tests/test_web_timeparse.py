"""Time and window parameters of the main site (minard.web.timeparse)."""
import calendar

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from minard.web import timeparse as tp


class ParseTimeTests(unittest.TestCase):
    def test_javascript_iso(self):
        expected = calendar.timegm((2016, 4, 18, 12, 0, 0))
        self.assertEqual(tp.parse_time("2016-04-18T12:00:00.000Z", "start"), expected)
        self.assertEqual(tp.parse_time("2016-04-18T12:00:00.250Z", "start"), expected + 0.25)

    def test_iso_variants(self):
        base = calendar.timegm((2016, 4, 18, 12, 0, 0))
        self.assertEqual(tp.parse_time("2016-04-18T12:00:00", "t"), base)
        self.assertEqual(tp.parse_time("2016-04-18T12:00", "t"), base)
        self.assertEqual(tp.parse_time("2016-04-18T14:00:00+02:00", "t"), base)
        self.assertEqual(tp.parse_time("2016-04-18T07:00:00-0500", "t"), base)
        self.assertEqual(tp.parse_time("2016-04-18", "t"), calendar.timegm((2016, 4, 18, 0, 0, 0)))

    def test_unix_seconds(self):
        self.assertEqual(tp.parse_time("1460980800", "t"), 1460980800)
        self.assertEqual(tp.parse_time("1460980800.5", "t"), 1460980800.5)

    def test_bad_times(self):
        for text in ["", None, "yesterday", "2016-13-01T00:00:00Z", "2016-02-30",
                     "2016-04-18T25:00:00Z", "nan", "inf", "-1", "1e20", "0x10",
                     "2016-04-18T12:00:00+25:00", "12:00", "\x00", "2016-04-18T12:00:00ZZ"]:
            self.assertRaises(tp.BadRequest, tp.parse_time, text, "start")


class WindowTests(unittest.TestCase):
    def test_plain(self):
        self.assertEqual(tp.parse_window("1000", "1900", "1", None, 5000), (1000, 1900, 1))

    def test_skew_correction(self):
        # the client's clock is 100 s ahead: its window is moved back by 100 s
        self.assertEqual(tp.parse_window("1000", "1900", "1", "5100", 5000), (900, 1800, 1))
        self.assertEqual(tp.parse_window("1000", "1900", "1", "4900.5", 5000), (1099, 1999, 1))

    def test_errors(self):
        cases = [
            (None, "2", "1", None), ("1", None, "1", None), ("1", "2", None, None),
            ("2", "1", "1", None), ("1", "1", "1", None), ("1", "2", "0", None),
            ("1", "2", "-5", None), ("1", "2", "1.5", None), ("1", "2", "x", None),
            ("0", "10001", "1", None) if False else ("0", "10002", "1", None),
            ("1", "2", "1", "garbage"),
        ]
        for start, stop, step, now in cases:
            self.assertRaises(tp.BadRequest, tp.parse_window, start, stop, step, now, 5000)

    def test_point_limit(self):
        self.assertEqual(tp.parse_window("0", "10000", "1", None, 0), (0, 10000, 1))
        self.assertRaises(tp.BadRequest, tp.parse_window, "0", "10001", "1", None, 0)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.none(), st.text(max_size=30)), st.one_of(st.none(), st.text(max_size=30)),
           st.one_of(st.none(), st.text(max_size=12)), st.one_of(st.none(), st.text(max_size=30)))
    def test_fuzz_only_bad_request(self, start, stop, step, now):
        try:
            t0, t1, s = tp.parse_window(start, stop, step, now, 1.5e9)
        except tp.BadRequest:
            return
        self.assertLess(t0, t1)
        self.assertGreaterEqual(s, 1)
        self.assertLessEqual(len(range(t0, t1, s)), 10000)


class IntervalTests(unittest.TestCase):
    def test_interval_for(self):
        self.assertEqual(tp.interval_for(1), 1)
        self.assertEqual(tp.interval_for(3), 2)
        self.assertEqual(tp.interval_for(900), 512)
        self.assertEqual(tp.interval_for(10 ** 8), 65536)

    def test_hash_interval_for(self):
        self.assertEqual(tp.hash_interval_for(1), 5)
        self.assertEqual(tp.hash_interval_for(5), 5)
        self.assertEqual(tp.hash_interval_for(59), 5)
        self.assertEqual(tp.hash_interval_for(60), 60)
        self.assertEqual(tp.hash_interval_for(86399), 60)
        self.assertEqual(tp.hash_interval_for(86400), 86400)


class IntTests(unittest.TestCase):
    def test_parse_int(self):
        self.assertEqual(tp.parse_int("5", "n"), 5)
        self.assertEqual(tp.parse_int(None, "n", default=3), 3)
        for text in ["x", "1.0", "", "99999999999999999999"]:
            self.assertRaises(tp.BadRequest, tp.parse_int, text, "n")
        self.assertRaises(tp.BadRequest, tp.parse_int, "20", "crate", 0, 19)


class ExpressionTests(unittest.TestCase):
    """/metric expressions (minard.store.reads.parse_expressions)."""

    def test_kinds(self):
        from minard.store.reads import parse_expressions
        kinds = {e.text: e.kind for e in parse_expressions(
            "TOTAL,100L,MISS,TOTAL-nhit,PULGT-charge,gtid,heartbeat,L2:gtid,L1,foo,20-Baseline")}
        # trigger counts: "counted" (null where nobody counted, SPEC §5.1); the L2
        # client's counts: "l2counted" (null where its heartbeat is missing)
        self.assertEqual(kinds, {"TOTAL": "counted", "100L": "counted", "MISS": "counted",
                                 "TOTAL-nhit": "mean", "PULGT-charge": "mean", "gtid": "raw",
                                 "heartbeat": "raw", "L2:gtid": "raw", "L1": "l2counted",
                                 "foo": "rate", "20-Baseline": "mean"})
        for bad in ["", "X-nhit", "TOTAL-nhit-x", "TOTAL-volts", "a b", "a,,b", "<b>", "x" * 65]:
            self.assertRaises(tp.BadRequest, parse_expressions, bad)

    @settings(max_examples=500, deadline=None)
    @given(st.text(max_size=80))
    def test_fuzz_only_bad_request(self, text):
        from minard.store.reads import parse_expressions
        try:
            exprs = parse_expressions(text)
        except tp.BadRequest:
            return
        for e in exprs:
            self.assertIn(e.kind, ("rate", "counted", "l2counted", "mean", "raw"))
            self.assertTrue(e.reads)
