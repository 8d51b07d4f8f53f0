"""The client library (minard/monitor.py): heartbeats, log forwarding, minard-log.

Scheduling is tested with a Clock and a scripted Poster; delivery, catching up after the
server was down, and HTTPS verification against a real log server and a real Redis.
"""
import datetime
import os
import sys
import tempfile

from twisted.internet import defer, endpoints, reactor, task, utils
from twisted.logger import LogPublisher, Logger
from twisted.trial import unittest

from minard import constants as C
from minard import logformat, monitor
from minard.tap import OptionError
from tests.logserver_support import PASSWORD, USER, LogServerMixin
from tests.support import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ScriptedPoster:
    """Records posts; each answer is decided by `self.up` (True: 200, False: refused)."""

    def __init__(self, clock):
        self.clock = clock
        self.posts = []
        self.pending = []
        self.up = True
        self.hold = False  # keep answers pending until release()
        self.permanent = False

    def post(self, path, fields):
        self.posts.append((self.clock.seconds(), path, dict(fields)))
        d = defer.Deferred()
        if self.hold:
            self.pending.append(d)
        else:
            self._answer(d)
        return d

    def _answer(self, d):
        if self.up:
            d.callback(None)
        else:
            d.errback(monitor.MonitorError("connection refused" if not self.permanent
                                           else "HTTP 401", permanent=self.permanent))

    def release(self):
        pending, self.pending = self.pending, []
        for d in pending:
            self._answer(d)

    def close(self):
        return defer.succeed(None)


class HeartbeatScheduleTests(unittest.TestCase):

    def setUp(self):
        self.clock = task.Clock()
        self.poster = ScriptedPoster(self.clock)
        self.service = monitor.HeartbeatService(name="builder", interval=5.0,
                                                status=lambda: "ok", poster=self.poster,
                                                clock=self.clock)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def times(self):
        return [t for t, _, _ in self.poster.posts]

    def test_every_interval(self):
        self.clock.advance(0)
        self.clock.pump([1] * 21)
        self.assertEqual(self.times(), [0, 5, 10, 15, 20])
        path, fields = self.poster.posts[0][1], dict(self.poster.posts[0][2])
        post_id = fields.pop("id")
        self.assertEqual((path, fields), ("/heartbeat", {"name": "builder", "status": "ok"}))
        # every beat is a post of its own
        ids = [f["id"] for _, _, f in self.poster.posts]
        self.assertEqual(ids[0], post_id)
        self.assertEqual(len(set(ids)), len(ids))

    def test_backoff_while_down_then_back_to_interval(self):
        self.clock.advance(0)
        self.poster.up = False
        self.clock.pump([1] * 5)                # the post at t=5 fails
        self.clock.pump([0.5] * 200)            # 100 s of the server being down
        down = [t for t in self.times() if 5 <= t <= 105]
        gaps = [b - a for a, b in zip(down, down[1:])]
        self.assertEqual(gaps[:6], [1, 2, 4, 8, 16, 30])  # exponential, capped at 30 s
        self.assertTrue(all(g == 30 for g in gaps[5:]))
        self.assertEqual(self.service.up, False)
        self.poster.up = True
        self.clock.pump([0.5] * 80)
        after = [t for t in self.times() if t > 105]
        gaps = [b - a for a, b in zip(after, after[1:])]
        self.assertTrue(gaps and all(g == 5 for g in gaps), gaps)
        self.assertTrue(self.service.up)
        self.assertTrue(self.service.failed >= 8)

    def test_never_two_in_flight(self):
        self.poster.hold = True
        self.clock.advance(0)
        self.clock.pump([1] * 60)  # the server never answers
        self.assertEqual(len(self.poster.posts), 1)
        self.service.beat()
        self.assertEqual(len(self.poster.posts), 1)
        self.poster.release()
        self.clock.advance(5)
        self.assertEqual(len(self.poster.posts), 2)

    def test_status_errors_are_reported_not_raised(self):
        self.service.status = lambda: 1 / 0
        self.clock.advance(0)
        self.assertEqual(self.poster.posts[0][2]["status"], "status unknown (ZeroDivisionError)")

    def test_stop_cancels(self):
        self.clock.advance(0)
        self.service.stopService()
        self.clock.pump([5] * 5)
        self.assertEqual(len(self.poster.posts), 1)


