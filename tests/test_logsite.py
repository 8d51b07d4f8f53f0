"""The logging server (minard/web/logsite.py) against a real Redis and real HTTP."""
import json
import os
import re
import time

from twisted.internet import defer, task
from twisted.trial import unittest

from minard import logformat
from minard.web.logsite import RotatingLogFiles, TokenBuckets
from tests.logserver_support import LogServerMixin, basic

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - (\S+) - ([A-Z]+) - (.*)$")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
XSS = "<img src=x onerror=alert(1)>"


class CompatTests(LogServerMixin, unittest.TestCase):
    """The original's documented curl calls give the same keys and lines."""

    @defer.inlineCallbacks
    def test_heartbeat(self):
        before = int(time.time())
        code, headers, body = yield self.post("/heartbeat", b"name=builder&status=ok")
        self.assertEqual((code, body), (200, b"ok\n"))
        self.assertEqual(self.sync.command("GET", "heartbeat:builder"), "ok")
        self.assertTrue(0 < self.sync.command("TTL", "heartbeat:builder") <= 10)
        uptime = int(self.sync.command("GET", "uptime:builder"))
        self.assertTrue(before <= uptime <= time.time())
        self.assertTrue(0 < self.sync.command("TTL", "uptime:builder") <= 10)
        # a later heartbeat keeps the uptime and refreshes its TTL
        self.sync.command("SET", "uptime:builder", "1000", "EX", "3")
        code, _, _ = yield self.post("/heartbeat", b"name=builder&status=running+fine")
        self.assertEqual(code, 200)
        self.assertEqual(self.sync.command("GET", "uptime:builder"), "1000")
        self.assertTrue(self.sync.command("TTL", "uptime:builder") > 3)
        self.assertEqual(self.sync.command("GET", "heartbeat:builder"), "running fine")
        # after a gap (the key expired) the uptime starts again
        self.sync.command("DEL", "uptime:builder")
        yield self.post("/heartbeat", b"name=builder&status=ok")
        self.assertTrue(int(self.sync.command("GET", "uptime:builder")) >= before)

    @defer.inlineCallbacks
    def test_heartbeat_uses_the_program_expire(self):
        yield self.post("/heartbeat", b"name=minard-web&status=ok")
        self.assertTrue(10 < self.sync.command("TTL", "heartbeat:minard-web") <= 15)

    @defer.inlineCallbacks
    def test_log_alarm(self):
        code, _, body = yield self.post("/log", b"name=builder&level=40&message=crate+3+is+off")
        self.assertEqual((code, body), (200, b"ok\n"))
        [line] = self.log_lines("builder")
        self.assertEqual(LINE.match(line).groups(), ("builder", "DANGER", "crate 3 is off"))
        self.assertEqual(self.sync.command("GET", "alarms:count"), "1")
        alarm = json.loads(self.sync.command("GET", "alarms:0"))
        self.assertEqual(set(alarm), {"id", "level", "message", "time"})
        self.assertEqual((alarm["id"], alarm["level"], alarm["message"]),
                         (0, 40, "builder - crate 3 is off"))
        self.assertRegex(alarm["time"], ISO_UTC)
        self.assertTrue(86000 < self.sync.command("TTL", "alarms:0") <= 86400)
        yield self.post("/log", b"name=xl3&level=50&message=second")
        self.assertEqual(json.loads(self.sync.command("GET", "alarms:1"))["id"], 1)
        self.assertEqual(self.log_lines("xl3")[0].split(" - ")[2], "CRITICAL")

    @defer.inlineCallbacks
    def test_levels_and_notify(self):
        yield self.post("/log", b"name=builder&level=20&message=info")
        yield self.post("/log", b"name=builder&level=30&message=warn")
        self.assertIsNone(self.sync.command("GET", "alarms:count"))
        yield self.post("/log", b"name=builder&level=21&message=done&notify=True")
        yield self.post("/log", b"name=builder&level=10&message=bare&notify")
        self.assertEqual(self.sync.command("GET", "alarms:count"), "2")
        self.assertEqual(json.loads(self.sync.command("GET", "alarms:0"))["level"], 21)
        self.assertEqual([LINE.match(x).group(2) for x in self.log_lines("builder")],
                         ["INFO", "WARNING", "SUCCESS", "DEBUG"])

    @defer.inlineCallbacks
    def test_multipart_and_punctuation(self):
        # curl -F sends multipart; ';' and '+' must survive (Twisted's own parser splits on ';')
        code, _, _ = yield self.post("/log", {"name": "builder", "level": "20",
                                              "message": "a;b=c&d"})
        self.assertEqual(code, 200)
        yield self.post("/log", b"name=builder&level=20&message=x;y+z%2B1")
        msgs = [logformat.parse_line(x)["message"] for x in self.log_lines("builder")]
        self.assertEqual(msgs, ["a;b=c&d", "x;y z+1"])


