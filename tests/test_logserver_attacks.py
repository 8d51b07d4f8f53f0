"""The logging server against hostile clients (issue 12, the log-server items), each
against the real server: LogSite on a loopback port (or the whole log-server role), a
real redis-server, real sockets, real files. Other machines are played by sockets bound
to other loopback addresses (127.0.0.2 ...): all traffic goes to 127.0.0.1."""
import base64
import hashlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter

import treq.client
from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from minard import auth, logformat, monitor
from minard import constants as C
from minard.services import log_server
from minard.tap import OptionError
from minard.web.logsite import RecentPosts, TokenBuckets
from tests.logserver_support import (PASSWORD, PROGRAMS_INI, USER, LogServerMixin, basic,
                                     connect_from, in_thread, parse_answer, post_from,
                                     read_all, write_users)
from tests.support import RedisTestMixin, free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT = b"name=builder&status=ok"
#: What the issue's attacker sends: a request line, a Host header, an unfinished header.
PARTIAL = b"POST /heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def error_of(body):
    """The reason of a JSON error answer (fails the test if there is none)."""
    return json.loads(body)["error"]


def open_partial(source, port, count):
    """Blocking: `count` connections from `source`, each sending PARTIAL. Returns
    (held sockets, answers of the refused ones)."""
    sockets = []
    for _ in range(count):
        s = connect_from(source, port)
        try:
            s.sendall(PARTIAL)
        except OSError:
            pass  # refused and closed at once
        sockets.append(s)
    time.sleep(0.3)  # a refusal is answered at once
    held, refused = [], []
    for s in sockets:
        ready, _, _ = select.select([s], [], [], 0)
        if ready:
            refused.append(read_all(s))
            s.close()
        else:
            held.append(s)
    return held, refused


def trickle(sockets, seconds, every=0.2):
    """Blocking: one byte to each socket every `every` s until the server answers it (or
    `seconds` pass); [(seconds after the start, answer bytes or None)] in socket order."""
    start = time.monotonic()
    results = {s: None for s in sockets}
    while time.monotonic() - start < seconds:
        waiting = [s for s in sockets if results[s] is None]
        if not waiting:
            break
        ready, _, _ = select.select(waiting, [], [], every)
        for s in ready:
            results[s] = (time.monotonic() - start, read_all(s))
        for s in waiting:
            if s not in ready:
                try:
                    s.sendall(b"a")
                except OSError:
                    pass
    for s in sockets:
        s.close()
    return [results[s] for s in sockets]