class LogSenderTests(unittest.TestCase):

    def setUp(self):
        self.clock = task.Clock()
        self.poster = ScriptedPoster(self.clock)
        self.sender = monitor.LogSender(self.poster, "builder", max_queue=5, clock=self.clock)

    def messages(self):
        return [f["message"] for _, _, f in self.poster.posts]

    def test_in_order(self):
        for i in range(3):
            self.sender.send(40, "m%d" % i)
        self.assertEqual(self.messages(), ["m0", "m1", "m2"])
        fields = dict(self.poster.posts[0][2])
        self.assertRegex(fields.pop("id"), r"^[0-9a-f]{32}$")
        self.assertEqual(fields, {"name": "builder", "level": "40", "message": "m0"})
        self.sender.send(21, "done", notify=True)
        self.assertEqual(self.poster.posts[-1][2]["notify"], "1")

    def test_down_for_a_minute_then_catches_up(self):
        self.poster.up = False
        for i in range(8):
            self.sender.send(40, "m%d" % i)
            self.clock.advance(7.5)      # 60 s of outage, records keep coming
        self.assertEqual(self.sender.sent, 0)
        self.assertEqual(len(self.sender.queue), 5)
        self.assertEqual(self.sender.dropped, 3)
        self.poster.up = True
        self.clock.pump([1] * 31)  # the next retry is at most 30 s away
        delivered = [m for m in self.messages()[-6:]]
        self.assertEqual(delivered[:5], ["m0", "m1", "m2", "m3", "m4"])
        self.assertIn("3 log records were dropped", delivered[5])
        self.assertEqual(len(self.sender.queue), 0)
        self.assertEqual(self.sender.up, True)

    def test_permanent_errors_drop_the_record(self):
        self.poster.up = False
        self.poster.permanent = True
        self.sender.send(40, "refused")
        self.assertEqual((self.sender.refused, len(self.sender.queue)), (1, 0))
        self.poster.up = True
        self.sender.send(40, "next")
        self.assertEqual(self.messages(), ["refused", "next"])

    def test_a_retry_sends_the_same_id(self):
        self.poster.up = False
        self.sender.send(40, "again")
        self.sender.send(40, "other")
        self.clock.pump([1] * 8)
        self.poster.up = True
        self.clock.pump([1] * 31)
        ids = {}
        for _, _, fields in self.poster.posts:
            ids.setdefault(fields["message"], set()).add(fields["id"])
        self.assertGreater(len([f for _, _, f in self.poster.posts
                                if f["message"] == "again"]), 2)
        self.assertEqual(len(ids["again"]), 1)  # every try of a record: one id
        self.assertEqual(len(ids["other"]), 1)
        self.assertNotEqual(ids["again"], ids["other"])

    def test_max_attempts(self):
        sender = monitor.LogSender(self.poster, "builder", max_attempts=3, clock=self.clock)
        self.poster.up = False
        sender.send(20, "x")
        self.clock.pump([1] * 20)
        self.assertEqual(len(self.poster.posts), 3)
        self.assertEqual(sender.given_up, 1)

    def test_drained(self):
        self.poster.hold = True
        self.sender.send(20, "a")
        self.sender.send(20, "b")
        d = self.sender.drained()
        self.assertNoResult(d)
        self.poster.release()
        self.assertNoResult(d)
        self.poster.release()
        self.successResultOf(d)


