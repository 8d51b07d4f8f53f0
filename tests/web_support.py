"""Helpers for the web tests: a Site on a free port against the shared test Redis."""
import json
import os
import tempfile

import treq
from twisted.internet import defer, reactor, task
from twisted.web.client import HTTPConnectionPool

from minard.constants import MAX_POINTS, TRIGGERS
from minard.programs import load_programs
from minard.store.connection import connect
from minard.web.site import Site
from tests import web_seed
from tests.support import RedisTestMixin

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = os.path.join(os.path.dirname(HERE), "etc", "programs.ini")


class SiteTestMixin(RedisTestMixin):
    """self.site (a Site with a task.Clock at self.now), self.base (its URL), self.get()."""

    now = 1_700_000_000.0
    use_clock = True

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.log_dir = tempfile.mkdtemp(prefix="minard-logs-")
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)
        if self.use_clock:
            self.clock = task.Clock()
            self.clock.advance(self.now)
        else:
            self.clock = reactor
        self.site = Site(self.redis, load_programs(PROGRAMS), self.log_dir, clock=self.clock)
        factory = self.site.factory()
        factory.noisy = False
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.site.hub.close_all)
        self.base = "http://127.0.0.1:%d/" % self.port.getHost().port
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        # be connected (SELECT done) before any test can end and disconnect
        return self.redis.ping()

    @defer.inlineCallbacks
    def get(self, path, redirects=False):
        """(code, headers, body bytes)."""
        resp = yield treq.get(self.base + path, allow_redirects=redirects, pool=self.pool)
        body = yield resp.content()
        return resp.code, resp.headers, body

    @defer.inlineCallbacks
    def get_json(self, path, expect=200):
        code, headers, body = yield self.get(path)
        self.assertEqual(code, expect, "%s -> %d %r" % (path, code, body[:300]))
        self.assertEqual(headers.getRawHeaders("content-type")[0],
                         "application/json; charset=utf-8")
        return json.loads(body)


#: The most expensive /metric allowed (constants.MAX_METRIC_VALUES): 10 mean expressions
#: (two reads each, long floats in the answer) × MAX_POINTS points at step 1.
WORST_EXPRESSIONS = tuple("%s-nhit" % name for name in TRIGGERS[:10])


def seed_worst_metric(port, first, points=MAX_POINTS):
    """Seed ts:1:<s>:trig and trig:nhit for the WORST_EXPRESSIONS over `points` seconds
    from `first`, with counts that make every mean a 16-digit float; returns the path of
    the /metric request (without `now`)."""
    commands = []
    fields = [str(TRIGGERS.index(e.split("-")[0])) for e in WORST_EXPRESSIONS]
    for s in range(first, first + points):
        counts, sums = [], []
        for k, field in enumerate(fields):
            count = 3 + (s + k) % 11
            counts += [field, str(count)]
            sums += [field, str(1000 + 37 * k + s % 97)]
        commands.append(["HSET", "ts:1:%d:trig" % s] + counts)
        commands.append(["HSET", "ts:1:%d:trig:nhit" % s] + sums)
    web_seed.pipeline(port, commands)
    return "metric?expr=%s&start=%d&stop=%d&step=1" % (",".join(WORST_EXPRESSIONS), first,
                                                       first + points)
