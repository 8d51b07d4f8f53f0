"""/stream: one snapshot per tick for all clients; a stalled client is skipped and dropped."""
import json
import socket
import time

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from minard.web.stream import sse_message, staleness
from tests.support import wait_for
from tests.web_support import SiteTestMixin


class StreamReader(protocol.Protocol):
    """A /stream client over plain TCP; `messages` are the decoded data payloads."""

    stall = False

    def connectionMade(self):
        self.buffer = b""
        self.messages = []
        self.closed = False
        if self.stall:
            sock = self.transport.getHandle()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.write(b"GET /stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        if self.stall:
            self.transport.pauseProducing()  # never read: the server's buffers fill

    def dataReceived(self, data):
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    self.messages.append(json.loads(line[6:]))

    def connectionLost(self, reason):
        self.closed = True


class StallingReader(StreamReader):
    stall = True


class StreamTests(SiteTestMixin, unittest.TestCase):
    use_clock = False

    def connect(self, cls=StreamReader):
        return protocol.ClientCreator(reactor, cls).connectTCP("127.0.0.1",
                                                               self.port.getHost().port)

    def tearDown(self):
        for p in getattr(self, "clients", []):
            p.transport.abortConnection()

    @defer.inlineCallbacks
    def test_many_clients_share_one_snapshot(self):
        hub = self.site.hub
        hub.interval = 0.1
        now = int(time.time())
        for s in range(now - 5, now + 30):
            self.sync.command("HSET", "ts:1:%d:trig" % s, "TOTAL", "1000", "10", "7",
                              "run", "123", "gtid", str(s))
            self.sync.command("HSET", "ts:1:%d:trig:nhit" % s, "TOTAL", "50000", "10", "700")
            self.sync.command("SET", "ts:1:%d:heartbeat" % s, "1")
        self.sync.command("SET", "dispatcher", "builder-host")
        self.clients = []
        for _ in range(60):
            p = yield self.connect()
            self.clients.append(p)
        yield wait_for(lambda: all(len(p.messages) >= 1 for p in self.clients), timeout=20)
        self.assertEqual(len(hub.clients), 60)
        counters = self.site.stats.counters
        s0, m0 = counters["stream_snapshots"], counters["stream_messages"]
        seen = [len(p.messages) for p in self.clients]
        yield wait_for(lambda: all(len(p.messages) >= n + 5 for p, n in
                                   zip(self.clients, seen)), timeout=20)
        # one Redis snapshot per tick, sent to all 60 clients
        snapshots = counters["stream_snapshots"] - s0
        self.assertGreaterEqual(snapshots, 5)
        self.assertEqual(counters["stream_messages"] - m0, 60 * snapshots)
        msg = self.clients[0].messages[-1]
        self.assertEqual(msg["rates"]["TOTAL"], 1000.0)
        self.assertEqual(msg["rates"]["PULGT"], 7.0)
        self.assertEqual(msg["rates"]["100L"], 0.0)
        self.assertEqual(msg["nhit"]["TOTAL"], 50.0)
        self.assertEqual(msg["nhit"]["PULGT"], 100.0)
        self.assertEqual(msg["run"], "123")
        self.assertEqual(msg["dispatcher"], "builder-host")
        self.assertFalse(msg["stale"]["stale"])
        # every client saw the same message for the same second
        by_id = {}
        for p in self.clients:
            for m in p.messages:
                by_id.setdefault((m["time"], m["server_time"]), json.dumps(m, sort_keys=True))
                self.assertEqual(by_id[(m["time"], m["server_time"])],
                                 json.dumps(m, sort_keys=True))
        for p in self.clients:
            p.transport.loseConnection()
        yield wait_for(lambda: not hub.clients)
        self.assertIsNone(hub.loop)  # no clients: no more Redis reads

    @defer.inlineCallbacks
    def test_stalled_client_is_skipped_then_dropped(self):
        hub = self.site.hub
        hub.interval = 0.02
        hub.drop_after = 1.0
        now = int(time.time())
        # big messages (a wide nhit histogram) so that a stalled socket fills quickly
        hist = [x for n in range(6000) for x in (n, 1000 + n)]
        for b in range(now // 5 - 3, now // 5 + 12):
            self.sync.command("HSET", "ts:5:%d:nhit:hist" % b, *hist)
        healthy = yield self.connect()
        stalled = yield self.connect(StallingReader)
        self.clients = [healthy, stalled]
        yield wait_for(lambda: self.site.stats.counters.get("stream_dropped"), timeout=30)
        received = len(healthy.messages)
        self.assertGreater(self.site.stats.counters.get("stream_skipped", 0), 0)
        self.assertGreaterEqual(self.site.stats.counters.get("stream_dropped", 0), 1)
        self.assertEqual(len(hub.clients), 1)
        # the healthy client kept receiving at full rate, while and after the other stalled
        yield wait_for(lambda: len(healthy.messages) >= received + 20, timeout=10)
        self.assertFalse(healthy.closed)
        # the stalled client was disconnected: it sees that as soon as it reads again
        stalled.transport.resumeProducing()
        yield wait_for(lambda: stalled.closed, timeout=10)

    @defer.inlineCallbacks
    def test_stale_when_data_stop(self):
        self.site.hub.interval = 0.1
        p = yield self.connect()
        self.clients = [p]
        yield wait_for(lambda: p.messages, timeout=10)
        msg = p.messages[-1]
        self.assertTrue(msg["stale"]["stale"])
        self.assertTrue(msg["stale"]["severe"])
        self.assertIn("no pull-worker heartbeat", msg["stale"]["reason"])
        self.assertIsNone(msg["rates"]["TOTAL"])  # no data is not zero
        self.assertFalse(msg["present"])
        # workers alive but no events: the rates are zero, and the page is stale (no events)
        now = int(time.time())
        for s in range(now - 3, now + 30):
            self.sync.command("SET", "ts:1:%d:heartbeat" % s, "1")
        count = len(p.messages)
        yield wait_for(lambda: len(p.messages) > count + 1, timeout=10)
        msg = p.messages[-1]
        self.assertEqual(msg["rates"]["TOTAL"], 0.0)
        self.assertTrue(msg["present"])
        self.assertTrue(msg["stale"]["stale"])
        self.assertFalse(msg["stale"]["severe"])
        self.assertIn("no events", msg["stale"]["reason"])
        self.assertNotIn("heartbeat", msg["stale"]["reason"])

    @defer.inlineCallbacks
    def test_new_alarms_are_pushed(self):
        self.site.hub.interval = 0.1
        self.sync.command("SET", "alarms:count", "3")
        p = yield self.connect()
        self.clients = [p]
        yield wait_for(lambda: len(p.messages) >= 2, timeout=10)
        self.assertEqual(p.messages[-1]["alarms"], [])  # old alarms are not pushed
        alarm = {"id": 3, "level": 40, "message": "<img src=x>", "time": "2023-01-01T00:00:00Z"}
        self.sync.command("SET", "alarms:3", json.dumps(alarm))
        self.sync.command("SET", "alarms:count", "4")
        yield wait_for(lambda: any(m["alarms"] for m in p.messages), timeout=10)
        pushed = [a for m in p.messages for a in m["alarms"]]
        self.assertEqual(pushed, [alarm])


class SnapshotTests(SiteTestMixin, unittest.TestCase):
    """What one /stream message says about the last seconds, against seeded Redis."""

    @defer.inlineCallbacks
    def test_previous_second_is_read_again(self):
        s = 1_700_000_000
        self.sync.command("HSET", "ts:1:%d:trig" % (s - 1), "TOTAL", "750", "10", "30")
        self.sync.command("HSET", "ts:1:%d:trig:nhit" % (s - 1), "TOTAL", "7500", "10", "90")
        self.sync.command("HSET", "ts:1:%d:trig" % s, "TOTAL", "1000", "run", "42")
        self.sync.command("SET", "ts:1:%d:heartbeat" % s, "1")
        snap = yield self.site.reads.stream_snapshot(s)
        self.assertEqual((snap["time"], snap["rates"]["TOTAL"], snap["run"]), (s, 1000.0, "42"))
        prev = snap["previous"]
        self.assertEqual(prev["time"], s - 1)
        self.assertTrue(prev["present"])
        self.assertEqual(prev["rates"]["TOTAL"], 750.0)
        self.assertEqual(prev["rates"]["PULGT"], 30.0)
        self.assertEqual(prev["nhit"]["TOTAL"], 10.0)
        self.assertEqual(prev["nhit"]["PULGT"], 3.0)
        self.assertIsNone(prev["charge"]["TOTAL"])
        # a pull worker flushes second s late: the next message corrects it
        self.sync.command("HINCRBY", "ts:1:%d:trig" % s, "TOTAL", "250")
        snap = yield self.site.reads.stream_snapshot(s + 1)
        self.assertIsNone(snap["rates"]["TOTAL"])  # s + 1: nothing stored, no heartbeat
        self.assertEqual((snap["previous"]["time"], snap["previous"]["rates"]["TOTAL"]),
                         (s, 1250.0))
        # before s - 1 there are no data at all: null, not zero
        snap = yield self.site.reads.stream_snapshot(s - 1)
        self.assertFalse(snap["previous"]["present"])
        self.assertIsNone(snap["previous"]["rates"]["TOTAL"])


class StalenessTests(unittest.TestCase):
    def test_staleness(self):
        s = staleness(1000.5, 998, 999, stale_after=10)
        self.assertFalse(s["stale"])
        self.assertEqual((s["events_age"], s["heartbeat_age"]), (1, 0))
        s = staleness(1000.5, 980, 999, stale_after=10)
        self.assertTrue(s["stale"])
        self.assertFalse(s["severe"])  # workers alive, no events: stale, detector quiet
        self.assertIn("no events for 19 s", s["reason"])
        s = staleness(1000.5, None, None, stale_after=10)
        self.assertTrue(s["severe"])

    def test_sse_message(self):
        data = sse_message({"a": "x\ny"}, event_id=5)
        self.assertEqual(data, b'id: 5\ndata: {"a":"x\\ny"}\n\n')
