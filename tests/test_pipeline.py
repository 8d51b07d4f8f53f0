"""End to end with real processes: a ControlHost dispatcher written here (independent of
minard.sim) -> `twistd minard --role=dispatch-push` -> N x `--role=dispatch-pull` -> Redis.
The sums over all stored fields must equal what was sent, exactly; so must the hits
behind every finalised 5-s occupancy bucket (hits / events per channel) and the 60-s
partials.
"""
import random
import struct

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from tests.channel_support import buckets, final, hits_of, open_buckets, parts
from tests.support import RedisTestMixin, RoleProcessesMixin, free_port, wait_for
from tests.test_aggregate_events import expected_sums, random_events
from tests.test_wire_sno import hand_built

N_EVENTS = 20000


class TestDispatcher(protocol.Protocol):
    """Minimal dispatcher: records the handshake, sends what the test gives it."""

    def connectionMade(self):
        self.received = b""
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.received += data

    def handshake_done(self):
        prefix = self.factory.prefix
        names = []
        data = self.received
        while len(data) >= prefix:
            size = struct.unpack(">i", data[8:12])[0]
            names.append((data[:8].rstrip(b"\0"), data[prefix:prefix + size]))
            data = data[prefix + size:]
        return names

    def connectionLost(self, reason):
        self.factory.connections.remove(self)


class TestDispatcherFactory(protocol.Factory):
    protocol = TestDispatcher

    def __init__(self, prefix):
        self.prefix = prefix
        self.connections = []


def frame(prefix, tag, payload):
    head = tag.ljust(8, b"\0") + struct.pack(">i", len(payload))
    return head + b"\0" * (prefix - 12) + payload


