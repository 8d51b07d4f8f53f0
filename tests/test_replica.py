"""web on a Redis replica (issue 14 item 2): the lag it measures end to end, and what it
says when the replica is cut off from its primary."""
import time

from twisted.internet import defer
from twisted.trial import unittest

from minard import constants as C
from minard.store.connection import connect
from minard.store.replica import ReplicaLag
from tests.support import RedisServer, wait_for


class ReplicaLagTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.primary = RedisServer().start()
        self.addCleanup(self.primary.cleanup)
        self.replica = RedisServer(extra_args=["--replicaof", "127.0.0.1",
                                               str(self.primary.port)]).start()
        self.addCleanup(self.replica.cleanup)
        self.primary_client = connect(self.primary.url, reply_timeout=1.0)
        self.replica_client = connect(self.replica.url, reply_timeout=1.0)
        self.addCleanup(self.primary_client.disconnect)
        self.addCleanup(self.replica_client.disconnect)
        self.lag = ReplicaLag(self.primary_client, self.replica_client, "web-test", time.time,
                              interval=0.2)
        self.lag.startService()
        self.addCleanup(self.lag.stopService)

    @defer.inlineCallbacks
    def test_lag_small_while_replicating_and_growing_when_cut_off(self):
        self.assertIsNone(self.lag.state()["lag"])
        self.assertTrue(self.lag.state()["behind"])  # nothing measured yet
        yield wait_for(lambda: self.lag.state()["link"] == "up" and
                       not self.lag.state()["behind"], timeout=20)
        self.assertLess(self.lag.state()["lag"], 1.0)
        # the primary dies: the replica keeps answering, with data that age
        self.primary.stop()
        yield wait_for(lambda: (self.lag.state()["lag"] or 0) > C.REPLICA_LAG_WARN, timeout=20)
        self.assertTrue(self.lag.state()["behind"])
        # the primary is back: the replica catches up and the warning goes
        self.primary.start()
        yield wait_for(lambda: not self.lag.state()["behind"], timeout=30)
        self.assertEqual(self.lag.state()["link"], "up")

    @defer.inlineCallbacks
    def test_replica_away_is_behind(self):
        yield wait_for(lambda: not self.lag.state()["behind"], timeout=20)
        self.replica.stop()
        yield wait_for(lambda: self.lag.state()["behind"], timeout=20)
