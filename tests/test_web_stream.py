"""/stream: one snapshot per tick for all clients; a client that cannot keep up is dropped
promptly, whether it never reads or reads too slowly."""
import json
import socket
import time

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from minard.web.stream import sse_message, staleness
from tests.support import wait_for
from tests.web_support import SiteTestMixin


class StreamReader(protocol.Protocol):
    """A /stream client over plain TCP; `messages` are the decoded data payloads."""

    stall = False
    headers = b""

    def connectionMade(self):
        self.buffer = b""
        self.messages = []
        self.closed = False
        self.closed_at = None
        if self.stall:
            sock = self.transport.getHandle()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.write(b"GET /stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                             + self.headers + b"\r\n")
        if self.stall:
            self.transport.pauseProducing()  # never read: the server's buffers fill

    def dataReceived(self, data):
        self.received = getattr(self, "received", 0) + len(data)
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    self.messages.append(json.loads(line[6:]))

    def connectionLost(self, reason):
        self.closed = True
        self.closed_at = time.monotonic()


class StallingReader(StreamReader):
    stall = True


class SlowReader(StreamReader):
    """Reads, but only `rate` bytes a second (small sips straight from the socket, the
    transport itself never reading), through a small receive buffer."""

    stall = True
    rate = 10000
    sip = 0.05

    def connectionMade(self):
        StreamReader.connectionMade(self)
        self.sips = task.LoopingCall(self.take)
        self.sips.start(self.sip, now=False)

    def take(self):
        if self.closed:
            return
        try:
            data = self.transport.getHandle().recv(int(self.rate * self.sip))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.dataReceived(data)
        else:  # the server closed the connection
            self.transport.abortConnection()

    def connectionLost(self, reason):
        StreamReader.connectionLost(self, reason)
        if self.sips.running:
            self.sips.stop()


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
        # (one message counted in s0 may still be on its way to the clients)
        yield wait_for(lambda: all(len(p.messages) >= n + 6 for p, n in
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

    def seed_wide_histograms(self, bins):
        """Big messages (a wide nhit histogram): a stalled socket fills at once."""
        now = int(time.time())
        hist = [x for n in range(bins) for x in (n, 1000 + n)]
        for b in range(now // 5 - 3, now // 5 + 12):
            self.sync.command("HSET", "ts:5:%d:nhit:hist" % b, *hist)

    @defer.inlineCallbacks
    def test_client_holding_too_much_is_dropped_at_once(self):
        """Never reads, and the messages are big: what it has not taken exceeds
        max_unsent within a tick or two, long before drop_after."""
        hub = self.site.hub
        hub.interval = 0.2
        self.assertEqual((hub.drop_after, hub.max_unsent), (5.0, 64 * 1024))  # the defaults
        self.seed_wide_histograms(12000)
        healthy = yield self.connect()
        stalled = yield self.connect(StallingReader)
        self.clients = [healthy, stalled]
        yield wait_for(lambda: len(healthy.messages) >= 1, timeout=10)
        size = len(sse_message(healthy.messages[-1]))
        self.assertGreater(size, hub.max_unsent)
        started = time.monotonic()
        yield wait_for(lambda: self.site.stats.counters.get("stream_dropped"), timeout=10)
        self.assertLess(time.monotonic() - started, 2.0)  # not drop_after (5 s)
        self.assertEqual(len(hub.clients), 1)
        received = len(healthy.messages)
        yield wait_for(lambda: len(healthy.messages) >= received + 5, timeout=10)
        self.assertFalse(healthy.closed)
        # the stalled client was disconnected: it sees that as soon as it reads again
        stalled.transport.resumeProducing()
        yield wait_for(lambda: stalled.closed, timeout=10)

    @defer.inlineCallbacks
    def test_client_that_never_reads_is_dropped_promptly(self):
        """Small messages (~1 KB, 4 a second): once what it has not taken reaches our
        side it is behind, and it is dropped drop_after (5 s) later, not 30 s; what it
        holds meanwhile stays below max_unsent."""
        hub = self.site.hub
        hub.interval = 0.25
        healthy = yield self.connect()
        stalled = yield self.connect(StallingReader)
        self.clients = [healthy, stalled]
        yield wait_for(lambda: len(hub.clients) == 2, timeout=10)
        client = next(c for c in hub.clients if c.request.channel.transport.getPeer().port
                      == stalled.transport.getHost().port)
        behind = []
        yield wait_for(lambda: client.behind_since is not None and not behind.append(
            time.monotonic()), timeout=30)
        yield wait_for(lambda: client.gone, timeout=15)
        waited = time.monotonic() - behind[0]
        self.assertLess(client.dropped_for["unsent"], hub.max_unsent)  # for time, not bytes
        self.assertGreater(waited, hub.drop_after - 0.5)
        self.assertLess(waited, hub.drop_after + 2.0)
        self.assertEqual(self.site.stats.counters.get("stream_dropped"), 1)
        self.assertEqual(len(hub.clients), 1)
        self.assertFalse(healthy.closed)
        stalled.transport.resumeProducing()
        yield wait_for(lambda: stalled.closed, timeout=10)

    @defer.inlineCallbacks
    def test_client_that_stops_reading_is_dropped_before_its_buffers_fill(self):
        """An ordinary receive buffer (a window of ~64 KB or more) would take ~20 s of
        ~1 KB messages, 4 a second, to fill before anything piled up on our side; the
        window it advertises shrinks at once, so it is behind a couple of seconds after it
        stops reading and dropped drop_after later, our queue for it still empty."""
        hub = self.site.hub
        hub.interval = 0.25
        healthy = yield self.connect()
        quiet = yield self.connect()
        self.clients = [healthy, quiet]
        yield wait_for(lambda: len(quiet.messages) >= 2 and len(hub.clients) == 2, timeout=10)
        client = next(c for c in hub.clients if c.request.channel.transport.getPeer().port
                      == quiet.transport.getHost().port)
        self.assertGreater(client.window_max, 4 * hub.unread_slack)
        quiet.transport.pauseProducing()  # stops reading
        stopped = time.monotonic()
        yield wait_for(lambda: client.gone, timeout=30)
        self.assertLess(time.monotonic() - stopped, hub.drop_after + 6)
        # dropped for what it left unread in its kernel, nothing waiting on our side
        self.assertEqual(client.dropped_for["unsent"], 0)
        self.assertGreater(client.dropped_for["unread"], hub.unread_slack)
        self.assertGreaterEqual(client.dropped_for["behind"], hub.drop_after)
        self.assertEqual(self.site.stats.counters.get("stream_dropped"), 1)
        count = len(healthy.messages)
        yield wait_for(lambda: len(healthy.messages) >= count + 4, timeout=10)
        self.assertFalse(healthy.closed)
        quiet.transport.resumeProducing()
        yield wait_for(lambda: quiet.closed, timeout=10)

    @defer.inlineCallbacks
    def test_client_that_reads_too_slowly_is_dropped(self):
        """Reads 10 KB/s of a ~40 KB/s stream: it is never stalled for long (the old hub
        never dropped such a client) but always behind, and what it has not taken grows
        past max_unsent within seconds."""
        hub = self.site.hub
        hub.interval = 0.1
        self.seed_wide_histograms(300)  # ~4 KB a message, 10 a second
        healthy = yield self.connect()
        slow = yield self.connect(SlowReader)
        self.clients = [healthy, slow]
        started = time.monotonic()
        yield wait_for(lambda: slow.closed, timeout=60)
        self.assertGreater(getattr(slow, "received", 0), 0)  # it did read
        # its 4 KB receive buffer fills at once, then 30 KB/s pile up on our side
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(self.site.stats.counters.get("stream_dropped"), 1)
        received = len(healthy.messages)
        yield wait_for(lambda: len(healthy.messages) >= received + 5, timeout=10)
        self.assertFalse(healthy.closed)
        self.assertEqual(len(hub.clients), 1)

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


class ReplicaStateTests(SiteTestMixin, unittest.TestCase):
    """A web reading a Redis replica puts the replica's lag into every /stream message
    (minard.js shows "REPLICA BEHIND ..." from it); without one the field is null."""

    @defer.inlineCallbacks
    def test_replica_state_in_the_message(self):
        snap = yield self.site.hub.snapshot(1_700_000_000.5)
        self.assertIsNone(snap["replica"])

        class Lag:
            def state(self):
                return {"lag": 12.5, "behind": True, "link": "down"}

        self.site.hub.replica_lag = Lag()
        snap = yield self.site.hub.snapshot(1_700_000_000.5)
        self.assertEqual(snap["replica"], {"lag": 12.5, "behind": True, "link": "down"})


class FirstAlarmTests(SiteTestMixin, unittest.TestCase):
    """The very first alarm of a fresh Redis (no alarms:count before it) reaches the
    screens like every later one."""

    @defer.inlineCallbacks
    def test_first_alarm_ever_is_sent(self):
        import json
        snap = yield self.site.hub.snapshot(1_700_000_000.5)
        self.assertEqual((snap["alarms"], snap["latest_alarm"]), ([], None))
        self.sync.command("SET", "alarms:0", json.dumps(
            {"id": 0, "level": 40, "message": "builder - not responding",
             "time": "2023-11-14T22:13:20Z"}), "EX", 600)
        self.sync.command("SET", "alarms:count", "1")
        snap = yield self.site.hub.snapshot(1_700_000_001.5)
        self.assertEqual([a["id"] for a in snap["alarms"]], [0])
        self.assertEqual(snap["latest_alarm"], 0)
        snap = yield self.site.hub.snapshot(1_700_000_002.5)
        self.assertEqual(snap["alarms"], [])  # sent once