class PipelineTests(RoleProcessesMixin, RedisTestMixin, unittest.TestCase):
    timeout = 180

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.processes = []


    def total(self, field="TOTAL", suffix="trig"):
        total = 0
        for key in self.sync.command("KEYS", "ts:1:*:%s" % suffix):
            total += int(self.sync.command("HGET", key, field) or 0)
        return total

    @defer.inlineCallbacks
    def run_pipeline(self, dialect, workers, restart_dispatcher=False):
        prefix = 12 if dialect == "caspur" else 16
        control = ([b"Subscrib", b"Always", b"MyId"] if dialect == "caspur"
                   else [b"_Subscri", b"_Always", b"_MyId"])
        factory = TestDispatcherFactory(prefix)
        port_number = free_port()
        zmq = "tcp://127.0.0.1:%d" % free_port()
        listening = reactor.listenTCP(port_number, factory, interface="127.0.0.1")
        for i in range(workers):
            self.spawn("dispatch-pull", "--zmq", zmq, "--name", "pull-%d" % i)
        push = self.spawn("dispatch-push", "--host", "127.0.0.1", "--port", str(port_number),
                          "--dialect", dialect, "--zmq", zmq)
        yield wait_for(lambda: factory.connections and
                       len(factory.connections[0].handshake_done()) >= 3, timeout=30)
        handshake = factory.connections[0].handshake_done()
        self.assertEqual([t for t, _ in handshake[:3]], control)
        self.assertEqual(handshake[0][1], b"w RAWDATA w RECHDR")
        # the pull workers are up when each has published its stats
        yield wait_for(lambda: all(self.sync.command("EXISTS", "minard:stats:pull-%d" % i)
                                   for i in range(workers)), timeout=30)
        yield task.deferLater(reactor, 0.5, lambda: None)

        rng = random.Random(workers * 7 + prefix)
        events = random_events(rng, N_EVENTS)
        stream = b"".join(frame(prefix, b"RAWDATA", hand_built(*e)) for e in events)
        noise = frame(prefix, b"Born", b"someone") + frame(prefix, b"RECHDR",
                                                           b"RHDR" + b"\0" * 8)
        stream = noise + stream
        half = len(stream) // 2
        # send in pieces cut at arbitrary bytes
        cuts = sorted(rng.sample(range(1, half), 300)) + [half]
        position = 0
        for cut in cuts:
            factory.connections[0].transport.write(stream[position:cut])
            position = cut
            if rng.random() < 0.05:
                yield task.deferLater(reactor, 0.01, lambda: None)
        if restart_dispatcher:
            # finish the current frame, then kill the dispatcher and bring it back
            boundary = 0
            sent_before = 0
            while boundary < half:
                size = struct.unpack(">i", stream[boundary + 8:boundary + 12])[0]
                sent_before += stream[boundary:boundary + 8] == b"RAWDATA\0"
                boundary += prefix + size
            factory.connections[0].transport.write(stream[half:boundary])
            position = boundary
            yield wait_for(lambda: self.total() == sent_before, timeout=30)
            yield listening.stopListening()
            factory.connections[0].transport.loseConnection()
            yield wait_for(lambda: not factory.connections, timeout=10)
            yield task.deferLater(reactor, 1.0, lambda: None)
            listening = reactor.listenTCP(port_number, factory, interface="127.0.0.1")
            yield wait_for(lambda: factory.connections and
                           len(factory.connections[0].handshake_done()) >= 3, timeout=30)
        factory.connections[0].transport.write(stream[position:])
        yield wait_for(lambda: self.total() >= N_EVENTS, timeout=60)
        yield task.deferLater(reactor, 2.5, lambda: None)  # nothing more may arrive
        yield listening.stopListening()

        trig, nhit, charge, occ, hist = expected_sums(events)
        for field in trig:
            self.assertEqual(self.total(field), trig[field], field)
            self.assertEqual(self.total(field, "trig:nhit"), nhit[field], field)
            self.assertEqual(self.total(field, "trig:charge"), charge[field], field)
        yield self.check_occupancy(occ)
        newest = max(self.sync.command("KEYS", "ts:1:*:trig"),
                     key=lambda k: int(k.split(":")[2]))
        last = self.sync.hgetall(newest)
        self.assertEqual((int(last["run"]), int(last["subrun"]), int(last["gtid"])),
                         events[-1][:3])
        self.assertEqual(self.sync.command("GET", "dispatcher"), "127.0.0.1")
        stats = self.sync.hgetall("minard:stats:dispatch-push")
        self.assertEqual(int(stats.get("dropped_records", 0)), 0)
        for p in self.processes:
            self.assertTrue(p.alive(), p.log()[-3000:])
        code = push.stop()
        self.assertIn(code, (0, -15), push.log()[-3000:])  # twistd re-raises SIGTERM
        yield wait_for(lambda: self.sync.command("GET", "dispatcher") is None, timeout=5)

    @defer.inlineCallbacks
    def check_occupancy(self, occ):
        """Every 5-s bucket with events is finalised once every worker has passed it (a
        few seconds after the last event) and holds hits / events: the hits behind its
        values, over all buckets, are what was sent, and so are its events. The 60-s
        buckets may still be open: their partials (every worker's) add up likewise."""
        yield wait_for(lambda: buckets(self.sync, "occupancy", 5, "part")
                       and not open_buckets(self.sync, "occupancy", 5), timeout=30)
        fives = buckets(self.sync, "occupancy", 5)
        self.assertEqual(fives, buckets(self.sync, "occupancy", 5, "part"))
        hits, events = {}, 0
        for b in fives:
            got = final(self.sync, "occupancy", 5, b)
            for i, h in hits_of(self, got).items():
                hits[i] = hits.get(i, 0) + h
            events += got["denominator"]
            # the finalised values are exactly the parts' hits / events
            num, den = parts(self.sync, "occupancy", 5, b)
            self.assertEqual(got["denominator"], den)
            self.assertEqual(hits_of(self, got), {int(i): int(num[i])
                                                  for i in num.nonzero()[0]})
        self.assertEqual(hits, occ)
        self.assertEqual(events, N_EVENTS)
        hits, events = {}, 0
        for b in buckets(self.sync, "occupancy", 60, "part"):
            num, den = parts(self.sync, "occupancy", 60, b)
            for i in num.nonzero()[0]:
                hits[int(i)] = hits.get(int(i), 0) + int(num[i])
            events += den
        self.assertEqual(hits, occ)
        self.assertEqual(events, N_EVENTS)

    def test_one_worker_caspur(self):
        return self.run_pipeline("caspur", 1)

    def test_three_workers_ligier(self):
        return self.run_pipeline("ligier", 3)

    def test_dispatcher_restart_mid_stream(self):
        return self.run_pipeline("caspur", 2, restart_dispatcher=True)