def read_one_answer(s):
    """Blocking: one HTTP answer on a kept-alive connection: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return parse_answer(data)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += s.recv(65536)
    return parse_answer(head + b"\r\n\r\n" + body)


def keep_alive_heartbeat():
    return (b"POST /heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s"
            % (basic(), len(HEARTBEAT), HEARTBEAT))


# -- 1. held-open connections ---------------------------------------------------------

class HeldOpenConnectionTests(LogServerMixin, unittest.TestCase):
    """Issue 12 item 1: 1,100 connections trickling a byte every 15-20 s held every
    descriptor and reset every heartbeat. Here with small caps: 40 connections (5 kept
    for loopback, 10 for addresses that logged in: strangers share 25), 4 per address
    before one authenticates, a 3 s request deadline."""

    site_options = {"max_connections": 40, "per_address": 4, "request_deadline": 3.0}

    @defer.inlineCallbacks
    def test_trickling_bytes_do_not_extend_the_deadline(self):
        def run():
            header = connect_from("127.0.0.2", self.port)
            header.sendall(PARTIAL)  # an unfinished header line, then a byte at a time
            body = connect_from("127.0.0.3", self.port)
            body.sendall(b"POST /log HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
                         b"Content-Length: 1000\r\n\r\nname=builder" % basic())
            local = connect_from("127.0.0.1", self.port)  # nobody is exempt
            local.sendall(PARTIAL)
            return trickle([header, body, local], seconds=10, every=0.2)

        results = yield in_thread(run)
        for result in results:
            self.assertIsNotNone(result, "a trickling connection outlived 10 s")
            elapsed, answer = result
            status, body = parse_answer(answer)
            self.assertEqual(status, 408, answer[:200])
            self.assertIn("not complete within 3 s", error_of(body))
            self.assertTrue(2.8 < elapsed < 4.5, elapsed)
        self.assertEqual(self.log_files(), [])

    @defer.inlineCallbacks
    def test_one_address_cannot_take_the_server(self):
        def run():
            held, refused = open_partial("127.0.0.2", self.port, 12)
            during = [post_from("127.0.0.3", self.port, "/heartbeat", HEARTBEAT),
                      post_from("127.0.0.1", self.port, "/heartbeat", HEARTBEAT)]
            cut = trickle(held, seconds=10)
            after = post_from("127.0.0.2", self.port, "/heartbeat", HEARTBEAT)
            return len(held), refused, during, cut, after

        held, refused, during, cut, after = yield in_thread(run)
        self.assertEqual((held, len(refused)), (4, 8))
        for answer in refused:
            status, body = parse_answer(answer)
            self.assertEqual(status, 503, answer[:200])
            self.assertIn("too many connections from 127.0.0.2", error_of(body))
        self.assertEqual([status for status, _ in during], [200, 200])
        self.assertEqual([parse_answer(a)[0] for _, a in cut], [408] * 4)
        self.assertEqual(after[0], 200)  # the address is served again once its slots free

    @defer.inlineCallbacks
    def test_many_addresses_cannot_take_what_is_kept_for_loopback_and_known_programs(self):
        def run():
            known = post_from("127.0.0.3", self.port, "/heartbeat", HEARTBEAT)  # logs in
            flood, refused = [], []
            for i in range(1, 10):  # 9 addresses x 4: more than the strangers' 25
                held, answers = open_partial("127.0.1.%d" % i, self.port, 4)
                flood += held
                refused += answers
            stranger = post_from("127.0.0.9", self.port, "/heartbeat", HEARTBEAT)
            again = post_from("127.0.0.3", self.port, "/heartbeat", HEARTBEAT)
            local = post_from("127.0.0.1", self.port, "/heartbeat", HEARTBEAT)
            for s in flood:
                s.close()
            deadline = time.monotonic() + 5
            later = (None, b"")
            while time.monotonic() < deadline and later[0] != 200:
                later = post_from("127.0.0.9", self.port, "/heartbeat", HEARTBEAT)
                time.sleep(0.05)
            return known, len(flood), refused, stranger, again, local, later

        known, flood, refused, stranger, again, local, later = yield in_thread(run)
        self.assertEqual(known[0], 200)
        self.assertEqual((flood, len(refused)), (25, 11))
        self.assertEqual(stranger[0], 503)
        self.assertIn("no free connection for 127.0.0.9", error_of(stranger[1]))
        self.assertEqual(again[0], 200)  # logged in before: the trusted reserve
        self.assertEqual(local[0], 200)  # loopback (nginx): the local reserve
        self.assertEqual(later[0], 200)  # and the flood's slots come back when it ends

    @defer.inlineCallbacks
    def test_authenticated_connections_leave_their_address_count(self):
        def run():
            programs = []
            statuses = []
            for _ in range(4):  # four programs of one machine, kept-alive connections
                s = connect_from("127.0.0.4", self.port)
                s.sendall(keep_alive_heartbeat())
                statuses.append(read_one_answer(s)[0])
                programs.append(s)
            held, refused = open_partial("127.0.0.4", self.port, 5)
            # a kept-alive program connection is still usable, and idle ones are closed
            programs[0].sendall(keep_alive_heartbeat())
            statuses.append(read_one_answer(programs[0])[0])
            start = time.monotonic()
            closed = read_all(programs[1])
            idle_for = time.monotonic() - start
            for s in programs + held:
                s.close()
            return statuses, len(held), len(refused), closed, idle_for

        statuses, held, refused, closed, idle_for = yield in_thread(run)
        self.assertEqual(statuses, [200] * 5)
        self.assertEqual((held, refused), (4, 1))
        self.assertEqual(closed, b"")  # an idle kept-alive connection: closed, no answer
        self.assertTrue(1.0 < idle_for < 4.5, idle_for)


class ConnectionLimitsTests(unittest.TestCase):
    """The bookkeeping of the caps, without sockets."""

    def test_what_counts_as_one_address(self):
        from minard.web.logsite import address_key
        self.assertIsNone(address_key("127.0.0.1"))
        self.assertIsNone(address_key("::1"))
        self.assertEqual(address_key("::ffff:10.0.0.7"), "10.0.0.7")  # dual-stack IPv4
        self.assertEqual(address_key("2001:db8::1"), address_key("2001:db8::ff:1"))
        self.assertNotEqual(address_key("2001:db8::1"), address_key("2001:db8:0:1::1"))

    def test_slots_come_back(self):
        from minard.web.logsite import ConnectionLimits
        clock = task.Clock()
        limits = ConnectionLimits(16, per_address=3, clock=clock)  # local 2, trusted 4
        slots = [limits.admit("10.0.0.1")[0] for _ in range(3)]
        self.assertIsNone(limits.admit("10.0.0.1")[0])
        slots[0].authenticated()  # no longer counts against its address
        extra = limits.admit("10.0.0.1")[0]
        self.assertIsNotNone(extra)
        for slot in slots + [extra]:
            slot.release()
            slot.release()  # twice is harmless
        self.assertEqual((limits.open, limits.strangers), (0, {}))
        clock.advance(C.TRUSTED_ADDRESS_SECONDS + 1)
        self.assertFalse(limits.is_trusted("10.0.0.1"))


class RoleConnectionTests(RedisTestMixin, unittest.TestCase):
    """Item 1 through the log-server role itself: its [connections] section."""

    def options(self, connections):
        self.tmp = tempfile.mkdtemp()
        self.port = free_port()
        return {"role": "log-server", "redis": self.redis_server.url, "config": None,
                "listen": "tcp:%d:interface=127.0.0.1" % self.port,
                "log-dir": os.path.join(self.tmp, "logs"), "programs": PROGRAMS_INI,
                "auth-file": write_users(self.tmp),
                "config-sections": {"connections": connections}}

    @defer.inlineCallbacks
    def test_caps_and_deadline_of_the_role(self):
        service = log_server.make_service(
            self.options({"per-address": "2", "request-seconds": "1.5"}), reactor)
        redis = [child.redis for child in service if hasattr(child, "redis")][0]
        self.addCleanup(redis.disconnect)
        service.startService()
        self.addCleanup(service.stopService)

        def run():
            held, refused = open_partial("127.0.0.2", self.port, 3)
            beat = post_from("127.0.0.3", self.port, "/heartbeat", HEARTBEAT)
            return trickle(held, seconds=6), refused, beat

        cut, refused, beat = yield in_thread(run)
        self.assertEqual([parse_answer(a)[0] for _, a in cut], [408, 408])
        self.assertTrue(all(0.5 < t < 3.5 for t, _ in cut), cut)  # t: since the trickle
        self.assertEqual([parse_answer(a)[0] for a in refused], [503])
        self.assertEqual(beat[0], 200)
        yield wait_for(lambda: self.sync.hgetall("minard:stats:log-server")
                       .get("connections_refused") == "1")

    def test_bad_connection_settings(self):
        for section in ({"per-address": "0"}, {"max": "lots"}, {"max": "99999999"},
                        {"request-seconds": "0"}, {"colour": "red"}):
            with self.assertRaises(OptionError) as cm:
                log_server.make_service(self.options(section), reactor)
            self.assertIn("[connections]", str(cm.exception))

    def test_the_budget_stays_below_the_descriptor_limit(self):
        import resource
        budget = log_server.descriptor_budget()
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertLessEqual(budget, soft - C.LOG_SERVER_FD_RESERVE)
        self.assertLessEqual(budget, C.LOG_SERVER_MAX_CONNECTIONS)


# -- 4. full disk -----------------------------------------------------------------------

def minard_log(url, *args, password=PASSWORD, directory=None):
    """minard-log as a separate process; fires (out, err, exit code)."""
    pw = os.path.join(directory or tempfile.mkdtemp(), "pw")
    with open(pw, "w") as f:
        f.write(password + "\n")
    argv = ["-m", "minard.monitor", "--url", url, "--name", "builder", "--user", USER,
            "--password-file", pw] + list(args)
    return utils.getProcessOutputAndValue(sys.executable, argv,
                                          env=dict(os.environ, PYTHONPATH=ROOT), path=ROOT)


class FullDiskTests(LogServerMixin, unittest.TestCase):
    """Item 4: --log-dir on a full filesystem (a 64 KiB tmpfs, mounted for the test)."""

    def setUp(self):
        LogServerMixin.setUp(self)
        os.makedirs(self.log_dir, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                 self.log_dir], capture_output=True, text=True)
        if result.returncode != 0:
            raise unittest.SkipTest("cannot mount a tmpfs for the full disk (%s)"
                                    % (result.stderr.strip() or "mount failed"))
        self.addCleanup(subprocess.run, ["umount", "-l", self.log_dir], capture_output=True)
        self.filler = os.path.join(self.log_dir, "filler")

    def fill(self):
        """Take every free block of the filesystem."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)

    def free(self):
        os.unlink(self.filler)

    @defer.inlineCallbacks
    def test_alarm_stored_and_no_line_torn(self):
        code, _, _ = yield self.post("/log", b"name=builder&level=20&message=first")
        self.assertEqual(code, 200)
        before = os.path.getsize(os.path.join(self.log_dir, "builder.log"))
        self.fill()
        # the disk takes part of this line (the rest of builder.log's block), then ENOSPC
        big = "DANGER-" + "x" * 5000
        post = b"name=builder&level=40&message=" + big.encode() + b"&id=trip-1"
        code, _, body = yield self.post("/log", post)
        self.assertEqual(code, 507, body)
        self.assertIn("No space left on device", error_of(body))
        self.assertIn("alarm stored", error_of(body))
        self.assertEqual(self.sync.command("GET", "alarms:count"), "1")
        self.assertEqual(json.loads(self.sync.command("GET", "alarms:0"))["message"],
                         "builder - " + big)
        self.assertEqual(os.path.getsize(os.path.join(self.log_dir, "builder.log")), before)
        # the client retries (same id) while the disk is still full: no second alarm
        code, _, body = yield self.post("/log", post)
        self.assertEqual(code, 507, body)
        self.assertEqual(self.sync.command("GET", "alarms:count"), "1")
        # space returns: the retry writes the line, still one alarm; the next line is whole
        self.free()
        code, _, _ = yield self.post("/log", post)
        self.assertEqual(code, 200)
        code, _, _ = yield self.post("/log", b"name=builder&level=40&message=after")
        self.assertEqual(code, 200)
        parsed = [logformat.parse_line(x) for x in self.log_lines("builder")]
        self.assertEqual([(p["level"], p["message"]) for p in parsed],
                         [("INFO", "first"), ("DANGER", big), ("DANGER", "after")])
        self.assertEqual(self.sync.command("GET", "alarms:count"), "2")

    @defer.inlineCallbacks
    def test_minard_log_raises_its_alarm_on_a_full_disk(self):
        self.fill()
        out, err, code = yield minard_log(self.url, "--level", "40", "--retries", "3",
                                          "HV trip crate 7", directory=self.tmp)
        self.assertEqual(code, 1, err)
        self.assertIn(b"No space left on device", err)
        self.assertIn(b"alarm stored", err)
        self.assertEqual(self.sync.command("GET", "alarms:count"), "1")  # 3 tries, 1 alarm
        self.assertEqual(json.loads(self.sync.command("GET", "alarms:0"))["message"],
                         "builder - HV trip crate 7")
        path = os.path.join(self.log_dir, "builder.log")
        self.assertEqual(os.path.getsize(path) if os.path.exists(path) else 0, 0)

    def test_a_short_write_is_undone(self):
        """The same at the file level: a line goes in whole or not at all."""
        files = self.logsite.log_files
        files.write("builder", "one")
        self.fill()
        with self.assertRaises(OSError):
            files.write("builder", "x" * 6000)
        self.free()
        files.write("builder", "two")
        self.assertEqual(self.log_lines("builder"), ["one", "two"])


