"""The data stream end to end with real processes:
a data server written here (independent of minard.sim) -> `twistd minard
--role=data-producer` -> 2 x `--role=data-consumer` for CMOS + 1 for BASE -> Redis, and
the same with `--role=simulator` as the data server."""
import struct

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.trial import unittest

import numpy as np

from minard import constants as C
from minard.store.datastream import decode_slot_state
from tests.channel_support import assert_means, buckets, final
from tests.support import RedisTestMixin, RoleProcess, free_port, wait_for

FULL = [0xFFFFFFFF] * 16


def header(rid, payload, version=0):
    return struct.pack(">III", rid, len(payload), version) + payload


def cmos_record(crate, slot_mask, masks, counts):
    payload = (struct.pack(">II16II", crate, slot_mask, *masks, 0)
               + struct.pack(">256I", *(list(counts) + [0] * (256 - len(counts))))
               + bytes(64))
    return header(C.RECORD_CMOS, payload)


def base_record(crate, slot_mask, masks, raw):
    payload = struct.pack(">II16II", crate, slot_mask, *masks, 0) + bytes(raw) + bytes(512)
    return header(C.RECORD_BASE, payload)


class TestServer(protocol.Protocol):
    """Answers the subscription with OK; the test sends records through `send`."""

    def connectionMade(self):
        self.factory.clients.append(self)
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        while len(self.buffer) >= 12:
            rid, length, version = struct.unpack(">III", self.buffer[:12])
            if len(self.buffer) < 12 + length:
                return
            payload, self.buffer = self.buffer[12:12 + length], self.buffer[12 + length:]
            if rid == C.RECORD_SCMD:
                self.factory.subscriptions.append(payload)
                self.transport.write(header(C.RECORD_SRSP, b"OK\0", C.RECORD_SCMD))

    def connectionLost(self, reason):
        self.factory.clients.remove(self)


class TestServerFactory(protocol.Factory):
    protocol = TestServer

    def __init__(self):
        self.clients = []
        self.subscriptions = []

    def send(self, data):
        for c in self.clients:
            c.transport.write(data)


