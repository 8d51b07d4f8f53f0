"""Redis full with minard's own data (issue: per-channel store, "memory that cannot
surprise anyone"): with the production policy (noeviction) nothing of minard's is ever
evicted; writes are refused, the workers hold their seconds and partials, say so in their
status, and write everything, exactly once, when there is room again."""
import base64
import socket
import tempfile
import time
import urllib.error
import urllib.request

from twisted.internet import threads

from twisted.internet import defer

from minard.store import channels, keys
from tests.logserver_support import PASSWORD, USER, write_users
from tests.support import free_port, wait_for
from tests.test_faults import FaultTestCase, sleep


def info(sync, section):
    out = {}
    for line in sync.command("INFO", section).splitlines():
        if ":" in line:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


class RedisFullTests(FaultTestCase):
    timeout = 150

    @defer.inlineCallbacks
    def test_nothing_of_minards_is_evicted_and_nothing_lost(self):
        self.sync.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        yield self.start_pipeline(2)
        yield self.feeder.run(7.0)
        # finalised occupancy, an alarm and a program heartbeat exist before Redis fills
        yield wait_for(lambda: self.sync.command("KEYS", "minard:chan:occupancy:5:*"),
                       timeout=20)
        self.sync.command("SET", keys.alarm(0), '{"id": 0}', "EX", 86400)
        self.sync.command("SET", keys.heartbeat("builder"), "ok", "EX", 600)
        before = set(self.sync.command("KEYS", "*"))
        before_minard = {k for k in before if k.startswith(("ts:", "minard:chan:", "alarms:",
                                                            "heartbeat:"))}
        used = int(info(self.sync, "memory")["used_memory"])
        # full now, and still full when keys with a TTL expire meanwhile (maxmemory at
        # exactly `used` let writes through once a marker expired)
        self.sync.command("CONFIG", "SET", "maxmemory", str(used // 2))
        full_since = time.time()
        yield self.feeder.run(5.0)  # events keep coming: every write is refused
        full_for = time.time() - full_since
        after = set(self.sync.command("KEYS", "*"))
        self.assertEqual(info(self.sync, "stats")["evicted_keys"], "0")
        self.assertEqual(before_minard - after, set())  # nothing of minard's went
        self.assertGreater(full_for, 4)
        # room again: every second held is written exactly once, and finalised
        self.sync.command("CONFIG", "SET", "maxmemory", "0")
        yield self.feeder.run(2.0)
        stored = yield self.settle(self.feeder.total(), timeout=30)
        self.assert_exact(stored)
        self.assert_alive()
        # the refused writes were counted (the stats could be published again by now)
        self.assertGreater(self.pull_stats("flush_errors"), 0)
        self.assertEqual(self.pull_stats("dropped_events"), 0)
        last = max(self.feeder.sent)
        yield wait_for(lambda: self.sync.command(
            "EXISTS", keys.channel_final("occupancy", 5, (last - 5) // 5)), timeout=30)
        sent_seconds = sorted(self.feeder.sent)
        for b in range(sent_seconds[0] // 5 + 1, (last - 5) // 5 + 1):
            blob = self.sync.get_bytes("GET", keys.channel_final("occupancy", 5, b))
            self.assertIsNotNone(blob, "5-s bucket %d was never finalised" % b)
            events = sum(self.feeder.sent.get(s, [0])[0] for s in range(5 * b, 5 * b + 5))
            self.assertEqual(channels.decode_final(blob)["denominator"], events,
                             "5-s bucket %d" % b)
        yield sleep(0)


class RedisAwayTests(FaultTestCase):
    """Redis gone (killed, not coming back): SIGTERM still stops push and pull within
    supervisord's stop limit, and a pull worker says what it could not write."""

    timeout = 120

    @defer.inlineCallbacks
    def test_sigterm_with_redis_gone_stops_within_the_limit(self):
        from minard.constants import STOP_WAIT_SECONDS
        yield self.start_pipeline(1)
        yield self.feeder.run(2.0)
        self.redis.process.kill()
        self.redis.process.wait()
        self.redis.process = None
        yield self.feeder.run(1.5)  # seconds that can no longer be written
        started = time.time()
        for p in [self.push] + self.pulls:
            p.process.terminate()
        for p in [self.push] + self.pulls:
            while p.process.poll() is None and time.time() - started < STOP_WAIT_SECONDS:
                yield sleep(0.1)
        took = time.time() - started
        for p in [self.push] + self.pulls:
            self.assertIsNotNone(p.process.poll(), "%s still running after %.1f s"
                                 % (p.role, took))
        self.assertLess(took, STOP_WAIT_SECONDS)
        log = self.pulls[0].log()
        self.assertIn("unflushed seconds", log)


class RedisAwayAnswersTests(FaultTestCase):
    """Redis killed under the running web site and log server (issue 12 item 10): a
    request is answered 503 at once, /stream says Redis is away, and both are fine again
    when Redis is back."""

    timeout = 90

    def fetch(self, port, path, data=None, headers=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                     headers=headers or {})
        started = time.time()
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                status, body = r.status, r.read(4096)
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        return status, body, time.time() - started

    @defer.inlineCallbacks
    def test_web_and_log_server_answer_503_promptly(self):
        tmp = tempfile.mkdtemp(prefix="minard-away-")
        web_port, log_port = free_port(), free_port()
        self.spawn("web", "--listen", "tcp:%d:interface=127.0.0.1" % web_port)
        self.spawn("log-server", "--listen", "tcp:%d:interface=127.0.0.1" % log_port,
                   "--auth-file", write_users(tmp), "--log-dir", tmp)
        heartbeat = {"Authorization": "Basic " + base64.b64encode(
            ("%s:%s" % (USER, PASSWORD)).encode()).decode(),
            "Content-Type": "application/x-www-form-urlencoded"}

        def up():
            try:
                return (self.fetch(web_port, "/get_status?name=builder")[0] == 200 and
                        self.fetch(log_port, "/heartbeat", b"name=builder&status=ok",
                                   heartbeat)[0] == 200)
            except OSError:
                return False
        yield wait_for(up, timeout=30)
        # frozen (connected, not answering): 503 within the site's reply timeout
        self.redis.pause()
        status, body, took = yield threads.deferToThread(
            self.fetch, web_port, "/get_status?name=builder")
        self.redis.resume()
        self.assertEqual(status, 503, body)
        self.assertLess(took, 6.0)
        yield wait_for(up, timeout=30)
        port = self.redis.port
        self.redis.process.kill()
        self.redis.process.wait()
        self.redis.process = None
        yield sleep(0.5)
        now = int(time.time())
        for path in ("/get_status?name=builder", "/metrics",
                     "/metric?expr=TOTAL&start=%d&stop=%d&step=1" % (now - 60, now)):
            status, body, took = yield threads.deferToThread(self.fetch, web_port, path)
            self.assertEqual(status, 503, (path, body))
            self.assertLess(took, 5.0, path)
        status, body, took = yield threads.deferToThread(self.fetch, log_port, "/heartbeat", b"name=builder&status=ok",
                                heartbeat)
        self.assertEqual(status, 503, body)
        self.assertLess(took, 5.0)
        # /stream: a message that says Redis is away, not only "retry:"
        s = socket.create_connection(("127.0.0.1", web_port), timeout=10)
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        got, deadline = b"", time.time() + 8
        while b"cannot read Redis" not in got and time.time() < deadline:
            chunk = yield threads.deferToThread(s.recv, 65536)
            if not chunk:
                break
            got += chunk
        s.close()
        self.assertIn(b"cannot read Redis", got)
        self.redis.start(port)
        yield wait_for(up, timeout=30)