# -- 5. retried posts -------------------------------------------------------------------

class RedisFullMixin:
    """Make the test Redis refuse writes (maxmemory under noeviction) and undo it."""

    def redis_full(self):
        policy = self.sync.command("CONFIG", "GET", "maxmemory-policy")[1]
        memory = self.sync.command("CONFIG", "GET", "maxmemory")[1]
        self.addCleanup(self.sync.command, "CONFIG", "SET", "maxmemory-policy", policy)
        self.addCleanup(self.sync.command, "CONFIG", "SET", "maxmemory", memory)
        self.sync.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        self.sync.command("CONFIG", "SET", "maxmemory", "1")

    def redis_room(self):
        self.sync.command("CONFIG", "SET", "maxmemory", "0")


class RetriedPostTests(RedisFullMixin, LogServerMixin, unittest.TestCase):
    """Item 5: a retried post is stored once (post ids)."""

    @defer.inlineCallbacks
    def test_minard_log_retries_write_the_line_once(self):
        self.redis_full()
        out, err, code = yield minard_log(self.url, "--level", "40", "--retries", "3",
                                          "HV trip crate 7", directory=self.tmp)
        self.redis_room()
        self.assertEqual(code, 1, err)
        self.assertIn(b"Redis is full", err)
        messages = [logformat.parse_line(x)["message"] for x in self.log_lines("builder")]
        self.assertEqual(messages, ["HV trip crate 7"])

    @defer.inlineCallbacks
    def test_log_forwarder_retries_until_stored_once(self):
        poster = monitor.Poster(self.url, (USER, PASSWORD), timeout=5.0)
        self.addCleanup(poster.close)
        attempts = []
        post = poster.post

        def counting(path, fields):
            attempts.append(fields["id"])
            return post(path, fields)

        poster.post = counting
        sender = monitor.LogSender(poster, "builder", clock=reactor)
        sender.backoff = monitor.Backoff(0.1, 0.2)
        self.addCleanup(sender.stop)
        self.redis_full()
        sender.send(40, "HV trip crate 7")
        yield wait_for(lambda: len(attempts) >= 4)
        self.redis_room()
        yield wait_for(lambda: not sender.queue, timeout=10)
        self.assertEqual(len(set(attempts)), 1)
        messages = [logformat.parse_line(x)["message"] for x in self.log_lines("builder")]
        self.assertEqual(messages, ["HV trip crate 7"])
        self.assertEqual(self.sync.command("GET", "alarms:count"), "1")

    @defer.inlineCallbacks
    def test_same_id_stored_once_without_id_as_before(self):
        for _ in range(2):
            code, _, _ = yield self.post("/log", b"name=builder&level=40&message=m&id=abc")
            self.assertEqual(code, 200)
        self.assertEqual(len(self.log_lines("builder")), 1)
        self.assertEqual(self.sync.command("GET", "alarms:count"), "1")
        # the id is the program's: another program may use the same
        yield self.post("/log", b"name=xl3&level=20&message=m&id=abc")
        self.assertEqual(len(self.log_lines("xl3")), 1)
        for _ in range(2):
            code, _, _ = yield self.post("/log", b"name=builder&level=40&message=m")
            self.assertEqual(code, 200)
        self.assertEqual(len(self.log_lines("builder")), 3)
        self.assertEqual(self.sync.command("GET", "alarms:count"), "3")

    @defer.inlineCallbacks
    def test_a_late_heartbeat_retry_is_not_applied_again(self):
        for body in (b"name=builder&status=first&id=h1", b"name=builder&status=second&id=h2",
                     b"name=builder&status=first&id=h1"):
            code, _, _ = yield self.post("/heartbeat", body)
            self.assertEqual(code, 200)
        self.assertEqual(self.sync.command("GET", "heartbeat:builder"), "second")
        yield self.post("/heartbeat", b"name=builder&status=third")
        yield self.post("/heartbeat", b"name=builder&status=fourth")
        self.assertEqual(self.sync.command("GET", "heartbeat:builder"), "fourth")

    @defer.inlineCallbacks
    def test_retry_after_a_restart_of_the_server(self):
        code, _, _ = yield self.post("/log", b"name=builder&level=20&message=m&id=r-1")
        self.assertEqual(code, 200)
        self.logsite.recent = RecentPosts()  # what a new process remembers: nothing
        code, _, _ = yield self.post("/log", b"name=builder&level=20&message=m&id=r-1")
        self.assertEqual(code, 200)
        self.assertEqual(len(self.log_lines("builder")), 1)  # Redis remembered

    @defer.inlineCallbacks
    def test_bad_ids(self):
        for post_id in (b"", b"a" * 65, b"a+b", b"%C3%A9", b"x:y", b"%00"):
            code, _, body = yield self.post("/log", b"name=builder&level=40&message=m&id="
                                            + post_id)
            self.assertEqual(code, 400, post_id)
            self.assertIn("id must be", error_of(body))
        self.assertEqual(self.log_files(), [])
        self.assertIsNone(self.sync.command("GET", "alarms:count"))