class SecurityTests(LogServerMixin, unittest.TestCase):

    def assertNothingStored(self):
        self.assertEqual(self.sync.command("KEYS", "*"), [])
        self.assertEqual(self.log_files(), [])

    @defer.inlineCallbacks
    def test_no_credentials(self):
        code, headers, body = yield self.post("/heartbeat", b"name=builder&status=ok",
                                              authorization=False)
        self.assertEqual(code, 401)
        self.assertIn(b"Basic", headers.getRawHeaders(b"www-authenticate")[0])
        self.assertIn("error", json.loads(body))
        code, _, _ = yield self.post("/log", b"name=builder&level=40&message=x",
                                     authorization=False)
        self.assertEqual(code, 401)
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_wrong_credentials(self):
        for authorization in (basic("snoplus", "wrong"), basic("nobody", "pw"),
                              b"Basic !!!notbase64", b"Bearer abc", basic("snoplus", "")):
            code, _, _ = yield self.post("/log", b"name=builder&level=40&message=x",
                                         authorization=authorization)
            self.assertEqual(code, 401, authorization)
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_path_traversal(self):
        outside = os.path.join(self.tmp, "passwd.log")
        for name in (b"../../etc/passwd", b"..%2F..%2Fetc%2Fpasswd", b"../passwd", b"",
                     b"builder%00", b"builder/../xl3", b"/etc/passwd"):
            for path, rest in (("/log", b"&level=40&message=x"), ("/heartbeat", b"&status=ok")):
                code, _, body = yield self.post(path, b"name=" + name + rest)
                self.assertEqual(code, 400, (name, body))
        self.assertFalse(os.path.exists(outside))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "etc")))
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_symlink_in_log_dir_is_not_followed(self):
        os.makedirs(self.log_dir, exist_ok=True)
        target = os.path.join(self.tmp, "target")
        with open(target, "w") as f:
            f.write("precious\n")
        os.symlink(target, os.path.join(self.log_dir, "builder.log"))
        code, _, _ = yield self.post("/log", b"name=builder&level=20&message=x")
        self.assertEqual(code, 503)
        with open(target) as f:
            self.assertEqual(f.read(), "precious\n")

    @defer.inlineCallbacks
    def test_markup_stored_as_text(self):
        message = XSS + " <script>alert(2)</script>"
        yield self.post("/log", {"name": "builder", "level": "40", "message": message})
        [line] = self.log_lines("builder")
        self.assertEqual(logformat.parse_line(line)["message"], message)
        self.assertIn(XSS, line)  # text, byte for byte (the pages use textContent)
        alarm = json.loads(self.sync.command("GET", "alarms:0"))
        self.assertEqual(alarm["message"], "builder - " + message)
        yield self.post("/heartbeat", {"name": "builder", "status": XSS})
        self.assertEqual(self.sync.command("GET", "heartbeat:builder"), XSS)

    @defer.inlineCallbacks
    def test_newlines_cannot_forge_lines(self):
        forged = "real\n2016-04-18 12:00:00,000 - xl3 - DANGER - forged\r\nand \\n \x00 é €"
        yield self.post("/log", {"name": "builder", "level": "20", "message": forged})
        lines = self.log_lines("builder")
        self.assertEqual(len(lines), 1)
        parsed = logformat.parse_line(lines[0])
        self.assertEqual((parsed["name"], parsed["level"], parsed["levelno"]),
                         ("builder", "INFO", 20))
        self.assertEqual(parsed["message"], forged.strip())

    @defer.inlineCallbacks
    def test_bad_fields(self):
        cases = [
            ("/log", b"name=builder&level=x&message=m"),
            ("/log", b"name=builder&level=4.0&message=m"),
            ("/log", b"name=builder&level=&message=m"),
            ("/log", b"name=builder&level=99999&message=m"),
            ("/log", b"name=builder&message=m"),
            ("/log", b"name=builder&level=20"),
            ("/log", b"level=20&message=m"),
            ("/log", b"name=nosuchprogram&level=20&message=m"),
            ("/heartbeat", b"name=builder"),
            ("/heartbeat", b"status=ok"),
            ("/heartbeat", b""),
            ("/heartbeat", b"\xff\xfe=\x00"),
        ]
        for path, body in cases:
            code, _, answer = yield self.post(path, body)
            self.assertEqual(code, 400, (path, body, answer))
            self.assertIn("error", json.loads(answer))
        self.assertNothingStored()

    @defer.inlineCallbacks
    def test_get_is_not_allowed(self):
        import treq
        response = yield treq.get(self.url + "/heartbeat", persistent=False)
        yield treq.content(response)
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def test_message_size_limit(self):
        ok = "a" * 65536
        code, _, _ = yield self.post("/log", b"name=builder&level=20&message=" + ok.encode())
        self.assertEqual(code, 200)
        code, _, _ = yield self.post("/log", b"name=builder&level=20&message=" + ok.encode()
                                     + b"b")
        self.assertEqual(code, 413)
        self.assertEqual(len(self.log_lines("builder")), 1)

    @defer.inlineCallbacks
    def test_ten_megabyte_body(self):
        body = b"name=builder&level=40&message=" + b"a" * (10 * 1024 * 1024)
        head = (b"POST /log HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: %d\r\n\r\n" % (basic(), len(body)))
        chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
        answer = yield self.raw(head, chunks)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
        # with Expect: 100-continue the answer comes before any body byte is sent
        answer = yield self.raw(head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
        self.assertNotIn(b"100 Continue", answer)
        # a declared size far beyond any limit: answered and closed at once
        answer = yield self.raw(head.replace(b"Content-Length: %d" % len(body),
                                             b"Content-Length: 99999999999"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
        self.assertNothingStored()
        code, _, _ = yield self.post("/heartbeat", b"name=builder&status=ok")
        self.assertEqual(code, 200)  # and the server carries on

    @defer.inlineCallbacks
    def test_chunked_body_over_limit(self):
        head = (b"POST /log HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" % basic())
        piece = b"a" * 32768
        chunks = [b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(20)] + [b"0\r\n\r\n"]
        answer = yield self.raw(head, chunks)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
        self.assertNothingStored()


class RateLimitTests(LogServerMixin, unittest.TestCase):

    def setUp(self):
        self.site_clock = task.Clock()
        self.site_clock.advance(1000)
        LogServerMixin.setUp(self)

    @defer.inlineCallbacks
    def test_request_burst(self):
        self.logsite.requests = TokenBuckets(1.0, 5, self.site_clock.seconds)
        codes = []
        for _ in range(7):
            code, headers, _ = yield self.post("/heartbeat", b"name=builder&status=ok")
            codes.append(code)
        self.assertEqual(codes, [200] * 5 + [429] * 2)
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"1"])
        self.site_clock.advance(1)
        code, _, _ = yield self.post("/heartbeat", b"name=builder&status=ok")
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_failed_logins(self):
        codes = []
        for _ in range(12):
            code, _, _ = yield self.post("/heartbeat", b"name=builder&status=ok",
                                         authorization=basic("snoplus", "guess"))
            codes.append(code)
        self.assertEqual(codes, [401] * 10 + [429] * 2)
        # even the right password waits until the failure bucket refills
        code, _, _ = yield self.post("/heartbeat", b"name=builder&status=ok")
        self.assertEqual(code, 429)
        self.site_clock.advance(2)
        code, _, _ = yield self.post("/heartbeat", b"name=builder&status=ok")
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_a_wrong_password_elsewhere_on_the_machine_does_not_lock_out_good_programs(self):
        """One program on buffer1 with a wrong password (posting every second, as the
        original client did) must not make every other buffer1 program's heartbeat stale."""
        self.logsite.auth.clock = self.site_clock.seconds  # the auth cache on the test clock
        # failed logins refill one per 5 s: the bad program (2 per 5 s) keeps it empty
        self.logsite.failures = TokenBuckets(0.2, 2, self.site_clock.seconds)
        code, _, _ = yield self.post("/heartbeat", b"name=builder&status=ok")
        self.assertEqual(code, 200)
        for _beat in range(2 * 300 // 5):  # ten minutes: past the auth cache lifetime
            self.site_clock.advance(5)
            for _ in range(2):
                code, _, _ = yield self.post("/heartbeat", b"name=L2-client&status=ok",
                                             authorization=basic("snoplus", "old-password"))
                self.assertIn(code, (401, 429))
            code, _, _ = yield self.post("/heartbeat", b"name=builder&status=ok")
            self.assertEqual(code, 200)
        # a guessed password is still throttled
        code, _, _ = yield self.post("/heartbeat", b"name=builder&status=ok",
                                     authorization=basic("snoplus", "guess"))
        self.assertEqual(code, 429)

    def test_buckets_refill_and_are_bounded(self):
        now = [0.0]
        buckets = TokenBuckets(2.0, 3, lambda: now[0])
        self.assertEqual([buckets.take("a") for _ in range(4)], [True] * 3 + [False])
        now[0] += 0.5
        self.assertTrue(buckets.take("a"))
        self.assertFalse(buckets.take("a"))
        for i in range(20000):
            buckets.take("client-%d" % i)
        self.assertLessEqual(len(buckets.buckets), 10000)


class RotationTests(unittest.TestCase):

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def test_rotation(self):
        files = RotatingLogFiles(self.dir, max_bytes=1000, backups=3)
        lines = ["%05d %s" % (i, "x" * 90) for i in range(100)]  # 97 bytes a line
        for line in lines:
            files.write("builder", line)
        names = sorted(os.listdir(self.dir))
        self.assertEqual(names, ["builder.log", "builder.log.1", "builder.log.2",
                                 "builder.log.3"])
        kept = []
        for name in ("builder.log.3", "builder.log.2", "builder.log.1", "builder.log"):
            path = os.path.join(self.dir, name)
            self.assertLessEqual(os.path.getsize(path), 1000)
            with open(path) as f:
                kept += f.read().splitlines()
        self.assertEqual(kept, lines[-len(kept):])  # newest lines, in order, none torn
        self.assertEqual(len(kept), 100 - 60)      # 10 per file x 4 files

    def test_defaults_are_5mb_times_10(self):
        files = RotatingLogFiles(self.dir)
        self.assertEqual((files.max_bytes, files.backups), (5 * 1024 * 1024, 10))

    def test_rejects_names_outside(self):
        files = RotatingLogFiles(self.dir)
        for name in ("../x", "a/b", "/etc/passwd"):
            self.assertRaises(ValueError, files.path, name)


class RotationOverHTTPTests(LogServerMixin, unittest.TestCase):

    @defer.inlineCallbacks
    def test_rotation_through_the_server(self):
        self.logsite.log_files = RotatingLogFiles(self.log_dir, max_bytes=400, backups=2)
        for i in range(20):
            code, _, _ = yield self.post("/log", {"name": "data", "level": "20",
                                                  "message": "message %02d" % i})
            self.assertEqual(code, 200)
        self.assertEqual(self.log_files(), ["data.log", "data.log.1", "data.log.2"])
        last = logformat.parse_line(self.log_lines("data")[-1])
        self.assertEqual(last["message"], "message 19")
