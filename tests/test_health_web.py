"""The Channel health page's routes (minard/web/health.py via minard/web/site.py) against
a real Redis: get_health answers what the health service stored (seeded through its own
apply script), mask_channel masks and unmasks for authenticated users only."""
import base64
import json
import os
import tempfile

import treq
from twisted.internet import defer
from twisted.trial import unittest

from minard import auth
from minard import constants as C
from minard.store import keys
from minard.web.health import Masking
from tests.logserver_support import PASSWORD, USER, write_users
from tests.test_health import seed_health
from tests.web_support import SiteTestMixin


def basic(user=USER, password=PASSWORD):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


class HealthRoutesTests(SiteTestMixin, unittest.TestCase):

    def setUp(self):
        d = SiteTestMixin.setUp(self)
        self.users = write_users(tempfile.mkdtemp(prefix="minard-users-"))
        self.addCleanup(os.unlink, self.users)
        return d

    def enable_masking(self):
        self.site.masking = Masking(auth.Authenticator(self.users), self.clock.seconds)

    @defer.inlineCallbacks
    def post(self, body, authorization=None, headers=None, raw=None):
        h = {"Content-Type": ["application/json"]}
        if authorization:
            h["Authorization"] = [authorization]
        for k, v in (headers or {}).items():
            h[k] = [v]
        resp = yield treq.post(self.base + "mask_channel", headers=h, pool=self.pool,
                               data=raw if raw is not None else json.dumps(body).encode())
        answer = yield resp.content()
        return resp.code, resp.headers, json.loads(answer)

    @defer.inlineCallbacks
    def test_page_and_nav(self):
        code, headers, body = yield self.get("health")
        self.assertEqual(code, 200)
        text = body.decode()
        for needle in ('id="health-open"', 'id="health-closed"', 'id="health-masked"',
                       'id="mask-form"', "static/js/health.js", 'href="health"'):
            self.assertIn(needle, text)
        code, _, body = yield self.get("detector")
        self.assertIn(b'href="health" class="active"', (yield self.get("health"))[2])
        self.assertIn(b"static/js/health_marks.js", body)
        self.assertIn(b"data-health-flags", body)

    @defer.inlineCallbacks
    def test_not_running(self):
        answer = yield self.get_json("get_health")
        self.assertFalse(answer["running"])
        self.assertEqual((answer["open"], answer["closed"], answer["masked"]), ([], [], []))
        self.assertFalse(answer["masking"])
        self.assertIsNone(answer["position"])

    @defer.inlineCallbacks
    def test_findings_as_stored(self):
        model = seed_health(self.sync, self.now)
        answer = yield self.get_json("get_health")
        self.assertTrue(answer["running"])
        self.assertEqual(answer["interval"], 60)
        self.assertEqual(answer["position"], int(self.now) // 60 - 1)
        self.assertEqual(answer["bucket_start"], answer["position"] * 60)
        self.assertLess(answer["age"], 60)
        self.assertEqual(answer["open"], model.findings)
        keys_open = [f["key"] for f in answer["open"]]
        self.assertEqual(keys_open[0], "hot/6/6/6")  # newest first
        self.assertEqual(sorted(keys_open[1:]), ["base/2/3/4", "dark/3/7", "hot/5/2/14"])
        self.assertEqual([f["key"] for f in answer["closed"]], ["dark/9/4"])
        closed = answer["closed"][0]
        self.assertEqual(closed["until"] - closed["since"], 3 * 60)
        self.assertEqual(answer["config"]["warmup-buckets"], 5)
        dark = [f for f in answer["open"] if f["key"] == "dark/3/7"][0]
        self.assertIn("32 of 32 channels without hits", " ".join(dark["summary"]))
        answer = yield self.get_json("get_health?closed=0")
        self.assertEqual(answer["closed"], [])
        for bad in ("closed=-1", "closed=501", "closed=x"):
            answer = yield self.get_json("get_health?" + bad, expect=400)
            self.assertIn("closed", answer["error"])

    @defer.inlineCallbacks
    def test_masking_off_without_an_auth_file(self):
        code, headers, answer = yield self.post(
            {"action": "mask", "crate": 1, "card": 2, "channel": 3, "reason": "x"}, basic())
        self.assertEqual(code, 403)
        self.assertIn("--auth-file", answer["error"])

    @defer.inlineCallbacks
    def test_mask_and_unmask(self):
        self.enable_masking()
        body = {"action": "mask", "crate": 1, "card": 2, "channel": 3,
                "reason": "  flasher,\tknown since run 250000 "}
        code, headers, answer = yield self.post(body)
        self.assertEqual(code, 401)
        self.assertIsNone(headers.getRawHeaders("www-authenticate"))  # no browser prompt
        code, _, answer = yield self.post(body, basic(password="wrong"))
        self.assertEqual((code, answer["error"]), (401, "wrong user or password"))
        self.assertEqual(self.sync.hgetall(keys.HEALTH_MASKS), {})
        code, _, answer = yield self.post(body, basic())
        self.assertEqual(code, 200, answer)
        index = C.channel_index(1, 2, 3)
        self.assertEqual(answer["by"], USER)
        stored = json.loads(self.sync.command("HGET", keys.HEALTH_MASKS, str(index)))
        self.assertEqual(stored, {"index": index, "crate": 1, "card": 2, "channel": 3,
                                  "by": USER, "at": self.now,
                                  "reason": "flasher, known since run 250000"})
        self.assertEqual(answer["masked"], [stored])
        listed = yield self.get_json("get_health")
        self.assertEqual(listed["masked"], [stored])
        self.assertTrue(listed["masking"])
        code, _, answer = yield self.post({"action": "unmask", "crate": 1, "card": 2,
                                           "channel": 3}, basic())
        self.assertEqual((code, answer["masked"]), (200, []))
        self.assertEqual(self.sync.hgetall(keys.HEALTH_MASKS), {})
        code, _, answer = yield self.post({"action": "unmask", "crate": 1, "card": 2,
                                           "channel": 3}, basic())
        self.assertEqual(code, 400)
        self.assertIn("is not masked", answer["error"])

    @defer.inlineCallbacks
    def test_bad_requests(self):
        self.enable_masking()
        good = {"action": "mask", "crate": 1, "card": 2, "channel": 3, "reason": "r"}
        for change, text in (
                ({"action": "hide"}, "action must be"),
                ({"crate": 20}, "crate must be between 0 and 19"),
                ({"crate": 19}, "crate 19 is not installed"),
                ({"crate": 17, "card": 15}, "trigger-sum card"),
                ({"card": "2"}, "card must be a whole number"),
                ({"channel": True}, "channel must be a whole number"),
                ({"channel": 32}, "channel must be between 0 and 31"),
                ({"reason": ""}, "a reason is required"),
                ({"reason": "x" * 201}, "longer than 200"),
                ({"reason": "a\u0000b"}, "cannot be shown"),
                ({"extra": 1}, "unknown field")):
            code, _, answer = yield self.post(dict(good, **change), basic())
            self.assertEqual(code, 400, (change, answer))
            self.assertIn(text, answer["error"], change)
        code, _, answer = yield self.post(None, basic(), raw=b"crate=1")
        self.assertEqual((code, answer["error"]), (400, "the body is not JSON"))
        code, _, answer = yield self.post(None, basic(), raw=b"x" * 5000)
        self.assertEqual(code, 413)
        code, _, answer = yield self.post(good, basic(),
                                          headers={"Content-Type": "text/plain"})
        self.assertEqual(code, 400)
        self.assertIn("send JSON", answer["error"])
        self.assertEqual(self.sync.hgetall(keys.HEALTH_MASKS), {})

    @defer.inlineCallbacks
    def test_cross_site_is_refused(self):
        self.enable_masking()
        good = {"action": "mask", "crate": 1, "card": 2, "channel": 3, "reason": "r"}
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            code, _, answer = yield self.post(good, basic(), headers=headers)
            self.assertEqual(code, 403, headers)
            self.assertIn("cross-site", answer["error"])
        self.assertEqual(self.sync.hgetall(keys.HEALTH_MASKS), {})

    @defer.inlineCallbacks
    def test_failed_logins_are_limited(self):
        self.enable_masking()
        good = {"action": "mask", "crate": 1, "card": 2, "channel": 3, "reason": "r"}
        codes = []
        for _ in range(C.AUTH_FAILURE_BURST + 2):
            code, headers, _ = yield self.post(good, basic(password="guess"))
            codes.append(code)
        self.assertEqual(codes[:C.AUTH_FAILURE_BURST], [401] * C.AUTH_FAILURE_BURST)
        self.assertEqual(codes[-1], 429)
        # the right password is refused too until the bucket refills (1 per second)
        code, _, _ = yield self.post(good, basic())
        self.assertEqual(code, 429)
        self.clock.advance(5)
        code, _, _ = yield self.post(good, basic())
        self.assertEqual(code, 200)


class WebRoleAuthFileTests(unittest.TestCase):
    timeout = 60

    def test_a_bad_auth_file_stops_the_web_role(self):
        from tests.support import REPO, RoleProcess, free_port
        tmp = tempfile.mkdtemp(prefix="minard-web-auth-")
        users = os.path.join(tmp, "users")
        with open(users, "w") as f:
            f.write("snoplus:not-a-hash\n")
        p = RoleProcess("web", "--listen", "tcp:%d:interface=127.0.0.1" % free_port(),
                        "--log-dir", tmp, "--programs", os.path.join(REPO, "etc", "programs.ini"),
                        "--auth-file", users).start()
        _, err = p.process.communicate(timeout=60)
        self.assertEqual(p.process.returncode, 1)
        self.assertIn(b"--auth-file:", err)
        self.assertIn(b"line 1", err)
        self.assertNotIn(b"Traceback", err)
