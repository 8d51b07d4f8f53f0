"""Unknown is not zero (issue 11), with real roles and a real Redis.

* The dispatcher link: `dispatch-push` marks every second its link is up
  (keys.link_up, every interval); a second with a pull-worker heartbeat and the mark but
  no events reads 0, a second with the link down reads null — TOTAL and every trigger, at
  1 s and in coarser buckets, in /metric and in the /stream JSON — in history too, since
  the marks are per second, not inferred from the state at read time.
* The L2 client's counts (L1, L2, ORPHANS, BURSTS): null before it recorded anything,
  0 only where its own heartbeat says it was there.
* /query?name=occupancy for the 1-day window before any day is finalised: the day so far
  (the workers' partials), said to be not final; without partials, a finer bucket.
* Unknown paths: a browser (Accept: text/html) gets the HTML 404 page, an API client JSON.
"""
import json
import time

import numpy as np
import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from minard import constants as C
from minard.services import dispatch_push
from minard.store import channels, keys
from tests.support import RedisConnectionMixin, RoleProcessesMixin, free_port, wait_for
from tests.test_pipeline import TestDispatcherFactory, frame
from tests.test_web_stream import StreamReader
from tests.test_wire_sno import hand_built
from tests.web_support import SiteTestMixin

TRIGGERS = ("TOTAL", "100L", "20", "MISS")


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def first_stream_message(port):
    """The first `data:` JSON of the site's /stream (SSE) on `port`."""
    client = yield protocol.ClientCreator(reactor, StreamReader).connectTCP("127.0.0.1", port)
    try:
        yield wait_for(lambda: client.messages, timeout=10)
    finally:
        client.transport.abortConnection()
    return client.messages[0]


