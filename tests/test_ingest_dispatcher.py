"""The ControlHost dispatcher client (minard.ingest.dispatcher): records split anywhere,
corrupt and useless streams (zeros, junk tags, empty records) dropped and counted, the idle
timeout (paused under back-pressure), the backoff, and TCP keepalive on a real socket.
StringTransport + Clock, and loopback TCP for the socket options."""
import socket
import struct

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from minard import constants as C
from minard.ingest import dispatcher
from minard.ingest.keepalive import enable_keepalive, keepalive_options
from minard.stats import Stats
from minard.wire.controlhost import CASPUR, LIGIER
from tests.support import wait_for


class Listener:
    def __init__(self):
        self.records = []
        self.frames = []
        self.events = []

    def on_records(self, records):
        self.records.extend(records)

    def on_frames(self, frames):
        self.frames.extend(frames)

    def link_up(self, p):
        self.events.append("up")

    def link_down(self, p):
        self.events.append("down")


def record(n=0, size=44):
    """A record-shaped payload (12-byte header + body)."""
    return struct.pack(">III", C.RECORD_PMT, size, 0) + bytes([n % 256]) * size


class ClientTestCase(unittest.TestCase):
    dialect = CASPUR
    idle_timeout = 10.0
    max_useless = 100

    def setUp(self):
        self.clock = task.Clock()
        self.listener = Listener()
        self.stats = Stats("test-push")
        self.factory = dispatcher.DispatcherClientFactory(
            self.listener, self.stats, self.clock, dialect=self.dialect,
            idle_timeout=self.idle_timeout, max_useless=self.max_useless)

    def connect(self):
        p = self.factory.buildProtocol(None)
        t = StringTransport()
        p.makeConnection(t)
        return p, t

    def frame(self, tag, payload=b""):
        return self.dialect.frame(tag, payload)


class StreamTests(ClientTestCase):

    def test_handshake_and_state(self):
        p, t = self.connect()
        self.assertEqual(t.value(), CASPUR.client_handshake("w RAWDATA w RECHDR", "minard"))
        self.assertEqual(self.listener.events, ["up"])
        self.assertEqual(self.stats.gauges["connected"], 1)
        p.connectionLost(None)
        self.assertEqual(self.listener.events, ["up", "down"])
        self.assertEqual(self.stats.gauges["connected"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_records_split_anywhere(self):
        stream = (self.frame("Born", b"someone") + self.frame("RAWDATA", record(1))
                  + self.frame("RECHDR", record(2, 72)) + self.frame("RAWDATA", record(3)))
        for cut in range(len(stream) + 1):
            self.listener.records = []
            p, t = self.connect()
            p.dataReceived(stream[:cut])
            p.dataReceived(stream[cut:])
            self.assertEqual(self.listener.records, [record(1), record(2, 72), record(3)])
            self.assertFalse(t.disconnected)
            p.connectionLost(None)
        self.assertEqual(self.stats.counters["ignored_frames"], len(stream) + 1)
        self.assertEqual(self.stats.counters["corrupt"], 0)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=300), max_size=8))
    def test_fuzz(self, pieces):
        self.setUp()  # a fresh client and counters for each example
        self.factory.max_useless = 3
        p, t = self.connect()
        for piece in pieces:
            p.dataReceived(piece)  # never raises: records are handed on, or the link dropped
        self.assertEqual(self.stats.counters["corrupt"],
                         self.stats.counters.get("corrupt_stream", 0)
                         + self.stats.counters.get("corrupt_useless_stream", 0))
        self.assertLessEqual(self.stats.counters["corrupt"], 1)
        self.assertEqual(t.disconnected, self.stats.counters["corrupt"] == 1)
        p.connectionLost(None)

    def test_every_frame_goes_to_on_frames(self):
        p, t = self.connect()
        p.dataReceived(self.frame("Born", b"x") + self.frame("RAWDATA", record()))
        self.assertEqual([tag.rstrip(b"\0") for tag, _ in self.listener.frames],
                         [b"Born", b"RAWDATA"])

    def test_size_lie_is_a_corrupt_stream(self):
        p, t = self.connect()
        p.dataReceived(self.frame("RAWDATA", record(7)) + b"RAWDATA\0" + struct.pack(">i", -5)
                       + self.frame("RAWDATA", record(8)))
        self.assertTrue(t.disconnected)
        self.assertEqual(self.listener.records, [record(7)])  # what came before is kept
        self.assertEqual(self.stats.counters["corrupt_stream"], 1)
        self.assertEqual(self.stats.counters["corrupt_streams_dropped"], 1)
        self.assertEqual(self.listener.events, ["up", "down"])  # at once, before the close
        self.assertEqual(self.factory.failures, 1)
        p.connectionLost(None)
        self.assertEqual(self.listener.events, ["up", "down"])
        self.assertNotIn("partial_frames_dropped", self.stats.counters)

    def test_partial_frame_at_close_is_counted(self):
        p, t = self.connect()
        p.dataReceived(self.frame("RAWDATA", record())[:30])
        p.connectionLost(None)
        self.assertEqual(self.stats.counters["partial_frames_dropped"], 1)


