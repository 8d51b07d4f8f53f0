"""Alarms in headless Chromium against the real web and log-server roles and a real Redis:
an acknowledgement made on one screen clears the badge on every other screen, with the
acknowledger's name and time; a program whose heartbeats stop raises exactly one alarm
(and the badge), and one "cleared" alarm when it is back.

Every program of programs.ini posts heartbeats over HTTP, as the DAQ programs and
minard's own processes do (a thread here), so the system starts healthy: no alarm.
Screenshots: /tmp/minard-alarms-<light|dark>-<width>.png, /tmp/minard-status-....
"""
import base64
import http.client
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from twisted.trial import unittest

from minard import constants as C
from minard.programs import load_programs
from tests.support import page_fault
from tests.logserver_support import PASSWORD, USER, write_users
from tests.support import RedisServer, RoleProcess, free_port
from tests.test_browser import CHROMIUM, SHOTS, browser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: builder's heartbeat lives this long here (10 s in etc/programs.ini), so that its
#: alarm comes BUILDER_EXPIRE + PROGRAM_ALARM_CONFIRM s after it stops.
BUILDER_EXPIRE = 3


def programs_ini(directory):
    """etc/programs.ini with a shorter builder expire."""
    with open(os.path.join(ROOT, "etc", "programs.ini")) as f:
        text = f.read()
    old = "[builder]\nmachine = builder1\ndescription = Event builder\nexpire = 10\n"
    assert old in text
    path = os.path.join(directory, "programs.ini")
    with open(path, "w") as f:
        f.write(text.replace(old, old.replace("expire = 10", "expire = %d" % BUILDER_EXPIRE)))
    return path


class Heartbeats(threading.Thread):
    """Posts the heartbeat of every program (but those in `stopped`) once a second."""

    def __init__(self, port, names):
        threading.Thread.__init__(self, daemon=True)
        self.port = port
        self.names = names
        self.stopped = set()
        self.done = threading.Event()
        self.auth = "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()

    def run(self):
        connection = None
        while not self.done.is_set():
            for name in self.names:
                if name in self.stopped:
                    continue
                body = urllib.parse.urlencode({"name": name, "status": "ok"})
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                timeout=5)
                    connection.request("POST", "/heartbeat", body, {
                        "Authorization": self.auth,
                        "Content-Type": "application/x-www-form-urlencoded"})
                    connection.getresponse().read()
                except (OSError, http.client.HTTPException):
                    connection = None
            self.done.wait(1.0)