class LogForwarderTests(unittest.TestCase):

    def setUp(self):
        self.clock = task.Clock()
        self.poster = ScriptedPoster(self.clock)
        self.publisher = LogPublisher()
        self.forwarder = monitor.LogForwarder(self.poster, "builder", level=30,
                                              publisher=self.publisher, clock=self.clock)
        self.forwarder.startService()
        self.log = Logger(namespace="some.program", observer=self.publisher)

    def test_levels(self):
        self.log.debug("debug {x}", x=1)
        self.log.info("info")
        self.log.warn("warning {x}", x=2)
        self.log.error("error")
        self.log.critical("critical")
        self.assertEqual([(f["level"], f["message"]) for _, _, f in self.poster.posts],
                         [("30", "warning 2"), ("40", "error"), ("50", "critical")])

    def test_failures_carry_the_traceback(self):
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure("it broke")
        [(_, _, fields)] = self.poster.posts
        self.assertEqual(fields["level"], "50")
        self.assertIn("it broke", fields["message"])
        self.assertIn("ZeroDivisionError", fields["message"])

    def test_own_messages_are_not_forwarded(self):
        Logger(namespace="minard.monitor", observer=self.publisher).error("loop?")
        self.assertEqual(self.poster.posts, [])

    def test_stop_removes_the_observer(self):
        d = self.forwarder.stopService()
        self.successResultOf(d)
        self.log.error("after")
        self.assertEqual(self.poster.posts, [])


class OwnLogForwardingTests(unittest.TestCase):
    """What a minard process forwards: warnings and errors, minard's own INFO lines (links
    up and down), Twisted's connection retries thinned; a storm is bounded."""

    def setUp(self):
        self.clock = task.Clock()
        self.poster = ScriptedPoster(self.clock)
        self.publisher = LogPublisher()
        self.forwarder = monitor.LogForwarder(self.poster, "minard-dispatch-push", level=30,
                                              own_level=20, publisher=self.publisher,
                                              clock=self.clock)
        self.forwarder.startService()
        self.addCleanup(self.forwarder.stopService)

    def sent(self):
        return [(f["level"], f["message"]) for _, _, f in self.poster.posts]

    def test_own_info_lines_and_others_warnings(self):
        own = Logger(namespace="minard.services.dispatch_push.DispatchPush",
                     observer=self.publisher)
        other = Logger(namespace="twisted.web.client._HTTP11ClientFactory",
                       observer=self.publisher)
        own.info("lost the dispatcher link; reconnecting")
        own.debug("detail")
        other.info("Starting factory {f}", f="x")
        other.warn("something odd")
        self.assertEqual(self.sent(), [("20", "lost the dispatcher link; reconnecting"),
                                       ("30", "something odd")])

    def test_retries_are_thinned(self):
        retry = Logger(namespace="twisted.application._client_service.ClientService",
                       observer=self.publisher)
        for attempt in range(1, 10):
            retry.info("Scheduling retry {attempt} to connect {endpoint} in {delay} seconds.",
                       attempt=attempt, endpoint="<HostnameEndpoint 127.0.0.1:5553>",
                       delay=1.2345 * attempt)
        self.assertEqual([m for _, m in self.sent()], [
            "cannot connect to 127.0.0.1:5553 (attempt %d failed); next "
            "try in %.1f s" % (n, 1.2345 * n) for n in (1, 2, 4, 8)])

    def test_a_storm_is_bounded_and_reported(self):
        log = Logger(namespace="minard.services.dispatch_pull", observer=self.publisher)
        for i in range(500):
            log.error("flush failed {i}", i=i)
        self.assertEqual(len(self.poster.posts), C.MONITOR_FORWARD_BURST)
        self.assertEqual(self.forwarder.suppressed, 500 - C.MONITOR_FORWARD_BURST)
        self.clock.advance(1 / C.MONITOR_FORWARD_RATE + 0.1)  # one token back: the report
        level, message = self.sent()[-1]
        self.assertEqual(level, "30")
        self.assertEqual(message, "%d log records of minard-dispatch-push not forwarded (more "
                         "than 20 at once or 10 a minute); the process's own log file has "
                         "them" % (500 - C.MONITOR_FORWARD_BURST))
        # an hour later: back to normal
        self.clock.advance(3600)
        log.error("later")
        self.assertEqual(self.sent()[-1], ("40", "later"))
        self.assertEqual(len(self.poster.posts), C.MONITOR_FORWARD_BURST + 2)

    def test_own_level_off(self):
        only = monitor.from_config({"url": "http://h:1", "own-level": "off"}, "x",
                                   lambda: "ok")
        forwarder = list(only)[1]
        self.assertEqual((forwarder.level, forwarder.own_level), (30, 30))
        self.assertRaises(OptionError, monitor.from_config,
                          {"url": "http://h:1", "own-level": "chatty"}, "x", lambda: "ok")