class UselessStreamTests(ClientTestCase):
    """Frames that carry no record: counted as a corrupt stream after max_useless in a row."""

    def feed_zeros(self, p, nbytes, chunk=4096):
        sent = 0
        while sent < nbytes and not p.dropped:
            p.dataReceived(bytes(chunk))
            sent += chunk
        return sent

    def test_zeros_are_a_corrupt_stream(self):
        p, t = self.connect()
        p.dataReceived(self.frame("RAWDATA", record()))
        sent = self.feed_zeros(p, 10 ** 6)
        prefix = self.dialect.prefix_size
        self.assertTrue(t.disconnected)
        # dropped at the read that took the run past the bound, not a megabyte later
        self.assertLessEqual(sent, (self.max_useless + 1) * prefix + 4096)
        self.assertEqual(self.stats.counters["corrupt_useless_stream"], 1)
        self.assertEqual(self.stats.counters["corrupt"], 1)
        self.assertEqual(self.listener.events, ["up", "down"])
        self.assertEqual(self.stats.gauges["connected"], 0)
        self.assertEqual(self.listener.records, [record()])
        p.dataReceived(self.frame("RAWDATA", record(1)))  # after the drop: ignored
        self.assertEqual(len(self.listener.records), 1)
        p.connectionLost(None)
        self.assertNotIn("partial_frames_dropped", self.stats.counters)  # garbage, not a record
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zeros_one_byte_at_a_time(self):
        p, t = self.connect()
        prefix = self.dialect.prefix_size
        for _ in range((self.max_useless + 1) * prefix):
            p.dataReceived(b"\0")
        self.assertTrue(t.disconnected)
        self.assertEqual(self.stats.counters["corrupt_useless_stream"], 1)

    def test_the_bound_is_frames_in_a_row(self):
        p, t = self.connect()
        junk = self.frame("Born", b"x")
        for i in range(20):  # 20 x max_useless junk frames, a record between each run
            p.dataReceived(junk * self.max_useless + self.frame("RAWDATA", record(i)))
        self.assertFalse(t.disconnected)
        self.assertEqual(len(self.listener.records), 20)
        self.assertEqual(self.stats.counters["corrupt"], 0)
        p.dataReceived(junk)  # the run carries over reads
        self.assertFalse(t.disconnected)
        p.dataReceived(junk * self.max_useless)
        self.assertTrue(t.disconnected)
        self.assertEqual(self.stats.counters["corrupt_useless_stream"], 1)

    def test_a_read_of_records_ends_the_run(self):
        p, t = self.connect()
        junk = self.frame("Born", b"x") * self.max_useless
        for i in range(5):
            p.dataReceived(junk)
            p.dataReceived(self.frame("RAWDATA", record(i)))
        self.assertFalse(t.disconnected)

    def test_a_run_inside_one_read(self):
        p, t = self.connect()
        p.dataReceived(self.frame("RAWDATA", record()) + self.frame("X") * (self.max_useless + 1)
                       + self.frame("RAWDATA", record()))
        self.assertTrue(t.disconnected)

    def test_wanted_tag_without_a_record_is_useless(self):
        p, t = self.connect()
        p.dataReceived(self.frame("RAWDATA", b"") * (self.max_useless // 2)
                       + self.frame("RECHDR", b"short") * (self.max_useless // 2 + 1))
        self.assertTrue(t.disconnected)
        self.assertEqual(self.stats.counters["corrupt_useless_stream"], 1)

    def test_backoff_grows_with_corrupt_connections_and_resets_on_a_record(self):
        policy = self.factory.retry_policy(1.0, 1000.0)
        for _ in range(3):
            p, t = self.connect()
            self.feed_zeros(p, 10 ** 5)
            p.connectionLost(None)
        self.assertEqual(self.factory.failures, 3)
        self.assertTrue(1.5 ** 4 <= policy(1) < 1.5 ** 4 + 1)
        p, t = self.connect()
        p.dataReceived(self.frame("RAWDATA", record()))
        self.assertEqual(self.factory.failures, 0)
        self.assertTrue(1.5 <= policy(1) < 2.5)


class LigierUselessStreamTests(UselessStreamTests):
    dialect = LIGIER


class IdleTests(ClientTestCase):

    def test_silence_drops_the_link_at_once(self):
        p, t = self.connect()
        for i in range(10):
            self.clock.advance(9)
            p.dataReceived(self.frame("RAWDATA", record(i)))
        self.assertFalse(t.disconnected)
        self.clock.advance(9.9)
        self.assertFalse(t.disconnected)
        self.clock.advance(0.2)
        self.assertTrue(t.disconnected)
        self.assertTrue(p.idle_dropped)
        self.assertEqual(self.stats.counters["idle_drops"], 1)
        self.assertEqual(self.listener.events, ["up", "down"])
        self.assertEqual(self.stats.gauges["connected"], 0)
        self.assertEqual(self.factory.failures, 0)  # a quiet dispatcher is not a bad one
        self.assertEqual(self.stats.counters["corrupt"], 0)
        p.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_frames_without_records_do_not_keep_it_alive(self):
        p, t = self.connect()
        for _ in range(10):
            self.clock.advance(2)
            p.dataReceived(self.frame("Born", b"x") + bytes(12))
        self.assertTrue(t.disconnected)
        self.assertEqual(self.stats.counters["idle_drops"], 1)

    def test_bytes_of_a_slow_frame_do_not_keep_it_alive(self):
        p, t = self.connect()
        data = self.frame("RAWDATA", record(size=1000))
        for i in range(15):
            self.clock.advance(1)
            p.dataReceived(data[i:i + 1])
        self.assertTrue(t.disconnected)

    def test_paused_link_is_not_idle(self):
        """Back-pressure stops reading the socket: that silence is ours, not the link's."""
        p, t = self.connect()
        p.pauseProducing()
        self.assertEqual(t.producerState, "paused")
        self.clock.advance(100)
        self.assertFalse(t.disconnected)
        p.resumeProducing()
        self.assertEqual(t.producerState, "producing")
        self.clock.advance(9.9)
        self.assertFalse(t.disconnected)
        self.clock.advance(0.2)
        self.assertTrue(t.disconnected)

    def test_zero_switches_it_off(self):
        self.factory.idle_timeout = 0
        p, t = self.connect()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10 ** 6)
        self.assertFalse(t.disconnected)


class KeepaliveTests(unittest.TestCase):
    """The options on the real socket of a real connection."""

    def test_options_for_this_platform(self):
        options = dict(((level, opt), v) for level, opt, v in keepalive_options())
        self.assertEqual(options[(socket.SOL_SOCKET, socket.SO_KEEPALIVE)], 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(options[(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)],
                             C.KEEPALIVE_IDLE)
            self.assertEqual(options[(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)],
                             C.KEEPALIVE_INTERVAL)
            self.assertEqual(options[(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)],
                             C.KEEPALIVE_COUNT)

    def test_no_socket_no_keepalive(self):
        self.assertFalse(enable_keepalive(StringTransport()))

    @defer.inlineCallbacks
    def test_dispatcher_socket_has_keepalive(self):
        server = protocol.Factory.forProtocol(protocol.Protocol)
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        listener = Listener()
        factory = dispatcher.DispatcherClientFactory(listener, Stats("t"), reactor)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = dispatcher.client_service(endpoint, factory, reactor)
        client.startService()
        self.addCleanup(client.stopService)
        yield wait_for(lambda: factory.connection is not None, timeout=10)
        assert_keepalive(self, factory.connection.transport.getHandle())


def assert_keepalive(case, sock):
    """The socket probes an idle link after KEEPALIVE_IDLE s and gives up after
    KEEPALIVE_COUNT probes KEEPALIVE_INTERVAL apart."""
    case.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
    for name, value in (("TCP_KEEPIDLE", C.KEEPALIVE_IDLE),
                        ("TCP_KEEPINTVL", C.KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", C.KEEPALIVE_COUNT)):
        if hasattr(socket, name):
            case.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name)),
                             value, name)

