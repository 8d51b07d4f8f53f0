"""dispatch-push wiring (minard.services.dispatch_push): the dispatcher client's records go
to the Forwarder, the `dispatcher` key lives exactly while the link is up (deleted the
moment a link is dropped, not left to expire), and back-pressure pauses the link together
with its idle clock. StringTransport + Clock; the real role is in test_dispatch_push_attacks.
"""
import io
import struct
import sys

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from minard import constants as C, tap
from minard.services import dispatch_push
from minard.stats import Stats
from minard.store import keys
from minard.wire.controlhost import CASPUR
from tests.test_push_forwarder import Link


class FakeRedis:
    def __init__(self):
        self.data = {}
        self.ops = []

    def set(self, key, value, expire=None):
        self.ops.append(("set", key, expire))
        self.data[key] = value
        return defer.succeed(True)

    def delete(self, key):
        self.ops.append(("delete", key))
        self.data.pop(key, None)
        return defer.succeed(1)




def options(**extra):
    values = {"host": "127.0.0.1", "port": C.DISPATCHER_PORT, "dialect": "caspur",
              "subscription": "w RAWDATA w RECHDR", "zmq": "tcp://127.0.0.1:1",
              "idle-timeout": 5.0}
    values.update(extra)
    return values


def record(n=0):
    return struct.pack(">III", C.RECORD_PMT, 44, 0) + bytes([n]) * 44


class PushWiringTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.stats = Stats("dispatch-push")
        self.redis = FakeRedis()
        self.link = Link()
        self.push = dispatch_push.DispatchPush(options(), self.clock, self.stats, self.redis,
                                               link=self.link)
        self.push.startService()
        self.addCleanup(self.push.stopService)
        self.factory = self.push.client_factory()

    def connect(self):
        p = self.factory.buildProtocol(None)
        t = StringTransport()
        p.makeConnection(t)
        return p, t

    def test_records_forwarded_and_key_set(self):
        p, t = self.connect()
        self.assertEqual(self.redis.data, {keys.DISPATCHER: "127.0.0.1"})
        self.assertEqual(self.redis.ops, [("set", keys.DISPATCHER,
                                           dispatch_push.DISPATCHER_TTL)])
        p.dataReceived(CASPUR.frame("RAWDATA", record(1)) + CASPUR.frame("RECHDR", record(2)))
        self.clock.advance(dispatch_push.BATCH_DELAY)
        self.assertEqual([m[1:] for m in self.link.sent], [[record(1), record(2)]])
        self.assertEqual(self.stats.counters["records"], 2)

    def test_idle_link_drops_the_key_at_once(self):
        p, t = self.connect()
        self.clock.advance(4.9)
        self.assertIn(keys.DISPATCHER, self.redis.data)
        self.clock.advance(0.2)
        self.assertTrue(t.disconnected)
        self.assertEqual(self.redis.data, {})  # before the socket has even closed
        self.assertIsNone(self.push.connection)
        self.assertEqual(self.stats.gauges["connected"], 0)
        self.push.refresh_dispatcher_key()  # the refresh timer does not bring it back
        self.assertEqual(self.redis.data, {})
        p.connectionLost(None)
        self.assertEqual(self.redis.ops.count(("delete", keys.DISPATCHER)), 1)

    def test_zero_stream_drops_the_key_at_once(self):
        p, t = self.connect()
        p.dataReceived(bytes(12 * (C.MAX_USELESS_FRAMES + 1)))
        self.assertTrue(t.disconnected)
        self.assertEqual(self.redis.data, {})
        self.assertEqual(self.stats.counters["corrupt_useless_stream"], 1)

    def test_backpressure_pauses_the_link_and_its_idle_clock(self):
        p, t = self.connect()
        self.link.open = False
        p.dataReceived(CASPUR.frame("RAWDATA", record()))
        self.clock.advance(dispatch_push.BATCH_DELAY)
        self.assertEqual(t.producerState, "paused")
        for _ in range(int(4.5 / dispatch_push.RETRY_INTERVAL)):  # held 4.5 s: not idle
            self.clock.advance(dispatch_push.RETRY_INTERVAL)
        self.assertFalse(t.disconnected)
        self.link.open = True
        self.clock.advance(dispatch_push.RETRY_INTERVAL)
        self.assertEqual(t.producerState, "producing")
        self.assertEqual(len(self.link.sent), 1)
        self.clock.advance(4.9)  # the idle clock starts again when reading resumes
        self.assertFalse(t.disconnected)
        self.clock.advance(0.2)
        self.assertTrue(t.disconnected)

    def test_capture_gets_every_frame(self):
        path = self.mktemp()
        push = dispatch_push.DispatchPush(options(capture=path), self.clock, self.stats,
                                          self.redis, link=self.link)
        push.startService()
        p = push.client_factory().buildProtocol(None)
        p.makeConnection(StringTransport())
        stream = CASPUR.frame("Born", b"x") + CASPUR.frame("RAWDATA", record())
        p.dataReceived(stream)
        push.stopService()
        with open(path, "rb") as f:
            self.assertEqual(f.read(), stream)


class OptionTests(unittest.TestCase):
    """--idle-timeout of dispatch-push and data-producer: seconds, 0 = off."""

    def parse(self, *args):
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self):
        self.assertEqual(self.parse("--role=dispatch-push")["idle-timeout"],
                         C.DISPATCHER_IDLE_TIMEOUT)
        self.assertEqual(self.parse("--role=data-producer")["idle-timeout"],
                         C.DATA_SERVER_SILENCE)

    def test_values(self):
        self.assertEqual(self.parse("--role=dispatch-push", "--idle-timeout", "3")
                         ["idle-timeout"], 3.0)
        self.assertEqual(self.parse("--role=data-producer", "--idle-timeout", "0")
                         ["idle-timeout"], 0.0)
        for bad in ("-1", "soon", "inf", "nan"):
            self.patch(sys, "stderr", io.StringIO())
            with self.assertRaises(SystemExit):
                self.parse("--role=dispatch-push", "--idle-timeout", bad)