# -- 7. failed-login throttle -----------------------------------------------------------

class FailedLoginThrottleTests(LogServerMixin, unittest.TestCase):
    """Item 7: 200 concurrent wrong passwords from one address got 193 slow checks."""

    site_options = {"per_address": 1000}  # all 200 at once from one address

    @defer.inlineCallbacks
    def test_concurrent_guesses_are_charged_before_the_hash(self):
        checks = []
        real = auth.verify_password

        def counting(password, stored):
            checks.append(password)
            return real(password, stored)

        self.patch(auth, "verify_password", counting)

        def client(source):
            agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False),
                          bindAddress=(source, 0))
            return treq.client.HTTPClient(agent)

        def post(http, password):
            d = http.post(self.url + "/heartbeat", data=HEARTBEAT, headers={
                b"authorization": [basic(USER, password)],
                b"content-type": [b"application/x-www-form-urlencoded"]})
            return d.addCallback(lambda r: treq.content(r).addCallback(lambda _: r.code))

        attacker = client("127.0.0.2")
        start = time.monotonic()
        guesses = [post(attacker, "guess-%d" % i) for i in range(200)]
        yield task.deferLater(reactor, 0.05, lambda: None)
        login_start = time.monotonic()
        code = yield post(client("127.0.0.3"), PASSWORD)  # a first login: not cached
        login = time.monotonic() - login_start
        codes = Counter((yield defer.gatherResults(guesses)))
        elapsed = time.monotonic() - start
        self.assertEqual(code, 200)
        self.assertEqual(set(codes), {401, 429})
        slow = len([p for p in checks if p != PASSWORD])
        self.assertEqual(slow, codes[401])
        budget = C.AUTH_FAILURE_BURST + C.AUTH_FAILURE_RATE * elapsed
        self.assertLessEqual(slow, budget + 1, (slow, elapsed))
        # the issue: 5.6 s (behind ~190 queued hashes); here behind at most
        # AUTH_CHECKS_PER_CLIENT of them, plus this process serving its own 200 clients
        self.assertLess(login, 3.0)
        sys.stdout.write("\n    200 guesses: %d slow checks in %.1f s; another address's "
                         "first login %.0f ms\n" % (slow, elapsed, login * 1000))

    @defer.inlineCallbacks
    def test_the_right_password_gets_its_token_back(self):
        self.logsite.failures = TokenBuckets(0.001, 2, reactor.seconds)
        self.logsite.auth.clock = lambda: 0  # the auth cache: every check is slow
        for _ in range(5):
            self.logsite.auth._cache.clear()
            code, _, _ = yield self.post("/heartbeat", HEARTBEAT)
            self.assertEqual(code, 200)
        code, _, _ = yield self.post("/heartbeat", HEARTBEAT,
                                     authorization=basic(USER, "guess"))
        self.assertEqual(code, 401)


