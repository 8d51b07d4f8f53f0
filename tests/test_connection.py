"""Every Redis command has a deadline (store/connection.py, issue 12 item 10): with Redis
away a command fails within CONNECT_WAIT s and is never sent later; a stalled Redis gives
a TimeoutError after the reply timeout; everything works again when Redis is back."""
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from minard.store.connection import RedisUnavailable, connect
from tests.support import RedisServer, SyncRedis


class DeadlineTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.server = RedisServer().start()
        self.addCleanup(self.server.cleanup)

    @defer.inlineCallbacks
    def test_redis_away_fails_promptly_and_the_command_is_never_sent(self):
        redis = connect(self.server.url, connect_wait=0.5)
        self.addCleanup(redis.disconnect)
        yield redis.set("k", "1")
        port = self.server.port
        self.server.stop()
        yield task.deferLater(reactor, 0.3, lambda: None)
        started = time.monotonic()
        with self.assertRaises(RedisUnavailable):
            yield redis.set("late", "written after the deadline?")
        self.assertLess(time.monotonic() - started, 2.0)
        self.server.start(port)  # back, empty: the failed command must not arrive now
        for _ in range(100):
            try:
                yield redis.set("after", "1")
                break
            except RedisUnavailable:
                yield task.deferLater(reactor, 0.1, lambda: None)
        yield task.deferLater(reactor, 0.5, lambda: None)
        sync = SyncRedis(port)
        self.assertEqual(sync.command("GET", "after"), "1")
        self.assertIsNone(sync.command("GET", "late"))

    @defer.inlineCallbacks
    def test_stalled_redis_times_out(self):
        redis = connect(self.server.url, reply_timeout=1.0)
        self.addCleanup(redis.disconnect)
        yield redis.set("k", "1")
        self.server.pause()
        self.addCleanup(self.server.resume)
        started = time.monotonic()
        with self.assertRaises(Exception) as caught:
            yield redis.get("k")
        self.assertIn("Timeout", type(caught.exception).__name__)
        self.assertLess(time.monotonic() - started, 3.0)
        self.server.resume()
        for _ in range(100):
            try:
                got = yield redis.get("k")
                break
            except Exception:
                yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(got, "1")
