"""The data-server client: subscription handshake, error replies, silence, corrupt streams
(StringTransport + Clock), and over real TCP against the simulated data server."""
import types

import numpy as np
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from minard import constants as C
from minard.ingest import dataserver
from minard.sim.dataserver import DataServerFactory, data_server_service
from minard.stats import Stats
from minard.wire import datastream as ds
from tests.support import free_port, wait_for


class Listener:
    def __init__(self):
        self.frames = []
        self.events = []

    def on_records(self, frames):
        self.frames.extend(frames)

    def link_up(self, p):
        self.events.append("up")

    def subscribed(self, p):
        self.events.append("subscribed")

    def link_down(self, p):
        self.events.append("down")


def record(rid, payload, version=0):
    return ds.encode_record(rid, version, payload)


class ProtocolTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.listener = Listener()
        self.stats = Stats("test-producer")
        self.factory = dataserver.DataServerClientFactory(
            self.listener, self.stats, self.clock, subscribe_timeout=5, silence_timeout=20)

    def connect(self):
        p = self.factory.buildProtocol(None)
        t = StringTransport()
        p.makeConnection(t)
        return p, t

    def test_subscribes_on_connect(self):
        p, t = self.connect()
        self.assertEqual(t.value(), b"SCmd\0\0\0\x08\0\0\0\0CMOSBASE")
        self.assertEqual(self.listener.events, ["up"])

    def test_ok_then_records_split_anywhere(self):
        cm = ds.encode_cmos(3, 1, [1] * 16, range(32))
        stream = (ds.encode_response("OK") + record(C.RECORD_CMOS, cm)
                  + record(C.RECORD_BASE, bytes(1100), 2) + record(C.RECORD_PMT, b"x" * 50)
                  + record(C.RECORD_CMOS, cm))
        for cut in range(len(stream) + 1):
            self.listener.frames = []
            p, t = self.connect()
            p.dataReceived(stream[:cut])
            p.dataReceived(stream[cut:])
            self.assertTrue(p.subscribed)
            self.assertEqual([(f.record_id, f.version, f.payload) for f in self.listener.frames],
                             [(C.RECORD_CMOS, 0, cm), (C.RECORD_BASE, 2, bytes(1100)),
                              (C.RECORD_CMOS, 0, cm)])
            self.assertFalse(t.disconnected)
            p.connectionLost(None)
        self.assertEqual(self.stats.counters["unexpected_records"], len(stream) + 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=300), max_size=6))
    def test_fuzz(self, pieces):
        p, t = self.connect()
        for piece in pieces:
            p.dataReceived(piece)  # never raises: frames are forwarded, or the link dropped
        for f in self.listener.frames:
            self.assertIn(f.record_id, dataserver.WANTED)
        p.connectionLost(None)

    def test_error_reply_drops_and_backs_off(self):
        policy = self.factory.retry_policy(1.0, 30.0)
        first = policy(1)
        p, t = self.connect()
        p.dataReceived(ds.encode_response("unknown record type", 0))
        self.assertTrue(t.disconnected)
        self.assertFalse(p.subscribed)
        self.assertEqual(self.stats.counters["subscribe_errors"], 1)
        self.assertNotIn("subscribed", self.listener.events)
        p.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # every refusal in a row lengthens the wait before the next connection
        p, t = self.connect()
        p.dataReceived(ds.encode_response("too many subscriptions"))
        self.assertEqual(self.factory.failures, 2)
        # 1 s × 1.5^(attempt + failures), plus up to 1 s of jitter
        self.assertTrue(1.5 <= first < 2.5, first)
        self.assertTrue(1.5 ** 3 <= policy(1) < 1.5 ** 3 + 1)

    def test_no_reply_times_out(self):
        p, t = self.connect()
        self.clock.advance(4.9)
        self.assertFalse(t.disconnected)
        self.clock.advance(0.2)
        self.assertTrue(t.disconnected)
        self.assertEqual(self.stats.counters["subscribe_timeouts"], 1)
        p.connectionLost(None)

    def test_one_error_per_incident_then_warnings(self):
        """Each failed subscription is logged, but only the first since the last good one
        at error level (forwarded to the log server, an error is an alarm)."""
        from twisted.logger import LogLevel, globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def levels():
            return [e["log_level"] for e in events
                    if "subscription" in e.get("log_format", "")]

        for _ in range(3):  # a server that never answers
            p, t = self.connect()
            self.clock.advance(5.1)
            p.connectionLost(None)
        p, t = self.connect()  # one that refuses
        p.dataReceived(ds.encode_response("too many subscriptions"))
        p.connectionLost(None)
        self.assertEqual(levels(), [LogLevel.error] + [LogLevel.warn] * 3)
        p, t = self.connect()  # back to normal, then a new incident
        p.dataReceived(ds.encode_response("OK"))
        p.connectionLost(None)
        p, t = self.connect()
        self.clock.advance(5.1)
        p.connectionLost(None)
        self.assertEqual(levels()[-1], LogLevel.error)

    def test_records_without_reply_still_time_out(self):
        """A server that ignores the subscription (like the old test server) is retried,
        but what it sent is used."""
        p, t = self.connect()
        for _ in range(6):
            self.clock.advance(1)
            p.dataReceived(record(C.RECORD_BASE, bytes(1100)))
        self.assertTrue(t.disconnected)
        self.assertEqual(len(self.listener.frames), 4)  # the one at t=5 came too late

    def test_silence_drops(self):
        p, t = self.connect()
        p.dataReceived(ds.encode_response("OK"))
        for _ in range(10):
            self.clock.advance(15)
            p.dataReceived(record(C.RECORD_CMOS, bytes(1164)))
        self.assertFalse(t.disconnected)
        self.clock.advance(19)
        self.assertFalse(t.disconnected)
        self.clock.advance(1.5)
        self.assertTrue(t.disconnected)
        self.assertEqual(self.stats.counters["silent_drops"], 1)

    def test_corrupt_stream_drops(self):
        p, t = self.connect()
        p.dataReceived(ds.encode_response("OK") + ds.HEADER.pack(C.RECORD_CMOS, 10 ** 9, 0))
        self.assertTrue(t.disconnected)
        self.assertEqual(self.stats.counters["corrupt_stream"], 1)
        p.dataReceived(record(C.RECORD_CMOS, bytes(1164)))  # after the drop: ignored
        self.assertEqual(self.listener.frames, [])

    def test_zeros_after_ok_are_a_corrupt_stream(self):
        """A server sending zeros (records of id 0, length 0) is dropped after
        max_useless of them in a row, counted once as a corrupt stream."""
        self.factory.max_useless = 1000
        p, t = self.connect()
        p.dataReceived(ds.encode_response("OK") + record(C.RECORD_CMOS, bytes(1164)))
        sent = 0
        while not t.disconnected and sent < 10 ** 7:
            p.dataReceived(bytes(65536))
            sent += 65536
        self.assertEqual(sent, 65536)  # 5461 zero records in the first read: over the bound
        self.assertEqual(self.stats.counters["corrupt_useless_stream"], 1)
        self.assertEqual(self.stats.counters["corrupt_unexpected_record"], 65536 // 12)
        self.assertEqual(self.stats.counters["corrupt"], 65536 // 12 + 1)
        self.assertEqual(self.listener.events, ["up", "subscribed", "down"])  # at once
        self.assertEqual(self.stats.gauges, {"connected": 0, "subscribed": 0})
        self.assertEqual(self.factory.failures, 1)
        p.connectionLost(None)
        self.assertEqual(self.listener.events, ["up", "subscribed", "down"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unexpected_records_in_a_row(self):
        self.factory.max_useless = 50
        p, t = self.connect()
        p.dataReceived(ds.encode_response("OK"))
        pmt = record(C.RECORD_PMT, b"x" * 20)
        for _ in range(10):  # runs of 50 between wanted records: allowed
            p.dataReceived(pmt * 50 + record(C.RECORD_BASE, bytes(1100)))
        self.assertFalse(t.disconnected)
        p.dataReceived(pmt * 30)
        p.dataReceived(pmt * 21)  # the run carries over reads
        self.assertTrue(t.disconnected)
        self.assertEqual(self.stats.counters["corrupt_useless_stream"], 1)
        self.assertEqual(self.stats.counters["unexpected_records"], 551)
        self.assertEqual(len(self.listener.frames), 10)

    def test_repeated_replies_are_not_records(self):
        self.factory.max_useless = 50
        p, t = self.connect()
        p.dataReceived(ds.encode_response("OK") * 52)
        self.assertTrue(t.disconnected)
        self.assertEqual(self.stats.counters["corrupt_useless_stream"], 1)

    def test_only_records_reset_the_silence_timer(self):
        """Zeros, records not asked for and repeated replies keep coming: not alive."""
        p, t = self.connect()
        p.dataReceived(ds.encode_response("OK"))
        for _ in range(19):
            self.clock.advance(1)
            p.dataReceived(bytes(12) + record(C.RECORD_PMT, b"x") + ds.encode_response("OK"))
        self.assertFalse(t.disconnected)
        self.clock.advance(1.1)
        self.assertTrue(t.disconnected)
        self.assertEqual(self.stats.counters["silent_drops"], 1)
        self.assertEqual(self.listener.events, ["up", "subscribed", "down"])

    def test_silence_timeout_zero_is_off(self):
        self.factory.silence_timeout = 0
        p, t = self.connect()
        p.dataReceived(ds.encode_response("OK"))
        self.clock.advance(10 ** 6)
        self.assertFalse(t.disconnected)

    def test_stats_and_state(self):
        p, t = self.connect()
        self.assertEqual(self.stats.gauges["connected"], 1)
        p.dataReceived(ds.encode_response("OK"))
        self.assertEqual(self.stats.gauges["subscribed"], 1)
        p.connectionLost(None)
        self.assertEqual(self.stats.gauges, {"connected": 0, "subscribed": 0})
        self.assertEqual(self.listener.events, ["up", "subscribed", "down"])


def small_detector(seed=3):
    rng = np.random.default_rng(seed)
    return types.SimpleNamespace(rng=rng, present_crates=list(range(19)),
                                 hot_channels={5, 600, 9000}, dead_channels={7, 1000})


class RealConnectionTests(unittest.TestCase):
    """The client and the simulated server over loopback TCP, with the real reactor."""

    def start_server(self, factory=None, port=None):
        port = port or free_port()
        service = data_server_service("tcp:%d:interface=127.0.0.1" % port, small_detector(),
                                      reactor, factory=factory)
        service.startService()
        self.addCleanup(self.stop, service)
        return service, port

    @staticmethod
    def stop(service):
        for client in list(service.factory.clients):
            client.transport.abortConnection()
        if service.running:
            return service.stopService()

    def start_client(self, port, **timeouts):
        listener = Listener()
        stats = Stats("test")
        factory = dataserver.DataServerClientFactory(listener, stats, reactor, **timeouts)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = dataserver.client_service(endpoint, factory, reactor, initial=0.05,
                                           maximum=0.2)
        client.startService()
        self.addCleanup(client.stopService)
        return listener, stats, factory

    @defer.inlineCallbacks
    def test_records_flow(self):
        _, port = self.start_server()
        listener, stats, factory = self.start_client(port)
        yield wait_for(lambda: len(listener.frames) >= 3 * 19 * 2, timeout=10)
        self.assertIn("subscribed", listener.events)
        kinds = [f.record_id for f in listener.frames]
        self.assertEqual(set(kinds), {C.RECORD_CMOS, C.RECORD_BASE})
        crates = set()
        for f in listener.frames:
            if f.record_id == C.RECORD_CMOS:
                rec = ds.decode_cmos(f.payload)
                self.assertEqual(len(rec.index), 256)
            else:
                rec = ds.decode_base(f.payload)
            crates.add(rec.crate)
        self.assertEqual(crates, set(range(19)))

    @defer.inlineCallbacks
    def test_refused_subscription_is_retried(self):
        _, port = self.start_server(DataServerFactory(refuse="unknown record type"))
        listener, stats, factory = self.start_client(port)
        yield wait_for(lambda: stats.counters.get("connections", 0) >= 3, timeout=10)
        self.assertGreaterEqual(stats.counters["subscribe_errors"], 2)
        self.assertNotIn("subscribed", listener.events)
        self.assertEqual(listener.frames, [])

    @defer.inlineCallbacks
    def test_server_that_never_answers(self):
        _, port = self.start_server(DataServerFactory(answer=False))
        listener, stats, factory = self.start_client(port, subscribe_timeout=0.3)
        yield wait_for(lambda: stats.counters.get("subscribe_timeouts", 0) >= 2, timeout=10)
        self.assertGreaterEqual(stats.counters["connections"], 2)

    @defer.inlineCallbacks
    def test_socket_has_keepalive(self):
        from tests.test_ingest_dispatcher import assert_keepalive
        _, port = self.start_server()
        listener, stats, factory = self.start_client(port)
        yield wait_for(lambda: factory.connection is not None, timeout=10)
        assert_keepalive(self, factory.connection.transport.getHandle())

    @defer.inlineCallbacks
    def test_server_restart(self):
        service, port = self.start_server()
        listener, stats, factory = self.start_client(port)
        yield wait_for(lambda: "subscribed" in listener.events, timeout=10)
        yield self.stop(service)
        yield wait_for(lambda: "down" in listener.events, timeout=10)
        n = len(listener.frames)
        self.start_server(port=port)
        yield wait_for(lambda: listener.events.count("subscribed") >= 2
                       and len(listener.frames) > n + 10, timeout=15)