class System:
    """Redis, the log-server and web roles, and the programs' heartbeats."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="minard-browser-alarms-")
        self.redis = RedisServer().start()
        programs = programs_ini(self.tmp)
        log_dir = os.path.join(self.tmp, "logs")
        os.makedirs(log_dir)
        self.log_port, web_port = free_port(), free_port()
        config = os.path.join(self.tmp, "minard.ini")
        with open(config, "w") as f:
            # no detector here: the stale-data conditions would alarm after a minute
            f.write("[watchdog]\nafter-seconds = 86400\n")
        self.log_server = RoleProcess(
            "log-server", "--redis", self.redis.url, "--listen",
            "tcp:%d:interface=127.0.0.1" % self.log_port, "--log-dir", log_dir,
            "--programs", programs, "--auth-file", write_users(self.tmp),
            "--config", config, directory=self.tmp).start()
        self.web = RoleProcess(
            "web", "--redis", self.redis.url, "--listen",
            "tcp:%d:interface=127.0.0.1" % web_port, "--log-dir", log_dir,
            "--programs", programs, directory=self.tmp).start()
        self.base = "http://127.0.0.1:%d/" % web_port
        self.wait_up(self.base + "get_alarm", self.web)
        self.wait_up("http://127.0.0.1:%d/heartbeat" % self.log_port, self.log_server)
        names = [n for n in load_programs(programs) if n != "log"]  # it posts its own
        self.heartbeats = Heartbeats(self.log_port, names)
        self.heartbeats.start()

    @staticmethod
    def wait_up(url, role):
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                return
            except urllib.error.HTTPError:
                return  # it answers (405 to a GET of /heartbeat)
            except OSError:
                if not role.alive():
                    raise RuntimeError("%s exited: %s" % (role.role, role.log()[-2000:]))
                time.sleep(0.1)
        raise RuntimeError("%s did not answer" % role.role)

    def post_log(self, name, level, message):
        request = urllib.request.Request(
            "http://127.0.0.1:%d/log" % self.log_port,
            data=urllib.parse.urlencode({"name": name, "level": level,
                                         "message": message}).encode(),
            headers={"Authorization": self.heartbeats.auth})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == b"ok\n"

    def alarms(self):
        with urllib.request.urlopen(self.base + "get_alarm?start=-1000", timeout=10) as r:
            return json.loads(r.read())["alarms"]

    def acknowledge_all(self):
        ids = [a["id"] for a in self.alarms()]
        if ids:
            request = urllib.request.Request(
                self.base + "ack_alarm", data=json.dumps({"name": "test", "ids": ids}).encode(),
                headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=10).read()

    def close(self):
        self.heartbeats.done.set()
        for role in (self.web, self.log_server):
            role.stop()
        self.redis.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


_system = []


def system():
    if not _system:
        import atexit
        _system.append(System())
        atexit.register(_system[0].close)
    return _system[0]


class AlarmScreensTests(unittest.TestCase):
    timeout = 240

    def setUp(self):
        if not os.path.exists(CHROMIUM):
            raise unittest.SkipTest("chromium is missing")
        self.browser = browser()
        self.system = system()
        self.base = self.system.base
        self.problems = []

    def screen(self, path, scheme="dark", width=1366):
        """A page in a context of its own (another screen); problems collected."""
        context = self.browser.new_context(viewport={"width": width, "height": 900},
                                           color_scheme=scheme)
        self.addCleanup(context.close)
        page = context.new_page()
        problems = self.problems
        page.on("console", lambda m: problems.append("console %s: %s %s" % (m.type, m.text,
                                                                             m.location))
                if page_fault(m) and "AudioContext" not in m.text else None)
        page.on("pageerror", lambda e: problems.append("page error: %s" % (e,)))
        page.on("response", lambda r: problems.append("HTTP %d %s" % (r.status, r.url))
                if r.status >= 400 else None)
        page.goto(self.base + path, wait_until="load")
        return page

    def wait(self, page, script, timeout=15.0):
        deadline = time.time() + timeout
        while not page.evaluate(script):
            if time.time() > deadline:
                self.fail("timed out waiting for: %s" % " ".join(script.split()))
            page.wait_for_timeout(100)

    def badge(self, page):
        return page.evaluate("(b => b === null || b.hidden ? 0 : Number(b.textContent))"
                             "(document.querySelector('#alarm-badge'))")

    def row(self, page, text):
        return page.locator("#alarms tr", has_text=text)

    def count(self, text, level):
        return sum(1 for a in self.system.alarms() if text in a["message"] and a["level"] == level)

    def test_ack_on_one_screen_clears_every_screen(self):
        self.system.acknowledge_all()
        self.system.post_log("xl3", 40, "crate 9 lost its XL3")
        watching = self.screen("status", "dark", 1366)  # a screen on another page
        self.wait(watching, "(b => b !== null && !b.hidden && b.textContent === '1')"
                            "(document.querySelector('#alarm-badge'))")
        acking = self.screen("alarms", "light", 1920)
        self.wait(acking, "document.querySelectorAll('#alarms tr').length > 0")
        self.assertEqual(self.badge(acking), 1)
        self.assertIn("1 unacknowledged", acking.locator("#alarm-count").inner_text())
        acking.fill("#ack-name", "Ana Lopes")
        clicked = time.time()
        self.row(acking, "crate 9 lost").locator("button.ack-button").click()
        # the other screen's badge goes within a few seconds (it polls alarm_acks)
        self.wait(watching, "(b => b !== null && b.hidden)(document.querySelector('#alarm-badge'))",
                  timeout=6)
        self.assertLess(time.time() - clicked, 6)
        # who and when, on this screen and on a third one opened now
        cell = self.row(acking, "crate 9 lost").locator("td.ack")
        self.assertEqual(cell.locator(".ack-name").inner_text(), "Ana Lopes")
        self.assertRegex(cell.locator(".ack-time").inner_text(), r"^ · \d\d:\d\d:\d\d UTC$")
        third = self.screen("alarms", "dark", 1366)
        self.wait(third, "document.querySelectorAll('#alarms tr.acked').length > 0")
        row = self.row(third, "crate 9 lost")
        self.assertIn("acked", row.get_attribute("class"))
        self.assertEqual(row.locator(".ack-name").inner_text(), "Ana Lopes")
        self.assertIn("acknowledged by Ana Lopes at ",
                      row.locator(".acked-by").get_attribute("title"))
        self.assertEqual(row.locator("button.ack-button").count(), 0)
        self.assertNotIn("unacknowledged", third.locator("#alarm-count").inner_text())
        self.assertEqual(third.locator("#ack-name").input_value(), "")  # each screen its own
        # the mute stays this screen's
        acking.locator("#mute").click()
        self.assertEqual(acking.locator("#mute").get_attribute("aria-pressed"), "true")
        third.reload()
        self.wait(third, "document.querySelectorAll('#alarms tr').length > 0")
        self.assertEqual(third.locator("#mute").get_attribute("aria-pressed"), "false")
        self.assertEqual(self.problems, [])

    def test_program_stops_one_alarm_and_badge_then_cleared(self):
        self.system.acknowledge_all()
        status = self.screen("status", "dark", 1366)
        n = status.locator("tr.program").count()
        self.wait(status, "document.querySelector('#status-summary').textContent"
                          ".startsWith('%d of %d OK')" % (n, n), timeout=20)
        # a fresh system: nothing is "not responding", nothing alarmed
        self.assertEqual([a for a in self.system.alarms() if "not responding" in a["message"]],
                         [])
        for scheme in ("light", "dark"):
            for width in (1366, 1920):
                page = self.screen("status", scheme, width)
                self.wait(page, "document.querySelector('#status-summary').textContent"
                                ".startsWith('%d of %d OK')" % (n, n), timeout=20)
                page.screenshot(path=os.path.join(SHOTS, "minard-status-%s-%d.png"
                                                  % (scheme, width)), full_page=True)
                page.context.close()  # two cores: no more screens polling than needed
        alarms = self.screen("alarms", "light", 1366)
        self.wait(alarms, "document.querySelector('#alarm-count').textContent.length > 0")
        self.system.heartbeats.stopped.add("builder")
        stopped = time.time()
        # its row says so, then ONE alarm at its level and the badge on every page
        self.wait(status, "document.querySelector('tr[data-name=builder]')"
                          ".classList.contains('stale')", timeout=BUILDER_EXPIRE + 5)
        self.wait(alarms, "Array.from(document.querySelectorAll('#alarms td.msg'))"
                          ".some(td => td.textContent.startsWith('builder - not responding'))",
                  timeout=BUILDER_EXPIRE + C.PROGRAM_ALARM_CONFIRM + 10)
        self.assertGreaterEqual(time.time() - stopped, BUILDER_EXPIRE)
        self.wait(status, "(b => b !== null && !b.hidden && b.textContent === '1')"
                          "(document.querySelector('#alarm-badge'))", timeout=5)
        row = self.row(alarms, "builder - not responding")
        self.assertEqual(row.locator(".level").inner_text(), "DANGER")
        self.assertIn("on builder1: no heartbeat for", row.locator("td.msg").inner_text())
        alarms.wait_for_timeout(4000)  # still down: no repeat
        self.assertEqual(self.count("builder - not responding", 40), 1)
        self.assertEqual(self.row(alarms, "builder - not responding").count(), 1)
        # back: ONE "cleared" alarm; the alarm itself still waits for an acknowledgement
        self.system.heartbeats.stopped.discard("builder")
        self.wait(alarms, "Array.from(document.querySelectorAll('#alarms td.msg'))"
                          ".some(td => td.textContent.startsWith('builder - responding again'))",
                  timeout=10)
        self.wait(status, "document.querySelector('tr[data-name=builder]')"
                          ".classList.contains('ok')", timeout=5)
        alarms.wait_for_timeout(3000)
        self.assertEqual(self.count("builder - not responding", 40), 1)
        self.assertEqual(self.count("builder - responding again", 21), 1)
        cleared = self.row(alarms, "builder - responding again")
        self.assertEqual(cleared.locator(".level").inner_text(), "SUCCESS")
        self.assertRegex(cleared.locator("td.msg").inner_text(),
                         r"^builder - responding again after \d+ s without a heartbeat$")
        self.assertEqual(self.badge(status), 1)
        self.assertIn("1 unacknowledged", alarms.locator("#alarm-count").inner_text())
        alarms.fill("#ack-name", "Ben")
        self.row(alarms, "builder - not responding").locator("button.ack-button").click()
        self.wait(status, "(b => b !== null && b.hidden)(document.querySelector('#alarm-badge'))",
                  timeout=6)
        for scheme in ("light", "dark"):
            for width in (1366, 1920):
                page = self.screen("alarms", scheme, width)
                self.wait(page, "document.querySelectorAll('#alarms tr.acked').length > 0")
                page.wait_for_timeout(300)
                page.screenshot(path=os.path.join(SHOTS, "minard-alarms-%s-%d.png"
                                                  % (scheme, width)), full_page=True)
                page.context.close()
        self.assertTrue(re.match(r"^\d+ of \d+ OK$",
                                 status.locator("#status-summary").inner_text()))
        self.assertEqual(self.problems, [], "\n".join(
            line for line in self.system.web.log().splitlines() if "stream" in line.lower()
            and "GET /" not in line)[-3000:])