class ConfigTests(unittest.TestCase):

    def test_no_url_no_service(self):
        self.assertIsNone(monitor.from_config({}, "minard-web", lambda: "ok"))
        self.assertIsNone(monitor.from_config({"url": ""}, "minard-web", lambda: "ok"))

    def test_service(self):
        pw = os.path.join(tempfile.mkdtemp(), "pw")
        with open(pw, "w") as f:
            f.write("secret\n")
        service = monitor.from_config({"url": "http://127.0.0.1:8081", "user": "u",
                                       "password-file": pw, "interval": "2"},
                                      "minard-web", lambda: "ok")
        beat, forwarder = list(service)
        self.assertIsInstance(beat, monitor.HeartbeatService)
        self.assertEqual(beat.interval, 2.0)
        self.assertIsInstance(forwarder, monitor.LogForwarder)
        self.assertEqual(forwarder.level, 30)
        self.assertIn(b"authorization", beat.poster.headers)
        only = monitor.from_config({"url": "http://h:1", "level": "off"}, "x", lambda: "ok")
        self.assertEqual(len(list(only)), 1)

    def test_errors(self):
        for section in ({"url": "ftp://x"}, {"url": "http://h:99999"},
                        {"url": "http://h", "user": "u"},
                        {"url": "http://h", "interval": "fast"},
                        {"url": "http://h", "level": "loud"},
                        {"url": "http://h", "cafile": "/nonexistent.pem"},
                        {"url": "http://h", "password-file": "/nonexistent", "user": "u"},
                        {"url": "http://h", "colour": "red"}):
            with self.assertRaises(OptionError) as cm:
                monitor.from_config(section, "x", lambda: "ok")
            self.assertTrue(str(cm.exception).startswith("[monitor] "))

    def test_stdin_lines(self):
        self.assertEqual(monitor.parse_stdin_line("SUCCESS - copied\n", 20),
                         (21, "copied", True))
        self.assertEqual(monitor.parse_stdin_line("WARNING - disk 90%", 20),
                         (30, "disk 90%", False))
        self.assertEqual(monitor.parse_stdin_line("ERROR - bad", 20), (40, "bad", False))
        self.assertEqual(monitor.parse_stdin_line("plain text", 20), (20, "plain text", False))