class DataStreamPipelineTests(RedisTestMixin, unittest.TestCase):
    timeout = 120

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.processes = []
        self.cmos_zmq = "tcp://127.0.0.1:%d" % free_port()
        self.base_zmq = "tcp://127.0.0.1:%d" % free_port()

    def tearDown(self):
        codes = [p.stop() for p in self.processes]
        for p, code in zip(self.processes, codes):
            if "Traceback" in p.log() or code not in (0, None, -15):  # twistd re-raises SIGTERM
                raise AssertionError("%s exited %s:\n%s" % (p.role, code, p.log()[-3000:]))

    def spawn(self, role, *args):
        p = RoleProcess(role, "--redis", self.redis_server.url, *args).start()
        self.processes.append(p)
        return p

    def start_chain(self, data_port):
        self.spawn("data-producer", "--port", str(data_port),
                   "--cmos-zmq", self.cmos_zmq, "--base-zmq", self.base_zmq)
        for _ in range(2):
            self.spawn("data-consumer", "--zmq", self.cmos_zmq)
        self.spawn("data-consumer", "--zmq", self.base_zmq)

    def stamp(self, crate, channel):
        """The receipt time (ns) stored with a channel's last count, or None."""
        value = self.sync.command("HGET", "cmos:state:%d" % crate, str(channel >> 5 & 15))
        if not value:
            return None
        _, times = decode_slot_state(value.encode("utf-8", "surrogateescape"))
        return int(times[channel & 31]) or None

    @defer.inlineCallbacks
    def test_independent_server_exact_values(self):
        factory = TestServerFactory()
        port = free_port()
        listening = yield endpoints.TCP4ServerEndpoint(
            reactor, port, interface="127.0.0.1").listen(factory)
        self.addCleanup(listening.stopListening)
        self.start_chain(port)
        yield wait_for(lambda: factory.subscriptions, timeout=30)
        self.assertEqual(factory.subscriptions[0], b"CMOSBASE")
        yield wait_for(lambda: self.sync.command("KEYS", "minard:stats:data-consumer-*")
                       and len(self.sync.command("KEYS", "minard:stats:data-consumer-*")) == 3,
                       timeout=30)
        yield task.deferLater(reactor, 1.0, lambda: None)  # PULL sockets connected

        crate, slots = 5, (1 << 2) | (1 << 11)
        masks = list(FULL)
        masks[11] = 0x0000FFFF                     # upper half of slot 11 masked out
        rate = [10.0 * (k + 1) for k in range(64)]  # Hz, per counted channel
        index = [crate << 9 | s << 5 | ch for s in (2, 11) for ch in range(32)]
        samples = {}       # channel -> [(bucket, rate)]
        currents = {}
        prev = {}
        count = [1000] * 64
        for step in range(6):
            counts = list(count)
            if step == 3:
                counts[1] |= 1 << 31               # invalid once
            factory.send(cmos_record(crate, slots, masks, counts)
                         + base_record(crate, slots, masks, [127 + step] * 512))
            field = index[0]
            old = self.stamp(crate, field)
            yield wait_for(lambda: self.stamp(crate, field) not in (None, old), timeout=10)
            t = self.stamp(crate, field)
            for k, i in enumerate(index):
                masked_in = k < 32 or (k - 32) < 16
                if masked_in:
                    currents.setdefault(i, []).append((t // 10 ** 9 // 5, float(step)))
                if k == 1 and step == 3:
                    continue  # an invalid count: no rate, and the last valid pair stays
                if i in prev and masked_in:
                    pc, pt = prev[i]
                    if counts[k] > pc and 0 < t - pt < 10 * 10 ** 9:
                        samples.setdefault(i, []).append(
                            (t // 10 ** 9 // 5, (counts[k] - pc) / ((t - pt) / 1e9)))
                prev[i] = (counts[k], t)

            count = [c + int(r * 0.7) for c, r in zip(count, rate)]
            yield task.deferLater(reactor, 0.7, lambda: None)
        factory.send(header(C.RECORD_BASE, b"short"))  # corrupt: counted, not fatal

        for name, values in (("cmos", samples), ("base", currents)):
            expected = sorted({b for v in values.values() for b, _ in v})
            for b in expected:
                yield wait_for(lambda: final(self.sync, name, 5, b) is not None, timeout=30)
                means = {}
                for i, vs in values.items():
                    in_b = [v for bb, v in vs if bb == b]
                    if in_b:
                        means[i] = sum(in_b) / len(in_b)
                assert_means(self, final(self.sync, name, 5, b), means, (name, b))
            # no other bucket has data (nor is finalised)
            self.assertEqual(buckets(self.sync, name, 5, "part"), expected)
            self.assertEqual(buckets(self.sync, name, 5), expected)
        yield wait_for(lambda: any(
            self.sync.command("HGET", k, "corrupt_base_bad_length") == "1"
            for k in self.sync.command("KEYS", "minard:stats:data-consumer-*")), timeout=10)

    @defer.inlineCallbacks
    def test_with_the_simulator(self):
        data_port = free_port()
        self.spawn("simulator", "--data-listen", "tcp:%d:interface=127.0.0.1" % data_port,
                   "--dispatcher-listen", "tcp:%d:interface=127.0.0.1" % free_port(),
                   "--rate", "5", "--seed", "7")
        self.start_chain(data_port)

        def finalised(name):
            """The finalised 5-s buckets with (nearly) every channel of 19 crates, every
            crate read at least twice (a CMOS rate needs two counts)."""
            out = []
            for b in buckets(self.sync, name, 5):
                got = final(self.sync, name, 5, b)
                if got is None:
                    continue
                per_crate = (~np.isnan(got["values"])).reshape(20, 512).sum(axis=1)
                if (per_crate[:19] > 512 * 0.9).all():
                    out.append(got)
            return out

        yield wait_for(lambda: finalised("cmos") and finalised("base"), timeout=60)
        got = finalised("cmos")[0]
        rates = np.sort(got["values"][~np.isnan(got["values"])])
        self.assertGreater(rates[-1], 15000)          # hot channels
        self.assertLess(rates[len(rates) // 2], 2000)  # ordinary noise
        self.assertEqual(np.flatnonzero(~np.isnan(got["crate:max"])).tolist(), list(range(19)))