# -- 8. user enumeration by timing -------------------------------------------------------

def pbkdf2_stored(password, iterations):
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, 32)
    return "pbkdf2-sha256$i=%d$%s$%s" % (iterations, base64.b64encode(salt).decode(),
                                         base64.b64encode(digest).decode())


class UserEnumerationTests(LogServerMixin, unittest.TestCase):
    """Item 8: a wrong password of a pbkdf2-sha256 user cost 286 ms, an unknown user
    62 ms (the dummy was scrypt)."""

    timeout = 120

    def use_users(self, users):
        auth.write_auth_file(self.auth_file, users)
        os.utime(self.auth_file, ns=(1, 1))
        self.logsite.auth.reload()

    @defer.inlineCallbacks
    def test_unknown_user_costs_what_a_wrong_password_costs(self):
        self.use_users({USER: pbkdf2_stored(PASSWORD, 300000)})
        self.logsite.failures = TokenBuckets(1e9, 1e9, reactor.seconds)
        hashed = []
        real = auth.verify_password

        def recording(password, stored):
            hashed.append(stored.split("$")[:2])
            return real(password, stored)

        self.patch(auth, "verify_password", recording)
        times = {"wrong password": [], "unknown user": []}
        for round_ in range(8):
            for kind, user in (("wrong password", USER), ("unknown user", "nobody")):
                start = time.monotonic()
                code, _, body = yield self.post("/heartbeat", HEARTBEAT,
                                                authorization=basic(user, "guess"))
                if round_:  # the first round warms up
                    times[kind].append(time.monotonic() - start)
                self.assertEqual((code, error_of(body)), (401, "wrong user or password"))
        self.assertEqual({tuple(h) for h in hashed}, {("pbkdf2-sha256", "i=300000")})
        medians = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        ratio = medians["unknown user"] / medians["wrong password"]
        sys.stdout.write("\n    median wrong password %.0f ms, unknown user %.0f ms\n"
                         % (medians["wrong password"] * 1000, medians["unknown user"] * 1000))
        # before: 0.22 (62 / 286 ms); the margin is for a shared machine's noise
        self.assertTrue(0.6 < ratio < 1.6, medians)

    def test_with_users_of_several_kinds_an_unknown_name_looks_like_one_of_them(self):
        fast_scrypt = "scrypt$n=1024,r=8,p=1$%s$%s" % (
            base64.b64encode(b"s" * 16).decode(), base64.b64encode(b"d" * 32).decode())
        self.use_users({"a": pbkdf2_stored("x", 1000), "b": fast_scrypt})
        kinds = set()
        for i in range(40):
            name = "nobody-%d" % i
            stored = self.logsite.auth._stored(name)
            kind = tuple(stored.split("$")[:2])
            self.assertIn(kind, {("pbkdf2-sha256", "i=1000"), ("scrypt", "n=1024,r=8,p=1")})
            self.assertEqual(self.logsite.auth._stored(name), stored)  # the same each time
            kinds.add(kind)
            self.assertFalse(self.logsite.auth.check(name, "x"))
        self.assertEqual(len(kinds), 2)


