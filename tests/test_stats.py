"""Self-instrumentation (minard/stats.py): corrupt input versus operational trouble, and
what the workers log about each."""
from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from minard.services.data_consumer import DataConsumer
from minard.services.dispatch_pull import PullWorker
from minard.stats import CorruptionLog, Stats, StatsPublisher
from minard.store.connection import connect
from tests.support import RedisTestMixin, wait_for

T0 = 1_700_000_000


class CapturedLog:
    """Collects the formatted text of every log event while a test runs."""

    def __init__(self, test):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self):
        return [formatEvent(e) for e in self.events]


class CorruptionLogTests(unittest.TestCase):

    def test_corrupt_input_counts_per_kind_and_in_total(self):
        stats = Stats("p")
        corruption = CorruptionLog(stats, clock=lambda: 0.0)
        self.assertEqual(stats.snapshot()["corrupt"], 0)  # exported before the first one
        corruption.note("short_header", 3)
        corruption.note("bad_receipt_stamp")
        self.assertEqual(stats.counters["corrupt_short_header"], 3)
        self.assertEqual(stats.counters["corrupt"], 4)

    def test_trouble_is_not_called_corrupt_input(self):
        log = CapturedLog(self)
        stats = Stats("dispatch-pull-0")
        now = [0.0]
        corruption = CorruptionLog(stats, interval=60, clock=lambda: now[0])
        self.assertTrue(corruption.trouble("flush_failed", "Lost connection"))
        self.assertFalse(corruption.trouble("flush_failed", "Lost connection"))
        now[0] = 61
        self.assertTrue(corruption.trouble("flush_failed", "Lost connection"))
        texts = [t for t in log.texts() if "flush failed" in t]
        self.assertEqual(len(texts), 2)
        self.assertNotIn("corrupt", " ".join(texts))
        self.assertIn("dispatch-pull-0: flush failed: Lost connection (1 time(s)", texts[0])
        self.assertIn("(2 time(s) since the last report)", texts[1])
        self.assertEqual([k for k in stats.counters if k.startswith("corrupt_")], [])
        self.assertEqual(stats.counters["corrupt"], 0)


class FailingStore:
    """An event store whose Redis is away: every flush fails."""

    def flush(self, payload):
        return defer.fail(ConnectionError("Lost connection"))


class WorkerTroubleTests(unittest.TestCase):

    def test_pull_flush_failure_is_not_counted_as_corrupt_input(self):
        log = CapturedLog(self)
        clock = task.Clock()
        clock.advance(T0)
        worker = PullWorker("dispatch-pull-0", "unused", FailingStore(), Stats("w"), clock)
        for _ in range(20):
            clock.advance(1.0)
            worker.tick()
        self.assertGreater(worker.stats.counters["flush_errors"], 5)
        self.assertNotIn("corrupt_flush_failed", worker.stats.counters)
        self.assertEqual(worker.stats.counters["corrupt"], 0)
        lines = [t for t in log.texts() if "flush failed" in t]
        self.assertEqual(len(lines), 1)  # once per interval, however often it fails
        self.assertNotIn("corrupt", lines[0])

    def test_pull_unexpected_error_traceback_once_per_interval(self):
        clock = task.Clock()
        clock.advance(T0)
        worker = PullWorker("w", "unused", FailingStore(), Stats("w"), clock)

        def boom(frames):
            raise RuntimeError("a bug hit by every message")

        worker.receipt_time = boom
        for _ in range(50):
            worker.on_message([b"x", b"y"])
        self.assertEqual(worker.stats.counters["corrupt_undecodable_message"], 50)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.advance(61)
        worker.on_message([b"x", b"y"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_consumer_unexpected_error_traceback_once_per_interval(self):
        clock = task.Clock()
        clock.advance(T0)
        consumer = DataConsumer("unused", ["cmos"], None, Stats("c"), clock)

        def boom(frames):
            raise RuntimeError("a bug hit by every message")

        consumer.receipt_time = boom
        for _ in range(30):
            consumer.on_message([b"x", b"y"])
        self.assertEqual(consumer.stats.counters["corrupt_undecodable_message"], 30)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class OneFailure:
    """An event store that fails the first flush (Redis away), then works."""

    def __init__(self):
        self.calls = 0

    def flush(self, payload):
        self.calls += 1
        if self.calls == 1:
            return defer.fail(ConnectionError("Lost connection"))
        return defer.succeed(1)


class PullStatusTests(unittest.TestCase):
    """The pull worker's heartbeat status says when its seconds do not reach Redis."""

    def test_status_follows_flush_failures(self):
        from minard.services.dispatch_pull import status_of

        clock = task.Clock()
        clock.advance(T0)
        worker = PullWorker("dispatch-pull-2", "unused", OneFailure(), Stats("w"), clock)
        self.assertEqual(status_of(worker), "ok")
        clock.advance(2)
        worker.tick()
        self.assertEqual(worker.flush_failures, 1)
        self.assertTrue(status_of(worker).startswith(
            "dispatch-pull-2: cannot write to Redis (1 flushes failed in a row"))
        for _ in range(10):
            clock.advance(1)
            worker.tick()
        self.assertEqual(status_of(worker), "ok")


class PublisherTests(RedisTestMixin, unittest.TestCase):
    """minard:stats:<process> against a real Redis."""

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)

    @defer.inlineCallbacks
    def test_a_restarted_process_does_not_show_its_previous_counters(self):
        # what the previous process of the same name left (its last snapshot)
        self.sync.command("HSET", "minard:stats:dispatch-pull-0", "dropped_events", "5000",
                          "records", "99999")
        stats = Stats("dispatch-pull-0")
        stats.incr("records", 7)
        publisher = StatsPublisher(stats, self.redis)
        publisher.publish()
        yield wait_for(lambda: publisher._pending is None)
        stored = self.sync.hgetall("minard:stats:dispatch-pull-0")
        self.assertEqual(stored["records"], "7")
        self.assertNotIn("dropped_events", stored)
        self.assertIn("updated", stored)
        ttl = self.sync.command("TTL", "minard:stats:dispatch-pull-0")
        self.assertTrue(3500 < ttl <= 3600, ttl)