class DeliveryTests(LogServerMixin, unittest.TestCase):
    """A program using minard.monitor against the real server, which dies and returns."""

    def make_services(self, base_url=None):
        poster = monitor.Poster(base_url or self.url, (USER, PASSWORD), timeout=2.0)
        self.addCleanup(poster.close)
        beat = monitor.HeartbeatService(name="builder", interval=0.2, poster=poster,
                                        status=lambda: "running")
        beat.backoff = monitor.Backoff(0.1, 0.4)
        self.publisher = LogPublisher()
        forwarder = monitor.LogForwarder(poster, "builder", level=30,
                                         publisher=self.publisher)
        forwarder.sender.backoff = monitor.Backoff(0.1, 0.4)
        for service in (beat, forwarder):
            service.startService()
            self.addCleanup(service.stopService)
        return beat, forwarder

    def messages(self):
        if "builder.log" not in self.log_files():
            return []
        return [logformat.parse_line(x)["message"] for x in self.log_lines("builder")]

    @defer.inlineCallbacks
    def test_keeps_running_and_catches_up(self):
        beat, forwarder = self.make_services()
        log = Logger(namespace="daq.builder", observer=self.publisher)
        work = []
        loop = task.LoopingCall(lambda: work.append(1))  # the program's own work
        loop.start(0.02)
        self.addCleanup(loop.stop)
        log.error("before {n}", n=1)
        yield wait_for(lambda: self.messages() == ["before 1"]
                       and self.sync.command("GET", "heartbeat:builder") == "running")
        yield self.stop_server()
        self.sync.command("DEL", "heartbeat:builder")
        work_before = len(work)
        for i in range(5):
            log.error("while down {i}", i=i)
            yield task.deferLater(reactor, 0.2, lambda: None)
        yield wait_for(lambda: beat.failed >= 2)
        self.assertEqual(self.messages(), ["before 1"])
        self.assertEqual(len(forwarder.sender.queue), 5)
        self.assertIsNone(self.sync.command("GET", "heartbeat:builder"))
        self.assertGreater(len(work) - work_before, 20)  # never blocked
        self.start_server()
        yield wait_for(lambda: len(self.messages()) == 6, timeout=10)
        self.assertEqual(self.messages(), ["before 1"] + ["while down %d" % i
                                                          for i in range(5)])
        yield wait_for(lambda: self.sync.command("GET", "heartbeat:builder") == "running")
        self.assertEqual(forwarder.sender.dropped, 0)
        self.assertEqual(self.sync.command("GET", "alarms:count"), "6")  # level 40 = alarms


