"""data-producer: records from the data-server client go out over ZeroMQ by kind, stamped,
headers included; with nobody pulling, batches are dropped and counted, never queued
without bound."""
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from minard import constants as C, zmqlink
from minard.services import dispatch_push
from minard.services.data_producer import DataProducer
from minard.stats import Stats
from minard.wire import datastream as ds
from tests.support import free_port, wait_for


def options():
    return {"cmos-zmq": "tcp://127.0.0.1:%d" % free_port(),
            "base-zmq": "tcp://127.0.0.1:%d" % free_port()}


class ProducerTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.stats = Stats("test-producer")
        self.options = options()
        self.producer = DataProducer(self.options, self.clock, self.stats,
                                     now_ns=lambda: 1_700_000_000_123_456_789)
        self.producer.startService()
        self.addCleanup(self.producer.stopService)

    def pull(self, address):
        got = []
        link = zmqlink.PullLink(address, got.append)
        self.addCleanup(link.shutdown)
        return got

    @defer.inlineCallbacks
    def test_records_pushed_by_kind(self):
        cmos_got = self.pull(self.options["cmos-zmq"])
        base_got = self.pull(self.options["base-zmq"])
        cm = ds.Frame(C.RECORD_CMOS, 0, ds.encode_cmos(1, 1, [1] * 16, range(32)))
        ba = ds.Frame(C.RECORD_BASE, 3, bytes(1100))
        yield task.deferLater(reactor, 0.2, lambda: None)  # let the PULL sockets connect
        self.producer.on_records([cm, ba, cm])
        self.clock.advance(dispatch_push.BATCH_DELAY)
        yield wait_for(lambda: cmos_got and base_got, timeout=5)
        stamp = zmqlink.stamp(1_700_000_000_123_456_789)
        raw = ds.encode_record(C.RECORD_CMOS, 0, cm.payload)
        self.assertEqual(cmos_got, [[stamp, raw, raw]])
        self.assertEqual(base_got, [[stamp, ds.encode_record(C.RECORD_BASE, 3, bytes(1100))]])
        self.assertEqual(self.stats.counters["records_cmos"], 2)
        self.assertEqual(self.stats.counters["records_base"], 1)

    def test_nobody_pulling_drops_and_counts(self):
        frame = ds.Frame(C.RECORD_BASE, 0, bytes(1100))
        sent = 0
        for _ in range(3000):  # far beyond the high-water mark
            self.producer.on_records([frame])
            self.clock.advance(dispatch_push.BATCH_DELAY)
            sent += 1
        self.clock.advance(dispatch_push.HOLD_LIMIT + 0.1)
        dropped = self.stats.counters.get("dropped_records", 0)
        self.assertGreater(dropped, 0)
        held = sum(len(m) - 1 for m in (self.producer.forwarders["base"].held or []))
        self.assertLess(held, 1000)

    def test_status(self):
        self.assertEqual(self.producer.status(), "data server link down")
        self.producer.link_up("c")
        self.assertIn("waiting", self.producer.status())
        self.producer.subscribed("c")
        self.assertEqual(self.producer.status(), "ok")
        self.producer.link_down("c")
        self.assertEqual(self.producer.status(), "data server link down")
