"""The main site's JSON API (SPEC §5.1) against a real Redis seeded with known values.

Expected answers are computed here from the seeded Python values, not by the code under
test; every malformed request must get a 400 (or 404 for an unknown name), never a 500.
"""
import json
import math
import os
import random
import re

from twisted.internet import defer
from twisted.trial import unittest

from minard.constants import OWL_CHANNELS, TRIGGERS
from tests import web_seed
from tests.web_support import SiteTestMixin

T0 = 1_700_000_000  # seeded data start here (the site's clock is at SiteTestMixin.now)


def _close(a, b):
    if a is None or b is None:
        return a is b
    # per-channel values are stored as float32: 7 significant digits (the routes promise 6)
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


class MetricTests(SiteTestMixin, unittest.TestCase):

    def seed_trig(self, interval, buckets, rng):
        """Random trig / trig:nhit / trig:charge hashes; returns {bucket: (c, n, q, meta)}."""
        seeded = {}
        for b in buckets:
            counts, nhits, charges = {}, {}, {}
            for name in ("TOTAL",) + TRIGGERS:
                if name != "TOTAL" and rng.random() < 0.5:
                    continue
                field = "TOTAL" if name == "TOTAL" else str(TRIGGERS.index(name))
                c = rng.randint(0 if name != "PULGT" else 1, 5000)
                counts[field] = c
                nhits[field] = c * rng.randint(1, 300)
                charges[field] = c * rng.randint(1, 3000)
            meta = {"run": str(rng.randint(1, 10 ** 6)), "subrun": str(rng.randint(0, 99)),
                    "gtid": str(rng.randint(0, 2 ** 24 - 1))}
            flat = [x for kv in counts.items() for x in kv] + \
                   [x for kv in meta.items() for x in kv]
            self.sync.command("HSET", "ts:%d:%d:trig" % (interval, b), *flat)
            self.sync.command("HSET", "ts:%d:%d:trig:nhit" % (interval, b),
                              *[x for kv in nhits.items() for x in kv])
            self.sync.command("HSET", "ts:%d:%d:trig:charge" % (interval, b),
                              *[x for kv in charges.items() for x in kv])
            seeded[b] = (counts, nhits, charges, meta)
        return seeded

    @defer.inlineCallbacks
    def test_rates_means_and_raw_fields(self):
        rng = random.Random(4)
        start, stop = T0, T0 + 900
        # leave holes: every 7th second has no data at all
        buckets = [b for b in range(start, stop) if b % 7]
        seeded = self.seed_trig(1, buckets, rng)
        for b in buckets[::3]:
            self.sync.command("SET", "ts:1:%d:heartbeat" % b, "1")
            self.sync.command("SET", "ts:1:%d:L1" % b, str(b % 50))
            self.sync.command("SET", "ts:1:%d:L2:gtid" % b, str(b))
            self.sync.command("SET", "ts:1:%d:myrate" % b, "7")
        l2_alive = set(range(start, stop, 2))  # the L2 client's own heartbeat
        for b in l2_alive:
            self.sync.command("SET", "ts:1:%d:l2-heartbeat" % b, "1")
        exprs = ["TOTAL", "100L", "PULGT", "MISS", "TOTAL-nhit", "PULGT-charge", "20-nhit",
                 "gtid", "run", "subrun", "heartbeat", "L1", "L2:gtid", "myrate", "ORPHANS"]
        got = yield self.get_json("metric?expr=%s&start=%d&stop=%d&step=1&now=%d"
                                  % (",".join(exprs), start, stop, self.now))
        values = got["values"]
        self.assertEqual(sorted(values), sorted(exprs))
        for e in exprs:
            self.assertEqual(len(values[e]), 900, e)
        for p, second in enumerate(range(start, stop)):
            counts, nhits, charges, meta = seeded.get(second, ({}, {}, {}, {}))
            for trig in ("TOTAL", "100L", "PULGT", "MISS"):
                field = "TOTAL" if trig == "TOTAL" else str(TRIGGERS.index(trig))
                # a second nobody counted (no trig hash, no heartbeat) is unknown, not 0
                self.assertEqual(values[trig][p], float(counts.get(field, 0))
                                 if second in seeded else None, (trig, second))
            for expr, sums, field in (("TOTAL-nhit", nhits, "TOTAL"),
                                      ("PULGT-charge", charges, "10"), ("20-nhit", nhits, "3")):
                expected = sums[field] / counts[field] if counts.get(field) else None
                self.assertTrue(_close(values[expr][p], expected), (expr, p))
            for field in ("gtid", "run", "subrun"):
                self.assertEqual(values[field][p], meta.get(field))
            marked = second in buckets[::3]
            self.assertEqual(values["heartbeat"][p], "1" if marked else None)
            # L1, ORPHANS: the L2 client's counts; 0 only where it was alive, else unknown
            self.assertEqual(values["L1"][p], float(second % 50) if marked else
                             (0.0 if second in l2_alive else None))
            self.assertEqual(values["L2:gtid"][p], str(second) if marked else None)
            self.assertEqual(values["myrate"][p], 7.0 if marked else None)
            self.assertEqual(values["ORPHANS"][p], 0.0 if second in l2_alive else None)

    @defer.inlineCallbacks
    def test_single_expression_shape_and_sampling(self):
        """step 10 -> I = 8: one 8-s bucket sampled per point, rate = count / 8."""
        rng = random.Random(5)
        start, stop, step = T0, T0 + 3600, 10
        buckets = sorted({i // 8 for i in range(start, stop, step)})
        seeded = self.seed_trig(8, buckets, rng)
        got = yield self.get_json("metric?expr=TOTAL&start=%d&stop=%d&step=%d"
                                  % (start, stop, step))
        expected = [seeded[i // 8][0]["TOTAL"] / 8 for i in range(start, stop, step)]
        self.assertEqual(got, {"values": expected})

    @defer.inlineCallbacks
    def test_clock_skew_and_iso_times(self):
        self.sync.command("HSET", "ts:1:%d:trig" % (T0 + 5), "TOTAL", "42")
        # the client's clock is 100 s ahead of the server: it asks for T0+100 .. T0+110
        got = yield self.get_json(
            "metric?expr=TOTAL&start=%d&stop=%d&step=1&now=%d"
            % (T0 + 100, T0 + 110, self.now + 100))
        self.assertEqual(got["values"][5], 42.0)
        self.assertEqual([v for v in got["values"] if v is not None], [42.0])
        iso = "2023-11-14T22:13:20.000Z"  # == T0
        got = yield self.get_json("metric?expr=TOTAL&start=%s&stop=%d&step=1" % (iso, T0 + 10))
        self.assertEqual(got["values"][5], 42.0)

    @defer.inlineCallbacks
    def test_baseline(self):
        self.sync.command("SET", "ts:1:%d:100L-Baseline" % T0, "2.5")
        self.sync.command("SET", "ts:1:%d:baseline-count" % T0, "5")
        got = yield self.get_json("metric?expr=100L-Baseline&start=%d&stop=%d&step=1"
                                  % (T0, T0 + 2))
        self.assertEqual(got["values"], [0.5, None])


class HashSeriesTests(SiteTestMixin, unittest.TestCase):

    def seed(self, interval, buckets, name, rng):
        truth = {}
        for b in buckets:
            chan = {i: rng.random() * 100 for i in rng.sample(range(10240), 300)}
            for i in OWL_CHANNELS[::2]:
                chan[i] = rng.random() * 10
            truth[b] = chan
            self.sync.command(*web_seed.final_command(interval, b, name, chan))
        return truth

    @defer.inlineCallbacks
    def test_crate_card_channel_and_owl(self):
        rng = random.Random(6)
        start, stop, step = T0, T0 + 600, 60
        buckets = [i // 60 for i in range(start, stop, step)][:-2]  # the last 2 missing
        truth = self.seed(60, buckets, "cmos", rng)
        some = next(iter(truth[buckets[0]]))
        crate, card, channel = some >> 9, (some >> 5) & 15, some & 31
        q = "name=cmos&start=%d&stop=%d&step=%d" % (start, stop, step)
        for extra, method in (("crate=%d" % crate, "avg"), ("crate=%d" % crate, "max"),
                              ("crate=%d&card=%d" % (crate, card), "max"),
                              ("crate=%d&card=%d&channel=%d" % (crate, card, channel), "avg"),
                              ("crate=%d&card=&channel=" % crate, "avg")):
            got = yield self.get_json("metric_hash?%s&%s&method=%s" % (q, extra, method))
            level = "channel" if "channel=%d" % channel in extra else \
                "card" if "card=%d" % card in extra else "crate"
            expected = []
            for i in range(start, stop, step):
                chan = truth.get(i // 60)
                if chan is None:
                    expected.append(None)
                    continue
                if level == "channel":
                    members = [v for j, v in chan.items() if j == some]
                elif level == "card":
                    members = [v for j, v in chan.items() if j & ~31 == some & ~31]
                else:
                    members = [v for j, v in chan.items() if j >> 9 == crate]
                if not members:
                    expected.append(None)
                elif method == "max" and level != "channel":
                    expected.append(max(members))
                else:
                    expected.append(sum(members) / len(members))
            self.assertEqual(len(got["values"]), len(expected))
            for a, b in zip(got["values"], expected):
                self.assertTrue(_close(a, b), (extra, method, a, b))
        for method in ("avg", "max"):
            got = yield self.get_json("owl_tubes?%s&method=%s" % (q, method))
            for p, i in enumerate(range(start, stop, step)):
                chan = truth.get(i // 60)
                xs = [chan[j] for j in OWL_CHANNELS if chan and j in chan]
                expected = None if not xs else max(xs) if method == "max" else sum(xs) / len(xs)
                self.assertTrue(_close(got["values"][p], expected), (method, p))

    @defer.inlineCallbacks
    def test_older_points_read_coarser_buckets_past_retention(self):
        """A 3-hour window at step 12: 5-s buckets are kept 100 minutes, so the older
        points read the 60-s buckets (kept 20 h) instead of showing nothing."""
        from minard.constants import HASH_EXPIRE
        now = int(self.now)
        start, stop, step = now - 3 * 3600, now, 12
        ch = (3 << 9) | (4 << 5) | 5
        for b in range(start // 60, stop // 60):
            self.sync.command(*web_seed.final_command(60, b, "base", {ch: 6.0}))
        for b in range((now - 5 * HASH_EXPIRE) // 5, stop // 5):
            self.sync.command(*web_seed.final_command(5, b, "base", {ch: 0.5}))
        got = yield self.get_json(
            "metric_hash?name=base&start=%d&stop=%d&step=%d&crate=3&card=4&channel=5&now=%d"
            % (start, stop, step, now))
        values = got["values"]
        kept_since = now - 5 * HASH_EXPIRE
        for p, t in enumerate(range(start, stop, step)):
            if t < kept_since:
                self.assertEqual(values[p], 6.0, t)
            elif t // 5 < stop // 5:
                self.assertEqual(values[p], 0.5, t)

    @defer.inlineCallbacks
    def test_step_below_five_uses_five_second_hashes(self):
        self.sync.command(*web_seed.final_command(5, T0 // 5, "occupancy",
                                                  {3 << 9 | 7: 0.25}))
        got = yield self.get_json("metric_hash?name=occupancy&start=%d&stop=%d&step=1&crate=3"
                                  % (T0, T0 + 10))
        b = T0 // 5
        self.assertEqual(got["values"], [0.25 if i // 5 == b else None
                                         for i in range(T0, T0 + 10)])


class QueryTests(SiteTestMixin, unittest.TestCase):

    def finalise(self, interval, b, name, values):
        self.sync.command(*web_seed.final_command(interval, b, name, values))

    @defer.inlineCallbacks
    def test_latest_finalised_bucket(self):
        now = int(self.now)
        newest = now // 60 - 1
        self.finalise(60, newest - 1, "occupancy", {5: 0.5, 10239: 1e-3})
        # the newest complete bucket has only parts, not finalised yet: not used
        self.sync.command("HSET", "minard:part:occupancy:60:%d" % newest, "w", "x")
        got = yield self.get_json("query?name=occupancy&step=60")
        self.assertEqual(len(got["values"]), 10240)
        self.assertEqual(got["values"][5], 0.5)
        self.assertEqual(got["values"][10239], 0.001)
        self.assertEqual(sum(v is not None for v in got["values"]), 2)
        self.assertEqual(got["bucket"], newest - 1)
        self.finalise(60, newest, "occupancy", {5: 0.9})
        got = yield self.get_json("query?name=occupancy")  # step defaults to 60
        self.assertEqual(got["values"][5], 0.9)
        self.assertIsNone(got["values"][10239])
        # cmos at step 1 -> 5-s hashes; nothing finalised -> 10240 nulls (no data, not 0)
        got = yield self.get_json("query?name=cmos&step=1")
        self.assertEqual(got["values"], [None] * 10240)
        self.assertEqual(got["interval"], 5)

    @defer.inlineCallbacks
    def test_dispatcher_nhit_and_hist(self):
        now = int(self.now)
        self.sync.command("SET", "dispatcher", "daq-host")
        got = yield self.get_json("query?name=dispatcher")
        self.assertEqual(got, {"name": "daq-host"})
        expected = []
        for i in range(5):
            vals = [i * 10 + j for j in range(3)]
            self.sync.command("RPUSH", "ts:1:%d:nhit" % (now - i), *vals)
            expected.extend(vals)
        self.sync.command("RPUSH", "ts:1:%d:nhit" % (now - 5), 999)  # outside 5 s
        got = yield self.get_json("query?name=nhit&seconds=5")
        self.assertEqual(sorted(got["value"]), sorted(expected))
        last = now // 5 - 1
        totals = {}
        for k in range(12):
            hist = {str(n): (k + 1) * n for n in range(k, k + 20)}
            self.sync.command("HSET", "ts:5:%d:nhit:hist" % (last - k),
                              *[x for kv in hist.items() for x in kv])
            if k < 2:
                for n, c in hist.items():
                    totals[int(n)] = totals.get(int(n), 0) + c
        self.sync.command("HSET", "ts:5:%d:nhit:hist" % (last + 1), "3", "1000")  # open bucket
        got = yield self.get_json("query?name=nhit_hist&seconds=10")
        self.assertEqual(got["nhit"], sorted(totals))
        self.assertEqual(got["events"], [totals[n] for n in sorted(totals)])
        self.assertEqual((got["start"], got["stop"]), ((last - 1) * 5, (last + 1) * 5))
        got = yield self.get_json("query?name=nhit_hist&seconds=60")
        self.assertEqual(sum(got["events"]),
                         sum((k + 1) * n for k in range(12) for n in range(k, k + 20)))


class StatusAlarmL2Tests(SiteTestMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def test_get_status(self):
        self.sync.command("SET", "heartbeat:builder", "ok")
        self.sync.command("SET", "uptime:builder", str(int(self.now) - 3600))
        got = yield self.get_json("get_status?name=builder")
        self.assertEqual(got, {"status": "ok", "uptime": 3600})
        got = yield self.get_json("get_status?name=xl3")
        self.assertEqual(got, {"status": None, "uptime": None})
        yield self.get_json("get_status?name=nobody", expect=404)
        yield self.get_json("get_status", expect=400)

    @defer.inlineCallbacks
    def test_get_alarm(self):
        got = yield self.get_json("get_alarm")
        self.assertEqual(got, {"alarms": [], "latest": -1})
        alarms = {}
        for i in range(250):
            a = {"id": i, "level": 40 if i % 3 else 20, "message": "<b>alarm %d</b>" % i,
                 "time": "2023-11-14T22:13:%02d.000000Z" % (i % 60)}
            if i % 10 != 4:  # every tenth alarm has expired
                self.sync.command("SET", "alarms:%d" % i, json.dumps(a))
                alarms[i] = a
        self.sync.command("SET", "alarms:count", "250")
        got = yield self.get_json("get_alarm")
        self.assertEqual(got["latest"], 249)
        self.assertEqual(got["alarms"], [alarms[i] for i in range(150, 250) if i in alarms])
        got = yield self.get_json("get_alarm?start=-20")
        self.assertEqual(got["alarms"], [alarms[i] for i in range(230, 250) if i in alarms])
        got = yield self.get_json("get_alarm?start=245")
        self.assertEqual([a["id"] for a in got["alarms"]], [245, 246, 247, 248, 249])
        got = yield self.get_json("get_alarm?start=250")
        self.assertEqual(got, {"alarms": [], "latest": 249})
        got = yield self.get_json("get_alarm?start=0")
        self.assertEqual(len(got["alarms"]), len(alarms))
        self.sync.command("SET", "alarms:7", "{not json")
        got = yield self.get_json("get_alarm?start=5&")
        self.assertNotIn(7, [a["id"] for a in got["alarms"]])

    @defer.inlineCallbacks
    def test_alarm_answer_is_bounded(self):
        self.sync.command("SET", "alarms:count", "5000")
        self.sync.command("MSET", *[x for i in range(5000) for x in
                                    ("alarms:%d" % i, json.dumps({"id": i}))])
        got = yield self.get_json("get_alarm?start=0")
        self.assertEqual(len(got["alarms"]), 1000)
        self.assertEqual(got["latest"], 999)
        got = yield self.get_json("get_alarm?start=%d" % (got["latest"] + 1))
        self.assertEqual(got["alarms"][0]["id"], 1000)

    @defer.inlineCallbacks
    def test_get_l2(self):
        self.sync.command("ZADD", "l2:done", "100", "a.zdab", "50", "b.zdab", "75.5", "c.zdab")
        got = yield self.get_json("get_l2?name=done")
        self.assertEqual(got, {"files": ["b.zdab", "c.zdab", "a.zdab"],
                               "times": [50.0, 75.5, 100.0]})
        got = yield self.get_json("get_l2?name=fail")
        self.assertEqual(got, {"files": [], "times": []})
        yield self.get_json("get_l2?name=nothing", expect=404)


class TailTests(SiteTestMixin, unittest.TestCase):

    def write(self, name, text, mode="w"):
        with open(os.path.join(self.log_dir, name), mode) as f:
            f.write(text)

    @defer.inlineCallbacks
    def test_tail_follow_and_rotation(self):
        lines = ["2023-11-14 22:13:%02d,000 - builder - INFO - line %d" % (i % 60, i)
                 for i in range(250)]
        self.write("builder.log", "\n".join(lines) + "\n")
        got = yield self.get_json("tail?name=builder")
        self.assertEqual(got["lines"], lines[-100:])
        size = os.path.getsize(os.path.join(self.log_dir, "builder.log"))
        self.assertEqual(got["seek"], size)
        self.write("builder.log", "new 1\nnew 2\npartial", "a")
        got = yield self.get_json("tail?name=builder&seek=%d" % size)
        self.assertEqual(got["lines"], ["new 1", "new 2"])
        self.assertEqual(got["seek"], size + len("new 1\nnew 2\n"))
        seek = got["seek"]
        # rotation: builder.log -> builder.log.1, a new small builder.log
        self.write("builder.log", " end\n", "a")
        os.rename(os.path.join(self.log_dir, "builder.log"),
                  os.path.join(self.log_dir, "builder.log.1"))
        self.write("builder.log", "fresh\n")
        got = yield self.get_json("tail?name=builder&seek=%d" % seek)
        self.assertEqual(got["lines"], ["partial end", "fresh"])
        self.assertEqual(got["seek"], len("fresh\n"))

    @defer.inlineCallbacks
    def test_only_known_programs(self):
        self.write("secret.log", "top secret\n")
        for name in ["../" + os.path.basename(self.log_dir) + "/secret", "secret",
                     "/etc/passwd", "builder/../secret", "..", "builder.log"]:
            code, _, body = yield self.get("tail?name=" + name)
            self.assertEqual(code, 404, name)
            self.assertNotIn(b"top secret", body)
        got = yield self.get_json("tail?name=xl3")
        self.assertEqual(got, {"seek": 0, "lines": []})
        self.write("xl3.log", "caf\xe9 \\ \x00 ok\n")
        got = yield self.get_json("tail?name=xl3")
        self.assertEqual(got["lines"], ["caf\xe9 \\ \x00 ok"])


class BadRequestTests(SiteTestMixin, unittest.TestCase):
    """Everything a client can get wrong is a 400 (or 404 for an unknown name)."""

    W = "start=%d&stop=%d&step=1" % (T0, T0 + 60)

    BAD = [
        "metric", "metric?expr=TOTAL", "metric?expr=TOTAL&start=1&stop=2",
        "metric?expr=TOTAL&start=x&stop=2&step=1", "metric?expr=TOTAL&start=1&stop=y&step=1",
        "metric?expr=TOTAL&start=5&stop=2&step=1", "metric?expr=TOTAL&start=2&stop=2&step=1",
        "metric?expr=TOTAL&start=1&stop=2&step=0", "metric?expr=TOTAL&start=1&stop=2&step=-1",
        "metric?expr=TOTAL&start=1&stop=2&step=abc", "metric?expr=TOTAL&start=0&stop=20000&step=1",
        "metric?expr=TOTAL&start=1&stop=2&step=1&now=later",
        "metric?expr=TOTAL&start=2016-13-45T00:00:00Z&stop=2&step=1",
        "metric?expr=TOTAL&start=nan&stop=2&step=1", "metric?expr=TOTAL&start=1e400&stop=2&step=1",
        "metric?expr=FOO-nhit&" + W, "metric?expr=TOTAL-nhit-charge&" + W,
        "metric?expr=TOTAL-volts&" + W, "metric?expr=&" + W, "metric?expr=a%20b&" + W,
        "metric?expr=%3Cscript%3E&" + W, "metric?expr=TOTAL,,100L&" + W,
        "metric?expr=" + ",".join(["TOTAL"] * 65) + "&" + W,
        "metric?expr=%FF&" + W, "metric?expr=TOTAL&start=%FF&stop=2&step=1",
        "metric_hash?" + W, "metric_hash?name=cmos&" + W, "metric_hash?name=foo&crate=1&" + W,
        "metric_hash?name=cmos&crate=20&" + W, "metric_hash?name=cmos&crate=-1&" + W,
        "metric_hash?name=cmos&crate=x&" + W, "metric_hash?name=cmos&crate=1&card=16&" + W,
        "metric_hash?name=cmos&crate=1&card=1&channel=32&" + W,
        "metric_hash?name=cmos&crate=1&channel=3&" + W,
        "metric_hash?name=cmos&crate=1&method=mean&" + W,
        "metric_hash?name=cmos&crate=1&start=1&stop=2",
        "owl_tubes?" + W, "owl_tubes?name=cmos&method=sum&" + W, "owl_tubes?name=cmos",
        "query", "query?name=nhit", "query?name=nhit&seconds=0", "query?name=nhit&seconds=x",
        "query?name=nhit&seconds=100000", "query?name=occupancy&step=0",
        "query?name=occupancy&step=x", "query?name=nhit_hist&seconds=-1",
        "get_status", "get_alarm?start=x", "get_alarm?start=1.5", "get_l2", "tail",
        "tail?name=builder&seek=-1", "tail?name=builder&seek=x",
        "graph", "graph?name=BAD-nhit", "graph?name=TOTAL,100L", "nearline/abc",
    ]
    NOT_FOUND = [
        "query?name=whatever", "get_status?name=nobody", "get_l2?name=x",
        "tail?name=../../etc/passwd", "tail?name=nobody", "view_log?name=nobody",
        "no/such/page", "static/nothing.js",
    ]

    @defer.inlineCallbacks
    def test_bad_requests_are_400(self):
        for path in self.BAD:
            code, headers, body = yield self.get(path)
            self.assertEqual(code, 400, "%s -> %d %r" % (path, code, body[:200]))
            if not path.startswith(("graph", "nearline")):
                self.assertTrue(json.loads(body)["error"], path)

    @defer.inlineCallbacks
    def test_unknown_names_are_404(self):
        for path in self.NOT_FOUND:
            code, headers, body = yield self.get(path)
            self.assertEqual(code, 404, "%s -> %d %r" % (path, code, body[:200]))


class ClientGoneTests(SiteTestMixin, unittest.TestCase):
    """A browser that leaves a page while Redis answers is not an internal error: the
    original logged a critical traceback for it, which became a level-50 alarm."""

    use_clock = False

    @defer.inlineCallbacks
    def test_client_leaving_mid_request(self):
        from twisted.internet import protocol, reactor
        from tests.support import wait_for

        class Ask(protocol.Protocol):
            def __init__(self, path):
                self.path = path

            def connectionMade(self):
                self.transport.write(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % self.path)

        self.redis_server.command("CLIENT", "PAUSE", "800", "ALL")  # Redis answers late
        paths = [b"get_status?name=builder", b"metric?expr=TOTAL&start=%d&stop=%d&step=1"
                 % (T0, T0 + 60), b"get_alarm", b"nearline"]
        counters = self.site.stats.counters
        for n, path in enumerate(paths, 1):
            ep = protocol.ClientCreator(reactor, Ask, path)
            conn = yield ep.connectTCP("127.0.0.1", self.port.getHost().port)
            yield wait_for(lambda: counters.get("requests", 0) +
                           counters.get("page_requests", 0) >= n, timeout=5)
            conn.transport.loseConnection()  # gone before Redis answers
        yield wait_for(lambda: self.site.stats.counters.get("requests_cancelled", 0)
                       >= len(paths), timeout=5)
        self.assertNotIn("internal_errors", self.site.stats.counters)
        # and the site still answers
        got = yield self.get_json("get_status?name=builder")
        self.assertEqual(got, {"status": None, "uptime": None})


class PageTests(SiteTestMixin, unittest.TestCase):

    PAGES = ["snostream", "nhit", "detector", "daq", "l2", "nearline", "status", "alarms",
             "view_log?name=builder", "graph?name=TOTAL", "graph?name=PULGT-nhit"]

    @defer.inlineCallbacks
    def test_pages_headers_and_relative_urls(self):
        for path in self.PAGES + ["static/js/minard.js", "metric?expr=TOTAL&start=1&stop=2&step=1",
                                  "no-such-page", "static/css/minard.css"]:
            code, headers, body = yield self.get(path)
            self.assertIn(code, (200, 404), path)
            self.assertEqual(headers.getRawHeaders("content-security-policy")[0].split(";")[0],
                             "default-src 'self'", path)
            self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
            self.assertTrue(headers.getRawHeaders("x-frame-options"))
            self.assertTrue(headers.getRawHeaders("referrer-policy"))
            if path in self.PAGES:
                self.assertEqual(code, 200, path)
                text = body.decode()
                self.assertNotIn('href="/', text, path)
                self.assertNotIn('src="/', text, path)
                self.assertNotIn("<script>", text, path)
                self.assertNotIn("style=", text, path)
                self.assertIsNone(re.search(r"<[^>]*\son[a-z]+\s*=", text), path)

    @defer.inlineCallbacks
    def test_redirect_is_relative(self):
        code, headers, _ = yield self.get("")
        self.assertEqual(code, 302)
        self.assertEqual(headers.getRawHeaders("location"), ["snostream"])

    @defer.inlineCallbacks
    def test_nearline(self):
        code, _, body = yield self.get("nearline")
        self.assertEqual(code, 200)
        self.assertIn(b"No current run", body)
        self.sync.command("SET", "nearline:current_run", "1234")
        self.sync.command("HSET", "nearline:1234", "fitter", "0", "<evil>", "1", "q", "99")
        code, _, body = yield self.get("nearline")
        self.assertEqual(code, 200)
        self.assertIn(b"1234", body)
        self.assertIn(b"&lt;evil&gt;", body)
        self.assertNotIn(b"<evil>", body)
        code, _, body = yield self.get("nearline/1234")
        self.assertIn(b'href="../', body)
        self.assertIn(b"fitter", body)
        code, _, body = yield self.get("nearline/99")
        self.assertIn(b"No nearline results", body)

    @defer.inlineCallbacks
    def test_view_log_escapes(self):
        code, _, body = yield self.get("view_log?name=builder")
        self.assertEqual(code, 200)
        self.assertIn(b'data-name="builder"', body)