def make_self_signed(directory, hostname="localhost"):
    """A self-signed certificate for `hostname` (no IP address in it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class HTTPSTests(LogServerMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        LogServerMixin.setUp(self)
        self.key, self.cert = make_self_signed(self.tmp)
        endpoint = endpoints.serverFromString(
            reactor, "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s"
            % (self.key, self.cert))
        self.tls = yield endpoint.listen(self.logsite.site())
        self.addCleanup(self.tls.stopListening)
        self.tls_port = self.tls.getHost().port

    def poster(self, host, cafile):
        poster = monitor.Poster("https://%s:%d" % (host, self.tls_port), (USER, PASSWORD),
                                cafile=cafile, timeout=5.0)
        self.addCleanup(poster.close)
        return poster

    @defer.inlineCallbacks
    def test_right_hostname_accepted(self):
        yield self.poster("localhost", self.cert).post("/heartbeat", {"name": "builder",
                                                                      "status": "tls"})
        self.assertEqual(self.sync.command("GET", "heartbeat:builder"), "tls")

    @defer.inlineCallbacks
    def test_wrong_hostname_refused(self):
        with self.assertRaises(monitor.MonitorError) as cm:
            yield self.poster("127.0.0.1", self.cert).post("/heartbeat", {"name": "builder",
                                                                          "status": "tls"})
        self.assertFalse(cm.exception.permanent)
        self.assertIn("Mismatch", str(cm.exception))  # service-identity refused the name
        self.assertIsNone(self.sync.command("GET", "heartbeat:builder"))

    @defer.inlineCallbacks
    def test_unknown_certificate_refused(self):
        other_dir = tempfile.mkdtemp()
        _, other_cert = make_self_signed(other_dir)
        with self.assertRaises(monitor.MonitorError) as cm:
            yield self.poster("localhost", other_cert).post("/heartbeat", {"name": "builder",
                                                                          "status": "x"})
        self.assertIn("certificate verify failed", str(cm.exception))
        self.assertIsNone(self.sync.command("GET", "heartbeat:builder"))


class CommandTests(LogServerMixin, unittest.TestCase):
    """minard-log, run as a separate process."""

    def minard_log(self, *args, stdin=None, password=PASSWORD):
        pw = os.path.join(self.tmp, "pw")
        with open(pw, "w") as f:
            f.write(password + "\n")
        argv = ["-m", "minard.monitor", "--url", self.url, "--name", "builder",
                "--user", USER, "--password-file", pw, "--retries", "2"] + list(args)
        env = dict(os.environ, PYTHONPATH=ROOT)
        if stdin is None:
            return utils.getProcessOutputAndValue(sys.executable, argv, env=env, path=ROOT)
        script = ("import subprocess, sys; sys.exit(subprocess.run([sys.executable] + "
                  "sys.argv[1:], input=%r.encode()).returncode)" % (stdin,))
        return utils.getProcessOutputAndValue(sys.executable, ["-c", script] + argv,
                                              env=env, path=ROOT)

    @defer.inlineCallbacks
    def test_one_message(self):
        out, err, code = yield self.minard_log("--level", "40", "crate", "3", "tripped")
        self.assertEqual(code, 0, err)
        [line] = self.log_lines("builder")
        self.assertEqual(logformat.parse_line(line)["message"], "crate 3 tripped")
        self.assertEqual(self.sync.command("GET", "alarms:count"), "1")

    @defer.inlineCallbacks
    def test_stdin_lines(self):
        out, err, code = yield self.minard_log(
            stdin="INFO - starting\nWARNING - slow disk\nSUCCESS - copied run 1234\n"
                  "no level here\n")
        self.assertEqual(code, 0, err)
        parsed = [logformat.parse_line(x) for x in self.log_lines("builder")]
        self.assertEqual([(p["level"], p["message"]) for p in parsed],
                         [("INFO", "starting"), ("WARNING", "slow disk"),
                          ("SUCCESS", "copied run 1234"), ("INFO", "no level here")])
        self.assertEqual(self.sync.command("GET", "alarms:count"), "1")  # SUCCESS notifies

    @defer.inlineCallbacks
    def test_heartbeat(self):
        out, err, code = yield self.minard_log("--heartbeat", "ok")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.sync.command("GET", "heartbeat:builder"), "ok")

    @defer.inlineCallbacks
    def test_wrong_password(self):
        out, err, code = yield self.minard_log("hello", password="nope")
        self.assertEqual(code, 1)
        self.assertIn(b"not posted", err)
        self.assertEqual(self.log_files(), [])

    @defer.inlineCallbacks
    def test_usage_error(self):
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "minard.monitor", "--url", "nowhere", "--name", "x", "m"],
            env=dict(os.environ, PYTHONPATH=ROOT), path=ROOT)
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(b"url must be", err)




class SelfMonitoringTests(LogServerMixin, unittest.TestCase):
    """Every minard process posts its own heartbeat: ProcessBase + the [monitor] section."""

    @defer.inlineCallbacks
    def test_process_heartbeat(self):
        from minard.services.common import ProcessBase

        pw = os.path.join(self.tmp, "pw")
        with open(pw, "w") as f:
            f.write(PASSWORD + "\n")
        options = {"redis": self.redis_server.url, "config-sections": {"monitor": {
            "url": self.url, "user": USER, "password-file": pw, "interval": "0.2"}}}
        base = ProcessBase(options, "web", heartbeat_name="minard-web",
                           status=lambda: "serving 3 clients")
        self.addCleanup(base.redis.disconnect)
        base.service.startService()
        self.addCleanup(base.service.stopService)
        yield wait_for(lambda: self.sync.command("GET", "heartbeat:minard-web")
                       == "serving 3 clients")
        self.assertTrue(10 < self.sync.command("TTL", "heartbeat:minard-web") <= 15)
        # and its warnings reach its log on the server
        Logger(namespace="minard.web").warn("slow Redis reply: {ms} ms", ms=900)
        yield wait_for(lambda: "minard-web.log" in self.log_files())
        [line] = self.log_lines("minard-web")
        self.assertEqual(logformat.parse_line(line)["message"], "slow Redis reply: 900 ms")
