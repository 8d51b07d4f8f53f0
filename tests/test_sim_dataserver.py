"""The simulated data server: subscription replies, what it sends, and how its counts
and currents follow the synthetic detector."""
import types

import numpy as np
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from minard import constants as C
from minard.sim import dataserver as sim
from minard.wire import datastream as ds


def detector(seed=11, crates=range(19)):
    return types.SimpleNamespace(rng=np.random.default_rng(seed), present_crates=list(crates),
                                 hot_channels={3 << 9 | 4 << 5 | 1, 3 << 9 | 12 << 5 | 9},
                                 dead_channels={3 << 9 | 2, 10 << 9 | 15 << 5 | 31})


class ServerProtocolTests(unittest.TestCase):
    def connect(self, factory=None):
        factory = factory or sim.DataServerFactory()
        p = factory.buildProtocol(None)
        t = StringTransport()
        p.makeConnection(t)
        return factory, p, t

    def replies(self, t):
        frames = ds.FrameDecoder().feed(t.value())
        t.clear()
        return [(f.record_id, f.version, ds.decode_response(f.payload)) for f in frames]

    def test_subscription_replies(self):
        factory, p, t = self.connect()
        p.dataReceived(ds.encode_subscribe([C.RECORD_CMOS]))
        self.assertEqual(self.replies(t), [(C.RECORD_SRSP, C.RECORD_SCMD, "OK")])
        p.dataReceived(ds.encode_subscribe([ds.record_id("XXXX")]))
        self.assertEqual(self.replies(t), [(C.RECORD_SRSP, 0, "unknown record type")])
        p.dataReceived(ds.encode_record(C.RECORD_SCMD, 0x4944, b"name\0"))
        self.assertEqual(self.replies(t), [(C.RECORD_SRSP, 0, "unknown command type")])
        self.assertEqual(p.subscription, {C.RECORD_CMOS})  # errors keep the old one

    def test_only_subscribed_records_and_slow_clients_lose(self):
        factory, p, t = self.connect()
        factory.broadcast(C.RECORD_CMOS, b"c")
        self.assertEqual(t.value(), b"")
        p.dataReceived(ds.encode_subscribe([C.RECORD_BASE]))
        t.clear()
        factory.broadcast(C.RECORD_CMOS, b"c")
        factory.broadcast(C.RECORD_BASE, b"b")
        self.assertEqual(t.value(), b"b")
        p.pauseProducing()
        factory.broadcast(C.RECORD_BASE, b"b")
        self.assertEqual(factory.missed, 1)
        p.resumeProducing()
        factory.broadcast(C.RECORD_BASE, b"b")
        self.assertEqual(t.value(), b"bb")
        p.connectionLost(None)
        self.assertEqual(factory.clients, set())


class ReadoutTests(unittest.TestCase):
    def test_records_of_a_crate(self):
        readout = sim.CrateReadout(detector())
        out = readout.read(3, 1000.0)
        self.assertEqual([rid for rid, _ in out], [C.RECORD_CMOS, C.RECORD_CMOS, C.RECORD_BASE])
        frames = ds.FrameDecoder().feed(b"".join(m for _, m in out))
        first, second, base = frames
        a, b = ds.decode_cmos(first.payload), ds.decode_cmos(second.payload)
        self.assertEqual((a.crate, a.truncated_slots, b.truncated_slots), (3, 0, 0))
        self.assertEqual(sorted(np.concatenate([a.index, b.index]).tolist()),
                         list(range(3 << 9, 4 << 9)))
        cur = ds.decode_base(base.payload)
        self.assertEqual(cur.crate, 3)
        self.assertGreater(len(cur.index), 490)  # all but the masked-out channels

    def test_rates_follow_the_detector(self):
        d = detector()
        readout = sim.CrateReadout(d)
        hot = sorted(d.hot_channels)
        dead = 3 << 9 | 2
        before = readout.count.copy()
        readout.read(3, 0.0)
        readout.read(3, 2.0)
        delta = (readout.count - before) % sim.COUNT_MODULO
        crate3 = slice(3 << 9, 4 << 9)
        self.assertEqual(delta[dead], 0)
        for h in hot:
            self.assertGreater(delta[h] / 2.0, sim.HOT_RATE[0] * 0.9)
        ordinary = np.delete(delta[crate3], [i - (3 << 9) for i in hot + [dead]]) / 2.0
        self.assertTrue((ordinary < sim.NOISE_RATE[1] * 1.2).all())
        self.assertGreater(ordinary.mean(), sim.NOISE_RATE[0])
        # untouched crates did not move
        self.assertTrue((readout.count[:3 << 9] == before[:3 << 9]).all())

    def test_counts_wrap_and_sometimes_invalid(self):
        readout = sim.CrateReadout(detector(crates=range(19)))
        invalid = wrapped = 0
        last = {}
        for step in range(1, 61):
            for crate in range(19):
                for rid, message in readout.read(crate, float(step)):
                    if rid != C.RECORD_CMOS:
                        continue
                    rec = ds.decode_cmos(ds.FrameDecoder().feed(message)[0].payload)
                    invalid += int((~rec.valid).sum())
                    for i, c, v in zip(rec.index.tolist(), rec.count.tolist(),
                                       rec.valid.tolist()):
                        if v:
                            if i in last and c < last[i]:
                                wrapped += 1
                            last[i] = c
        self.assertGreater(invalid, 0)
        self.assertGreater(wrapped, 0)

    def test_service_sends_every_crate_once_a_period(self):
        clock = task.Clock()
        factory = sim.DataServerFactory()
        sent = []
        factory.broadcast = lambda rid, message: sent.append(rid)
        service = sim.ReadoutService(factory, sim.CrateReadout(detector()), clock)
        service.startService()
        for _ in range(19):
            clock.advance(1.0 / 19)
        self.assertEqual(len(sent), 19 * 3)
        service.stopService()
