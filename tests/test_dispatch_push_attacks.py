"""The real `twistd minard --role=dispatch-push` against hostile and dead dispatcher links
(issue 12, items 9 and 11), with a dispatcher written here (tests.test_pipeline's) and a
ZeroMQ PULL socket in the test:

* a dispatcher sending zeros (6.4 MB/s): the push counts a corrupt stream, drops it and
  reconnects with a growing delay, using little CPU; when the dispatcher sends events
  again, they are forwarded;
* a relay between dispatcher and push that stops forwarding without closing (what a
  powered-off builder, a cut cable or a hung dispatcher look like to the push): noticed
  within --idle-timeout, the `dispatcher` key deleted at that moment, and the push
  reconnects and resumes when the relay forwards again.
Traffic only on 127.0.0.1.
"""
import os
import random
import time

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.trial import unittest

from minard import zmqlink
from tests.support import RedisTestMixin, RoleProcess, free_port, wait_for
from tests.test_aggregate_events import random_events
from tests.test_pipeline import TestDispatcherFactory, frame
from tests.test_wire_sno import hand_built

PREFIX = 12  # caspur framing
#: Zeros written per connection at most (memory of this test process stays bounded).
ZEROS_PER_CONNECTION = 4 * 1024 * 1024
ZERO_CHUNK = 64 * 1024
ZERO_TICK = 0.01  # 64 KiB every 10 ms: 6.4 MB/s, the rate of the issue


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def cpu_seconds(pid):
    """User + system CPU of a process so far (from /proc)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sender:
    """Writes to every connection of a TestDispatcherFactory on a timer: zeros (at most
    ZEROS_PER_CONNECTION per connection) or events."""

    def __init__(self, factory, seed=12):
        self.factory = factory
        self.mode = "events"
        self.zeros_sent = {}
        rng = random.Random(seed)
        self.events = [frame(PREFIX, b"RAWDATA", hand_built(*e))
                       for e in random_events(rng, 200)]
        self.events_sent = 0
        self.loop = task.LoopingCall(self.tick)

    def start(self, interval=ZERO_TICK):
        self.loop.start(interval)
        return self

    def stop(self):
        if self.loop.running:
            self.loop.stop()

    def tick(self):
        for c in list(self.factory.connections):
            if self.mode == "zeros":
                sent = self.zeros_sent.get(c, 0)
                if sent < ZEROS_PER_CONNECTION:
                    c.transport.write(bytes(ZERO_CHUNK))
                    self.zeros_sent[c] = sent + ZERO_CHUNK
            elif self.mode == "events":
                i = self.events_sent % len(self.events)
                c.transport.write(self.events[i])
                self.events_sent += 1


class RelayInbound(protocol.Protocol):
    """The push's side of the relay: connects onward to the dispatcher."""

    def connectionMade(self):
        self.peer = None
        self.pending = []
        relay = self.factory
        relay.pairs.append(self)
        relay.accepted += 1
        if relay.stalled:
            self.transport.pauseProducing()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", relay.target)
        onward = protocol.Factory.forProtocol(RelayOutbound)
        onward.inbound = self
        d = endpoint.connect(onward)
        d.addCallbacks(self.onward_connected, lambda f: self.transport.abortConnection())

    def onward_connected(self, outbound):
        self.peer = outbound
        if self.factory.stalled:
            outbound.transport.pauseProducing()
        for data in self.pending:
            outbound.transport.write(data)
        self.pending = []

    def dataReceived(self, data):
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def connectionLost(self, reason):
        if self in self.factory.pairs:
            self.factory.pairs.remove(self)
        if self.peer is not None:
            self.peer.transport.loseConnection()


class RelayOutbound(protocol.Protocol):

    def dataReceived(self, data):
        self.factory.inbound.transport.write(data)

    def connectionLost(self, reason):
        self.factory.inbound.transport.loseConnection()


class StallingRelay(protocol.Factory):
    """A TCP relay that can stop forwarding without closing anything: it stops reading
    both sides (the kernel still ACKs, like a hung dispatcher's or a stuck router's)."""

    protocol = RelayInbound

    def __init__(self, target):
        self.target = target
        self.pairs = []
        self.accepted = 0
        self.stalled = False

    def _transports(self):
        for p in self.pairs:
            yield p.transport
            if p.peer is not None:
                yield p.peer.transport

    def stall(self):
        self.stalled = True
        for t in self._transports():
            t.pauseProducing()

    def resume(self):
        self.stalled = False
        for t in list(self._transports()):
            t.resumeProducing()

    def close(self):
        for t in list(self._transports()):
            t.abortConnection()


