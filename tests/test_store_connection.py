"""The Redis connection comes back by itself, whatever Redis answered meanwhile."""
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from minard.store.connection import RedisUnavailable, connect, parse_redis_url
from tests.support import RedisServer, SyncRedis


@defer.inlineCallbacks
def retried(call, *args, seconds=20):
    """A command retried while Redis is unavailable (each try fails within CONNECT_WAIT:
    store/connection.py), as minard's callers do."""
    for _ in range(int(seconds * 4)):
        try:
            return (yield call(*args))
        except RedisUnavailable:
            yield task.deferLater(reactor, 0.25, lambda: None)
    return (yield call(*args))


class ParseTests(unittest.TestCase):
    def test_url(self):
        plain = {"username": None, "tls": False, "ca": None, "cert": None, "key": None}
        self.assertEqual(parse_redis_url("redis://:s%40cret@host:6380/2"),
                         dict(plain, host="host", port=6380, db=2, password="s@cret"))
        self.assertEqual(parse_redis_url("redis://127.0.0.1"),
                         dict(plain, host="127.0.0.1", port=6379, db=0, password=None))
        self.assertEqual(parse_redis_url("redis://web:pw@h/1")["username"], "web")

    def test_tls_url(self):
        import tempfile
        ca = tempfile.NamedTemporaryFile(suffix=".crt")
        p = parse_redis_url("rediss://web:pw@db1:6380/0?ca=%s" % ca.name)
        self.assertEqual((p["tls"], p["ca"], p["cert"], p["username"]), (True, ca.name, None, "web"))
        from minard.store.connection import RedisURLError
        for bad in ("redis://h/0?ca=%s" % ca.name,            # parameters only with TLS
                    "rediss://h/0?ca=/no/such/file",
                    "rediss://h/0?cert=%s" % ca.name,          # cert without key
                    "rediss://h/0?pem=%s" % ca.name,
                    "unix:///tmp/redis.sock", "http://x", "redis://h/x", "redis://h:99999"):
            with self.assertRaises(RedisURLError, msg=bad):
                parse_redis_url(bad)


class ReconnectTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.server = RedisServer(password="right").start()
        self.addCleanup(self.server.cleanup)

    @defer.inlineCallbacks
    def test_refused_auth_is_retried_not_abandoned(self):
        """txredisapi alone stops for good after one failed AUTH (a restarting Redis
        answers LOADING); minard's connection keeps trying until Redis accepts it."""
        redis = connect("redis://:wrong@127.0.0.1:%d/1" % self.server.port, reply_timeout=5)
        self.addCleanup(redis.disconnect)
        yield task.deferLater(reactor, 1.5, lambda: None)   # at least one refused AUTH
        SyncRedis(self.server.port, "right").command("CONFIG", "SET", "requirepass", "wrong")
        result = yield retried(redis.set, "k", "v")  # reconnects within its backoff
        self.assertEqual(result, "OK")
        self.assertEqual(SyncRedis(self.server.port, "wrong").command("SELECT", "1"), "OK")

    @defer.inlineCallbacks
    def test_restart_with_database_number(self):
        redis = connect("redis://:right@127.0.0.1:%d/3" % self.server.port, reply_timeout=5)
        self.addCleanup(redis.disconnect)
        yield redis.set("a", "1")
        self.server.stop()
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.server.start()
        value = yield retried(redis.get, "a")  # once reconnected (nothing was saved)
        self.assertIsNone(value)
        yield redis.set("b", "2")
        sync = SyncRedis(self.server.port, "right")
        self.assertEqual(sync.command("DBSIZE"), 0)  # db 0 untouched: written to db 3
