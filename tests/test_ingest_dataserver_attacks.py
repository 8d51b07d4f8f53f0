"""The real `twistd minard --role=data-producer` against a hostile or half-dead data server
(issue 12, items 9 and 11), with a data server written here and ZeroMQ PULL sockets in the
test:

* zeros after `OK` (6.4 MB/s): a corrupt stream, dropped and reconnected with a growing
  delay, with bounded CPU; records are taken again once the server sends them;
* a trickle of zeros after `OK` (bytes, never a record): dropped after --idle-timeout,
  because only records reset the silence clock.
Traffic only on 127.0.0.1.
"""
import struct
import time

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from minard import constants as C, zmqlink
from tests.support import RedisTestMixin, RoleProcess, free_port, wait_for
from tests.test_dispatch_push_attacks import (ZERO_CHUNK, ZERO_TICK, ZEROS_PER_CONNECTION,
                                              cpu_seconds, sleep)


def header(rid, payload, version=0):
    return struct.pack(">III", rid, len(payload), version) + payload


BASE_RECORD = header(C.RECORD_BASE, struct.pack(">II16II", 3, 1, *([0xFFFFFFFF] * 16), 0)
                     + bytes([130] * 512) + bytes(512))


class HostileServer(protocol.Protocol):
    """Answers the subscription with OK, then sends what the factory's mode says."""

    def connectionMade(self):
        self.buffer = b""
        self.subscribed = False
        self.zeros = 0
        self.opened = time.time()
        self.factory.clients.append(self)

    def dataReceived(self, data):
        self.buffer += data
        while len(self.buffer) >= 12:
            rid, length, _ = struct.unpack(">III", self.buffer[:12])
            if len(self.buffer) < 12 + length:
                return
            self.buffer = self.buffer[12 + length:]
            if rid == C.RECORD_SCMD:
                self.factory.subscriptions += 1
                self.subscribed = True
                self.transport.write(header(C.RECORD_SRSP, b"OK\0", C.RECORD_SCMD))

    def tick(self):
        if not self.subscribed:
            return
        mode = self.factory.mode
        if mode == "zeros" and self.zeros < ZEROS_PER_CONNECTION:
            self.transport.write(bytes(ZERO_CHUNK))
            self.zeros += ZERO_CHUNK
        elif mode == "drip":
            self.transport.write(bytes(12))
        elif mode == "records":
            self.transport.write(BASE_RECORD)

    def connectionLost(self, reason):
        self.factory.clients.remove(self)
        self.factory.lifetimes.append(time.time() - self.opened)


class HostileServerFactory(protocol.Factory):
    protocol = HostileServer

    def __init__(self, mode):
        self.mode = mode
        self.clients = []
        self.subscriptions = 0
        self.lifetimes = []
        self.loop = task.LoopingCall(self.tick)

    def tick(self):
        for c in list(self.clients):
            c.tick()


class ProducerAttackTests(RedisTestMixin, unittest.TestCase):
    timeout = 90

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.cmos_zmq = "tcp://127.0.0.1:%d" % free_port()
        self.base_zmq = "tcp://127.0.0.1:%d" % free_port()
        self.pulled = []
        for address in (self.cmos_zmq, self.base_zmq):
            link = zmqlink.PullLink(address, lambda m: self.pulled.extend(m[1:]))
            self.addCleanup(link.shutdown)
        self.links = []

    def serve(self, mode, interval):
        server = HostileServerFactory(mode)
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [c.transport.abortConnection() for c in list(server.clients)])
        server.loop.start(interval)
        self.addCleanup(server.loop.stop)
        return server, port.getHost().port

    def spawn_producer(self, port, *args):
        producer = RoleProcess("data-producer", "--redis", self.redis_server.url, "--port",
                               str(port), "--cmos-zmq", self.cmos_zmq, "--base-zmq",
                               self.base_zmq, *args).start()
        self.addCleanup(producer.stop)
        return producer

    def stats(self):
        return {k: float(v) for k, v in
                self.sync.hgetall("minard:stats:data-producer").items()}

    @defer.inlineCallbacks
    def test_zeros_after_ok_are_corrupt_dropped_and_cheap(self):
        server, port = self.serve("zeros", ZERO_TICK)
        producer = self.spawn_producer(port)
        yield wait_for(lambda: server.subscriptions, timeout=30)
        start_cpu, start = cpu_seconds(producer.process.pid), time.time()
        yield sleep(6.0)
        cpu = cpu_seconds(producer.process.pid) - start_cpu
        wall = time.time() - start
        yield sleep(1.2)
        stats = self.stats()
        self.assertGreaterEqual(stats["corrupt_useless_stream"], 2, stats)
        self.assertGreaterEqual(stats["connections"], 2)
        self.assertEqual(stats.get("records", 0), 0)
        self.assertLess(cpu / wall, 0.25, "producer used %.2f s of CPU in %.1f s" % (cpu, wall))
        self.assertLess(stats["connections"], 8)  # the delay grows between bad connections
        # the server sends records again: taken at the producer's next attempt
        server.mode = "records"
        yield wait_for(lambda: len(self.pulled) >= 10, timeout=40)
        self.assertEqual(self.pulled[0], BASE_RECORD)
        self.assertTrue(producer.alive(), producer.log()[-3000:])
        self.assertEqual(producer.log().count("corrupt input(s) of kind useless_stream"), 1)

    @defer.inlineCallbacks
    def test_bytes_without_records_do_not_keep_the_link(self):
        idle = 2.0
        server, port = self.serve("drip", 0.2)
        producer = self.spawn_producer(port, "--idle-timeout", "%g" % idle)
        yield wait_for(lambda: len(server.lifetimes) >= 2, timeout=30)
        for lifetime in server.lifetimes[:2]:
            self.assertLess(lifetime, idle + 1.5)
        yield wait_for(lambda: self.stats().get("silent_drops", 0) >= 2, timeout=5)
        stats = self.stats()
        self.assertEqual(stats.get("corrupt_useless_stream", 0), 0)  # too slow for that bound
        self.assertGreaterEqual(stats["unexpected_records"], 10)
        self.assertTrue(producer.alive(), producer.log()[-3000:])