# -- 12. the small ones ---------------------------------------------------------------

class ClearAnswerTests(RedisFullMixin, LogServerMixin, unittest.TestCase):
    """Item 12: Redis OOM, latin-1 credentials, an oversize Authorization header."""

    site_options = {"request_deadline": 3.0}

    @defer.inlineCallbacks
    def test_redis_full_is_said_so(self):
        self.redis_full()
        code, _, body = yield self.post("/heartbeat", HEARTBEAT)
        self.assertEqual(code, 507)
        self.assertEqual(error_of(body), "heartbeat not stored: Redis is full (maxmemory "
                                         "reached)")
        code, _, body = yield self.post("/log", b"name=builder&level=40&message=m")
        self.assertEqual(code, 507)
        self.assertEqual(error_of(body), "log line written, alarm not stored: Redis is "
                                         "full (maxmemory reached)")
        code, _, _ = yield self.post("/log", b"name=builder&level=20&message=m")
        self.assertEqual(code, 200)  # no alarm wanted: the line is all
        self.redis_room()

    @defer.inlineCallbacks
    def test_undecodable_credentials_are_a_counted_failed_login(self):
        self.logsite.failures = TokenBuckets(0.001, 3, reactor.seconds)
        latin1 = b"Basic " + base64.b64encode("snoplus:pässwörd".encode("latin-1"))
        codes = []
        for authorization in (latin1, latin1, b"Basic !!!notbase64", latin1):
            code, headers, body = yield self.post("/heartbeat", HEARTBEAT,
                                                  authorization=authorization)
            codes.append(code)
            if code == 401:
                self.assertIn(b"Basic", headers.getRawHeaders(b"www-authenticate")[0])
                self.assertTrue(error_of(body) in ("user and password must be sent UTF-8 "
                                                   "encoded",
                                                   "malformed Basic credentials (not base64)"))
        self.assertEqual(codes, [401, 401, 401, 429])
        self.assertIsNone(self.sync.command("GET", "heartbeat:builder"))

    @defer.inlineCallbacks
    def test_oversize_and_malformed_requests_are_answered(self):
        huge = b"Basic " + b"A" * 20000
        cases = [
            (b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
             b"Content-Length: 22\r\n\r\n%s" % (huge, HEARTBEAT), 431),
            (b"POST /heartbeat HTTP/1.1\r\nHost: x\r\n"
             + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 4000) for i in range(5))
             + b"Content-Length: 22\r\n\r\n" + HEARTBEAT, 431),
            (b"GARBAGE\r\n\r\n", 400),
            (b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        ]
        for request, expected in cases:
            answer = yield self.raw(request)
            status, body = parse_answer(answer)
            self.assertEqual(status, expected, answer[:200])
            self.assertTrue(error_of(body))
        code, _, _ = yield self.post("/heartbeat", HEARTBEAT)
        self.assertEqual(code, 200)  # and the server carries on

    @defer.inlineCallbacks
    def test_answers_over_tls_too(self):
        import ssl

        from twisted.internet import endpoints
        from tests.test_monitor import make_self_signed

        key, cert = make_self_signed(self.tmp)
        endpoint = endpoints.serverFromString(
            reactor, "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (key, cert))
        tls = yield endpoint.listen(self.logsite.site())
        self.addCleanup(tls.stopListening)
        context = ssl.create_default_context(cafile=cert)

        def talk(request, trickle_for):
            raw = connect_from("127.0.0.2", tls.getHost().port)
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(request)
                start = time.monotonic()
                out = b""
                while time.monotonic() - start < trickle_for and not out:
                    ready, _, _ = select.select([s], [], [], 0.2)
                    if ready:
                        out = read_all(s)
                    else:
                        s.sendall(b"a")
                return parse_answer(out), time.monotonic() - start

        (status, body), _ = yield in_thread(
            talk, b"POST /heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
            + b"A" * 20000 + b"\r\n\r\n", 5)
        self.assertEqual(status, 431)
        self.assertTrue(error_of(body))
        (status, body), elapsed = yield in_thread(talk, PARTIAL, 8)
        self.assertEqual(status, 408)
        self.assertTrue(2.5 < elapsed < 5, elapsed)
