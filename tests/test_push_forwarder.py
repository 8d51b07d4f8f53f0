"""dispatch-push back-pressure: hold a refused batch, pause the dispatcher, drop after
HOLD_LIMIT and count it; never block, never grow without bound."""
from twisted.internet import task
from twisted.trial import unittest

from minard import zmqlink
from minard.services import dispatch_push
from minard.services.dispatch_push import Forwarder
from minard.stats import Stats


class Link:
    """Stands in for the ZeroMQ socket: accepts while `open` is true."""

    def __init__(self):
        self.open = True
        self.sent = []

    def send(self, frames):
        if self.open:
            self.sent.append(frames)
        return self.open


class Transport:
    def __init__(self):
        self.paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False


class ForwarderTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.link = Link()
        self.stats = Stats("push")
        self.forwarder = Forwarder(self.link, self.stats, self.clock, now_ns=lambda: 42)
        self.transport = self.forwarder.transport = Transport()

    def test_batches_with_receipt_stamp(self):
        self.forwarder.add([b"a", b"b"])
        self.forwarder.add([b"c"])
        self.assertEqual(self.link.sent, [])
        self.clock.advance(dispatch_push.BATCH_DELAY)
        self.assertEqual(self.link.sent, [[zmqlink.stamp(42), b"a", b"b", b"c"]])

    def test_full_batch_leaves_at_once(self):
        self.forwarder.add([b"x"] * dispatch_push.BATCH_RECORDS)
        self.assertEqual(len(self.link.sent), 1)

    def test_hold_then_deliver(self):
        self.link.open = False
        self.forwarder.add([b"a"])
        self.clock.advance(dispatch_push.BATCH_DELAY)
        self.assertTrue(self.transport.paused)
        self.forwarder.add([b"b"])
        self.clock.advance(dispatch_push.BATCH_DELAY)
        self.link.open = True
        self.clock.advance(dispatch_push.RETRY_INTERVAL)
        self.assertEqual([m[1:] for m in self.link.sent], [[b"a"], [b"b"]])
        self.assertFalse(self.transport.paused)
        self.assertNotIn("dropped_records", self.stats.counters)

    def test_drop_and_count_when_nobody_keeps_up(self):
        self.link.open = False
        self.forwarder.add([b"a", b"b", b"c"])
        self.clock.advance(dispatch_push.BATCH_DELAY)
        self.clock.pump([dispatch_push.RETRY_INTERVAL] * int(
            dispatch_push.HOLD_LIMIT / dispatch_push.RETRY_INTERVAL + 5))
        self.assertEqual(self.stats.counters["dropped_records"], 3)
        self.assertEqual(self.stats.counters["dropped_batches"], 1)
        self.assertFalse(self.transport.paused)
        self.assertIsNone(self.forwarder.held)