class PushAttackTests(RedisTestMixin, unittest.TestCase):
    timeout = 90

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.dispatcher = TestDispatcherFactory(PREFIX)
        self.dispatcher_port = free_port()
        listening = reactor.listenTCP(self.dispatcher_port, self.dispatcher,
                                      interface="127.0.0.1")
        self.addCleanup(self._close, listening, self.dispatcher)
        self.sender = Sender(self.dispatcher)
        self.addCleanup(self.sender.stop)
        self.zmq = "tcp://127.0.0.1:%d" % free_port()
        self.pulled = []
        self.pull = zmqlink.PullLink(self.zmq, lambda m: self.pulled.extend(m[1:]))
        self.addCleanup(self.pull.shutdown)

    @staticmethod
    def _close(listening, factory):
        for c in list(factory.connections):
            c.transport.abortConnection()
        return listening.stopListening()

    def spawn_push(self, port, *args):
        push = RoleProcess("dispatch-push", "--redis", self.redis_server.url, "--host",
                           "127.0.0.1", "--port", str(port), "--zmq", self.zmq,
                           *args).start()
        self.addCleanup(push.stop)
        return push

    def stats(self):
        return {k: float(v) for k, v in
                self.sync.hgetall("minard:stats:dispatch-push").items()}

    def records(self):
        self.pull.kick()
        return len(self.pulled)

    @defer.inlineCallbacks
    def test_zero_stream_is_corrupt_dropped_and_cheap(self):
        self.sender.mode = "zeros"
        self.sender.start()
        push = self.spawn_push(self.dispatcher_port)
        yield wait_for(lambda: self.sender.zeros_sent, timeout=30)
        start_cpu, start = cpu_seconds(push.process.pid), time.time()
        yield sleep(6.0)
        cpu = cpu_seconds(push.process.pid) - start_cpu
        wall = time.time() - start
        yield sleep(1.2)  # the last stats snapshot
        stats = self.stats()
        self.assertGreaterEqual(stats["corrupt_useless_stream"], 3, stats)
        self.assertGreaterEqual(stats["connections"], 3)
        self.assertEqual(stats["corrupt"], stats["corrupt_useless_stream"])
        self.assertEqual(stats.get("records", 0), 0)
        # a dropped zero stream reads ~120 kB per connection: the push is nearly idle
        self.assertLess(cpu / wall, 0.25, "push used %.2f s of CPU in %.1f s" % (cpu, wall))
        # the reconnections grow further apart (backoff over corrupt connections)
        self.assertLess(stats["connections"], 12)
        self.assertIsNone(self.sync.command("GET", "dispatcher"))
        # the dispatcher sends events again: the push takes them (at its next attempt)
        self.sender.mode = "events"
        yield wait_for(lambda: self.records() >= 20, timeout=30)
        yield wait_for(lambda: self.sync.command("GET", "dispatcher") == "127.0.0.1",
                       timeout=5)
        self.assertTrue(push.alive(), push.log()[-3000:])
        self.assertEqual(push.log().count("corrupt input(s) of kind useless_stream"), 1)

    @defer.inlineCallbacks
    def test_silent_link_is_noticed_and_resumed(self):
        idle = 3.0
        relay = StallingRelay(self.dispatcher_port)
        relay_port = reactor.listenTCP(0, relay, interface="127.0.0.1")
        self.addCleanup(relay_port.stopListening)
        self.addCleanup(relay.close)
        self.sender.start(0.05)
        push = self.spawn_push(relay_port.getHost().port, "--idle-timeout", "%g" % idle)
        yield wait_for(lambda: self.records() >= 20, timeout=30)
        self.assertEqual(self.sync.command("GET", "dispatcher"), "127.0.0.1")
        # the relay stops forwarding, closing nothing
        relay.stall()
        stalled = time.time()
        yield wait_for(lambda: self.sync.command("GET", "dispatcher") is None,
                       timeout=idle + 5, interval=0.02)
        noticed = time.time() - stalled
        self.assertGreater(noticed, idle - 0.5)   # records flowed until the stall
        self.assertLess(noticed, idle + 1.5)      # idle timeout + a Redis round trip
        yield wait_for(lambda: self.stats().get("idle_drops", 0) >= 1, timeout=5)
        # the push reconnects (to the relay, which accepts but still forwards nothing)
        yield wait_for(lambda: relay.accepted >= 2, timeout=10)
        before = self.records()
        yield sleep(1.0)
        self.assertEqual(self.records(), before)
        relay.resume()
        yield wait_for(lambda: self.records() >= before + 20, timeout=15)
        yield wait_for(lambda: self.sync.command("GET", "dispatcher") == "127.0.0.1",
                       timeout=5)
        yield sleep(1.2)
        stats = self.stats()
        self.assertEqual(stats["connected"], 1)
        self.assertEqual(stats.get("corrupt", 0), 0)
        self.assertTrue(push.alive(), push.log()[-3000:])