class LinkDownTests(RoleProcessesMixin, SiteTestMixin, unittest.TestCase):
    """dispatch-push + dispatch-pull against a dispatcher written here, read by the site."""

    use_clock = False
    timeout = 150

    def setUp(self):
        d = SiteTestMixin.setUp(self)
        self.processes = []
        return d


    def metric(self, exprs, start, stop, step):
        return self.get_json("metric?expr=%s&start=%d&stop=%d&step=%d"
                             % (",".join(exprs), start, stop, step))

    def beat(self, second, interval=1):
        return self.sync.command("GET", keys.pull_heartbeat(interval, second // interval))

    @defer.inlineCallbacks
    def test_link_down_reads_null_link_up_without_events_reads_zero(self):
        factory = TestDispatcherFactory(12)
        port = free_port()
        listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
        zmq = "tcp://127.0.0.1:%d" % free_port()
        self.spawn("dispatch-pull", "--zmq", zmq, "--name", "pull-0")
        self.spawn("dispatch-push", "--port", str(port), "--zmq", zmq,
                   "--idle-timeout", "0")
        yield wait_for(lambda: factory.connections and
                       len(factory.connections[0].handshake_done()) >= 3, timeout=30)
        yield wait_for(lambda: self.sync.command("EXISTS", "minard:stats:pull-0"), timeout=30)
        up = time.time()
        # the link up, the detector quiet: 10 s without a single event
        yield sleep(10.5)
        quiet = (int(up) + 1, int(time.time()) - 1)
        # then a burst of events within one second
        events = [hand_built(1, 0, g, 1 << C.TRIGGER_BIT["100L"] | 1 << C.TRIGGER_BIT["20"],
                             [(1, 2, 3, 100)]) for g in range(1, 51)]
        sent_at = time.time()
        factory.connections[0].transport.write(
            b"".join(frame(12, b"RAWDATA", e) for e in events))
        yield wait_for(lambda: any(self.sync.command("HGET", k, "TOTAL") == "50"
                                   for k in self.sync.command("KEYS", "ts:1:*:trig")),
                       timeout=20)
        event_second = int(self.sync.command("KEYS", "ts:1:*:trig")[0].split(":")[2])
        self.assertLess(abs(event_second - sent_at), 2)
        yield sleep(1.5)
        # the dispatcher goes away; nothing can arrive, the pull worker keeps beating
        yield listening.stopListening()
        for c in list(factory.connections):
            c.transport.loseConnection()
        down = time.time()
        yield wait_for(lambda: self.sync.command("GET", keys.DISPATCHER) is None, timeout=5)
        yield sleep(10.5)
        gone = (int(down) + 1, int(time.time()) - 2)
        for p in self.processes:
            self.assertTrue(p.alive(), p.log()[-2000:])

        since = int(self.sync.command("GET", keys.LINK_SINCE))
        self.assertLessEqual(since, int(up))
        for s in range(quiet[0], quiet[1] + 1):
            self.assertEqual(self.sync.command("GET", keys.link_up(1, s)), "1", s)
        for s in range(gone[0], gone[1] + 1):
            self.assertIsNone(self.sync.command("GET", keys.link_up(1, s)), s)
            self.assertEqual(self.beat(s), "1", s)  # the pull worker was alive all along

        # 1-s buckets: 0 while the link was up without events, the count of the burst,
        # null (not 0) once the link was down
        start, stop = quiet[0], gone[1] + 1
        got = (yield self.metric(TRIGGERS, start, stop, 1))["values"]
        for p, s in enumerate(range(start, stop)):
            for name in TRIGGERS:
                if quiet[0] <= s <= quiet[1]:
                    self.assertEqual(got[name][p], 0.0, (name, s))
                elif s == event_second:
                    self.assertEqual(got[name][p], 0.0 if name == "MISS" else 50.0, (name, s))
                elif gone[0] <= s <= gone[1]:
                    self.assertIsNone(got[name][p], (name, s))
        # coarser buckets follow the same rule (the marks and heartbeat of each interval)
        for step in (2, 4):
            got = (yield self.metric(TRIGGERS, start - start % step, stop, step))["values"]
            for p, t in enumerate(range(start - start % step, stop, step)):
                first, last = t, t + step - 1
                for name in TRIGGERS:
                    if quiet[0] <= first and last <= quiet[1]:
                        self.assertEqual(got[name][p], 0.0, (step, name, t))
                    elif gone[0] <= first and last <= gone[1]:
                        self.assertIsNone(got[name][p], (step, name, t))
                        self.assertEqual(self.beat(t, step), "1")

        # the /stream JSON: a second with the link down has no rates (null), and says so
        message = yield first_stream_message(self.port.getHost().port)
        self.assertGreaterEqual(message["time"], gone[0])
        self.assertIs(message["link_up"], False)
        self.assertIsNone(message["dispatcher"])
        self.assertFalse(message["present"])
        for name in TRIGGERS:
            self.assertIsNone(message["rates"][name], name)
        # ... and one of the quiet seconds, read again now: 0, the link was up
        snap = yield self.site.reads.stream_snapshot(quiet[1])
        self.assertIs(snap["link_up"], True)
        self.assertEqual(snap["rates"]["TOTAL"], 0.0)
        self.assertEqual(snap["previous"]["rates"]["100L"], 0.0)


class LinkMarkerTests(RedisConnectionMixin, unittest.TestCase):
    """The marker itself against Redis, on a driven clock."""

    @defer.inlineCallbacks
    def test_marks_every_interval_with_the_heartbeat_ttl_and_since_once(self):
        from minard.stats import Stats
        now = [1_700_000_005.2]
        clock = task.Clock()
        up = [True]
        marker = dispatch_push.LinkMarker(self.redis, Stats("dispatch-push"), lambda: up[0],
                                          clock, wall=lambda: now[0])
        marker.startService()
        self.addCleanup(lambda: marker.running and marker.stopService())
        for _ in range(6):  # 3 s with the link up
            yield marker.in_flight
            now[0] += 0.5
            clock.advance(0.5)
        up[0] = False
        for _ in range(4):
            yield marker.in_flight
            now[0] += 0.5
            clock.advance(0.5)
        yield marker.in_flight
        self.assertEqual(self.sync.command("GET", keys.LINK_SINCE), "1700000005")
        marked = {s for s in range(1_700_000_000, 1_700_000_020)
                  if self.sync.command("GET", keys.link_up(1, s))}
        self.assertEqual(marked, {1_700_000_005, 1_700_000_006, 1_700_000_007,
                                  1_700_000_008})
        for interval in C.INTERVALS:
            key = keys.link_up(interval, 1_700_000_006 // interval)
            ttl = self.sync.command("TTL", key)
            self.assertTrue(interval * C.EXPIRE - 5 <= ttl <= interval * C.EXPIRE, key)
        # a second marker (dispatch-push restarted) does not move LINK_SINCE
        later = dispatch_push.LinkMarker(self.redis, Stats("dispatch-push"), lambda: True,
                                         clock, wall=lambda: now[0] + 100)
        later.startService()
        yield later.in_flight
        later.stopService()
        self.assertEqual(self.sync.command("GET", keys.LINK_SINCE), "1700000005")
        self.assertEqual(self.sync.command("GET", keys.link_up(1, int(now[0] + 100))), "1")


class L2CountsTests(SiteTestMixin, unittest.TestCase):
    """L1, L2, ORPHANS and BURSTS before the L2 client recorded anything are null."""

    now = 1_700_000_900.0

    @defer.inlineCallbacks
    def test_before_the_l2_client_existed(self):
        first = 1_700_000_300  # the L2 client starts here: heartbeat every second
        for s in range(first, 1_700_000_600):
            self.sync.command("SET", "ts:1:%d:l2-heartbeat" % s, "1")
            if s % 3 == 0:
                self.sync.command("SET", "ts:1:%d:L1" % s, "30")
                self.sync.command("SET", "ts:1:%d:BURSTS" % s, "1")
        for s in range(1_700_000_000, 1_700_000_600):  # the pull workers ran all along
            self.sync.command("SET", "ts:1:%d:heartbeat" % s, "1")
        names = ("L1", "L2", "ORPHANS", "BURSTS")
        got = (yield self.get_json("metric?expr=%s,TOTAL&start=1700000000&stop=1700000600"
                                   "&step=1" % ",".join(names)))["values"]
        for p, s in enumerate(range(1_700_000_000, 1_700_000_600)):
            for name in names:
                if s < first:
                    self.assertIsNone(got[name][p], (name, s))
                elif name in ("L1", "BURSTS") and s % 3 == 0:
                    self.assertEqual(got[name][p], 30.0 if name == "L1" else 1.0)
                else:
                    self.assertEqual(got[name][p], 0.0, (name, s))
            # TOTAL: the pull workers counted (no dispatch-push marks here: heartbeat rule)
            self.assertEqual(got["TOTAL"][p], 0.0)


class DayWindowTests(SiteTestMixin, unittest.TestCase):
    """/query?name=occupancy&step=86400 before a day has been finalised."""

    now = 1_700_006_400.0  # 01:46:40 UTC of its day

    def seed_part(self, interval, b, hits, events, writer="pull-0"):
        blob = channels.encode_part("ratio", hits, events)
        self.sync.command("HSET", keys.channel_part("occupancy", interval, b), writer, blob,
                          "~v", "1")

    @defer.inlineCallbacks
    def test_day_so_far_then_a_finer_bucket(self):
        day = int(self.now) // 86400
        hits = np.zeros(C.N_CHANNELS)
        hits[:C.N_CHANNELS // 2] = 7
        hits2 = np.zeros(C.N_CHANNELS)
        hits2[:C.N_CHANNELS // 2] = 3
        self.seed_part(86400, day, hits, 1000)
        self.seed_part(86400, day, hits2, 1000, writer="pull-1")
        got = yield self.get_json("query?name=occupancy&step=86400")
        self.assertFalse(got["final"])
        self.assertEqual((got["asked"], got["interval"], got["bucket"]), (86400, 86400, day))
        self.assertEqual((got["start"], got["stop"]), (day * 86400, int(self.now)))
        self.assertEqual(got["values"][0], 10 / 2000)  # both workers' partials summed
        self.assertIsNone(got["values"][C.N_CHANNELS - 1])
        # without partials (gone): the newest finalised finer bucket, said to be one
        self.sync.command("DEL", keys.channel_part("occupancy", 86400, day))
        values = np.full(C.N_CHANNELS, np.nan)
        values[5] = 0.0034
        b = int(self.now) // 60 - 1
        self.sync.command("SET", keys.channel_final("occupancy", 60, b),
                          channels.encode_final(values, 60000.0))
        got = yield self.get_json("query?name=occupancy&step=86400")
        self.assertTrue(got["final"])
        self.assertEqual((got["asked"], got["interval"], got["bucket"]), (86400, 60, b))
        self.assertEqual(got["values"][5], 0.0034)
        # once the day is finalised, that is what the window shows
        values[5] = 0.003
        self.sync.command("SET", keys.channel_final("occupancy", 86400, day - 1),
                          channels.encode_final(values, 8.6e7))
        got = yield self.get_json("query?name=occupancy&step=86400")
        self.assertEqual((got["asked"], got["interval"], got["bucket"], got["final"]),
                         (86400, 86400, day - 1, True))


class NotFoundTests(SiteTestMixin, unittest.TestCase):
    """Every unknown path: the HTML 404 page for a browser, JSON for an API client."""

    @defer.inlineCallbacks
    def fetch(self, path, accept, **headers):
        headers["Accept"] = accept
        resp = yield treq.get(self.base + path, headers=headers, pool=self.pool)
        body = yield resp.content()
        return resp.code, resp.headers.getRawHeaders("content-type")[0], body

    @defer.inlineCallbacks
    def test_browser_gets_the_page_api_client_json(self):
        browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        for path in ("doesnotexist", "no/such/page", "static/nothing.js", "static/js/",
                     "static/"):
            code, kind, body = yield self.fetch(path, browser)
            self.assertEqual((code, kind), (404, "text/html; charset=utf-8"), path)
            self.assertIn(b"<h1>Not found</h1>", body, path)
            self.assertIn(b"static/css/minard.css", body, path)
            for accept in ("application/json", "*/*"):
                code, kind, body = yield self.fetch(path, accept)
                self.assertEqual((code, kind), (404, "application/json; charset=utf-8"), path)
                self.assertIn("/" + path, json.loads(body)["error"])
        # a JSON route keeps its JSON error whoever asks
        code, kind, body = yield self.fetch("get_status?name=nobody", browser)
        self.assertEqual((code, kind), (404, "application/json; charset=utf-8"))
        # a page with a bad name keeps its HTML page
        code, kind, body = yield self.fetch("view_log?name=nosuch", "application/json")
        self.assertEqual((code, kind), (404, "text/html; charset=utf-8"))
        # relative links that work from any depth (and under nginx's /monitoring/)
        code, kind, body = yield self.fetch("no/such/page", browser)
        self.assertIn(b'href="../../snostream"', body)
        # behind nginx the path named is the browser's, with the prefix nginx strips
        code, kind, body = yield self.fetch("doesnotexist", "application/json",
                                            **{"X-Forwarded-Prefix": "/monitoring"})
        self.assertEqual(json.loads(body)["error"], "There is no page at /monitoring/doesnotexist.")
