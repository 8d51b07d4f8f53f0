"""One second's flush in chunks (store/events.py): every interval once, each chunk bounded,
a retried flush counted once, against a real Redis."""
import json

from twisted.internet import defer
from twisted.trial import unittest

from minard import constants as C
from minard.store import events, keys
from minard.store.connection import connect
from tests.support import RedisTestMixin


def doc(n_fields=28, n_hist=400, t=1_700_000_000, flush_id="w:1"):
    trig = {str(i): 10 for i in range(n_fields - 1)}
    trig["TOTAL"] = 100
    return {"id": flush_id, "t": t, "events": 100, "trig": trig,
            "nhit": {k: 30 * v for k, v in trig.items()},
            "charge": {k: 900 * v for k, v in trig.items()},
            "last": [250000, 1, 77], "order": 5,
            "hist": [x for n in range(n_hist) for x in (n, 2)], "samples": [30, 31, 32]}


class ChunkTests(unittest.TestCase):
    def test_every_interval_once_and_each_chunk_bounded(self):
        for fields, hist in ((28, 400), (5, 10), (12, 2000), (1, 0)):
            d = doc(fields, hist)
            chunks = events.chunks(d)
            intervals = [i for c in chunks for i in c["i"]]
            self.assertEqual(sorted(intervals), sorted(C.INTERVALS))
            for H in C.HASH_INTERVALS:  # each histogram's pairs once, in order
                ranges = [(a, b) for c in chunks for h, a, b in c["h"] if h == H]
                covered = [i for a, b in ranges for i in range(a, b + 1, 2)]
                self.assertEqual(covered, list(range(1, 2 * hist + 1, 2)))
            self.assertEqual(sum(c["s"] for c in chunks), 1)
            self.assertEqual([c["k"] for c in chunks], list(range(len(chunks))))
            for c in chunks:
                cost = len(c["i"]) * (3 * len(d["trig"]) + 6) + sum(
                    (b - a + 1) // 2 + 1 for _, a, b in c["h"])
                self.assertLessEqual(cost, events.CHUNK_COMMANDS, (fields, hist, c))

    def test_an_idle_second_is_one_chunk(self):
        self.assertEqual(len(events.chunks({"id": "x", "t": 1, "events": 0})), 1)


class FlushTests(RedisTestMixin, unittest.TestCase):
    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)

    @defer.inlineCallbacks
    def test_a_retried_flush_counts_once(self):
        d = doc()
        store = events.EventStore(self.redis)
        self.assertEqual((yield store.flush(json.dumps(d))), 1)
        self.assertEqual((yield store.flush(json.dumps(d))), 0)  # the retry: nothing twice
        t = d["t"]
        for interval in C.INTERVALS:
            self.assertEqual(self.sync.command("HGET", keys.trig(interval, t // interval),
                                               "TOTAL"), "100")
        for interval in C.HASH_INTERVALS:
            hist = self.sync.hgetall(keys.nhit_hist(interval, t // interval))
            self.assertEqual(len(hist), 400)
            self.assertEqual(hist["399"], "2")
        self.assertEqual(self.sync.command("LLEN", keys.nhit_samples(t)), 3)
