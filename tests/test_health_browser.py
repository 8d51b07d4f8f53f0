"""The Channel health page, the outlines of flagged channels on the Detector and DAQ
maps, and masking, in headless Chromium against a real `web` process (with --auth-file)
and a Redis seeded by tests.web_seed plus findings stored by the health service's own
apply script (tests.test_health.seed_health). Fails on any console error. Screenshots go
to /tmp/minard-health-*.png."""
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.trial import unittest

from minard import constants as C
from minard.store import keys
from tests import web_seed
from tests.support import page_fault
from tests.logserver_support import PASSWORD, USER, write_users
from tests.support import RedisServer, SyncRedis, free_port
from tests.test_browser import SHOTS, browser
from tests.test_health import seed_health

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: --flag of the dark scheme (minard.css): #ff3df5
FLAG_PIXELS = """(sel) => {
    const c = document.querySelector(sel);
    if (!c || !c.width) { return -1; }
    const copy = document.createElement('canvas');  // (read a copy: the map is not
    copy.width = c.width;                             //  for reading back)
    copy.height = c.height;
    const ctx = copy.getContext('2d', {willReadFrequently: true});
    ctx.drawImage(c, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
        if (d[i] > 230 && d[i + 1] < 110 && d[i + 2] > 220) { n++; }
    }
    return n;
}"""


class Environment:
    def __init__(self):
        self.redis = RedisServer().start()
        self.tmp = tempfile.mkdtemp(prefix="minard-health-browser-")
        now = time.time()
        web_seed.seed(self.redis.port, now, future=900)
        self.sync = SyncRedis(self.redis.port)
        self.sync.command("DEL", keys.ALARMS_COUNT)  # only the health alarms
        seed_health(self.sync, now)
        port = free_port()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.web = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "minard", "--role=web", "--redis", self.redis.url,
             "--listen", "tcp:%d:interface=127.0.0.1" % port, "--log-dir", self.tmp,
             "--programs", os.path.join(ROOT, "etc", "programs.ini"),
             "--auth-file", write_users(self.tmp)],
            cwd=self.tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = "http://127.0.0.1:%d/" % port
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(self.base + "get_health", timeout=1).read()
                break
            except OSError:
                if self.web.poll() is not None or time.time() > deadline:
                    self.close()
                    raise RuntimeError("the web process did not answer")
                time.sleep(0.1)
        atexit.register(self.close)

    def close(self):
        if self.web.poll() is None:
            self.web.send_signal(signal.SIGTERM)
            try:
                self.web.wait(10)
            except subprocess.TimeoutExpired:
                self.web.kill()
        self.redis.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


_environment = []


def environment():
    if not _environment:
        _environment.append(Environment())
    return _environment[0]


class HealthBrowserTests(unittest.TestCase):

    def setUp(self):
        self.browser = browser()
        env = environment()
        self.base, self.sync = env.base, env.sync

    def open(self, path, width=1600, height=1000, scheme="dark", allow=()):
        """A page with error collectors: (page, problems). `allow`: URL parts whose
        HTTP errors the test causes on purpose."""
        context = self.browser.new_context(viewport={"width": width, "height": height},
                                           color_scheme=scheme)
        self.addCleanup(context.close)
        page = context.new_page()
        problems = []
        page.on("console", lambda m: problems.append("console %s: %s" % (m.type, m.text))
                if page_fault(m) and not any(a in m.text for a in allow)
                else None)
        page.on("pageerror", lambda e: problems.append("page error: %s" % (e,)))
        page.on("requestfailed", lambda r: problems.append("request failed: %s %s" % (
            r.url, r.failure)) if not (r.url.endswith("/stream")
                                       or "ERR_ABORTED" in (r.failure or "")) else None)
        page.on("response", lambda r: problems.append("HTTP %d %s" % (r.status, r.url))
                if r.status >= 400 and not any(a in r.url for a in allow) else None)
        page.goto(self.base + path, wait_until="load")
        return page, problems

    def wait(self, page, script, timeout=15000):
        deadline = time.time() + timeout / 1000.0
        while not page.evaluate(script):
            if time.time() > deadline:
                self.fail("timed out waiting for: %s" % " ".join(script.split()))
            page.wait_for_timeout(100)

    def shot(self, page, name):
        path = os.path.join(SHOTS, "minard-health-%s.png" % name)
        page.screenshot(path=path, full_page=True)
        return path

    def rows(self, page, table):
        return page.evaluate("""(t) => Array.from(document.querySelectorAll('#' + t + ' tbody tr'))
                                .map(r => Array.from(r.cells).map(c => c.textContent))""", table)

    # -- the page ---------------------------------------------------------------------------

    def test_page_at_1366_and_1920_light_and_dark(self):
        for width, scheme in ((1366, "dark"), (1920, "dark"), (1366, "light"), (1920, "light")):
            page, problems = self.open("health", width=width, height=900, scheme=scheme)
            self.wait(page, "document.querySelectorAll('#health-open tbody tr').length === 4")
            self.wait(page, "document.querySelector('#live-state').textContent === 'live'")
            opened = self.rows(page, "health-open")
            self.assertEqual(opened[0][2], "crate 6 · card 6 · channel 6 (3270)")  # newest
            self.assertEqual(opened[0][3], "hot")
            self.assertEqual(sorted(r[2] for r in opened[1:]),
                             ["crate 2 · card 3 · channel 4 (1124)", "crate 3 · card 7",
                              "crate 5 · card 2 · channel 14 (2638)"])
            dark = [r for r in opened if r[2] == "crate 3 · card 7"][0]
            self.assertEqual(dark[3], "card dark")
            self.assertIn("32 of 32 channels without hits", dark[4])
            closed = self.rows(page, "health-closed")
            self.assertEqual([r[3] for r in closed], ["crate 9 · card 4"])
            self.assertEqual(closed[0][2], "3 min")
            self.assertIn("Judging the finalised 60-s buckets",
                          page.locator("#health-state").inner_text())
            self.assertIn("4: 2 hot", page.locator("#open-count").inner_text())
            overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1")
            self.assertFalse(overflow, (width, scheme))
            self.shot(page, "%d-%s" % (width, scheme))
            self.assertEqual(problems, [], (width, scheme))
            # nothing from Redis went in as HTML
            self.assertEqual(page.locator("main script, main b").count(), 0)

    def test_history_link_opens_the_card_on_the_daq_page(self):
        page, problems = self.open("health")
        self.wait(page, "document.querySelectorAll('#health-open tbody tr').length === 4")
        link = page.locator('#health-open tr[data-key="hot/5/2/14"] td.history a').first
        href = link.get_attribute("href")
        self.assertIn("daq?data=cmos&crate=5&card=2&range=", href)
        link.click()
        page.wait_for_url("**/daq?data=cmos&crate=5&card=2*")
        self.wait(page, "document.querySelectorAll('#daq-channel-charts .uplot').length === 32")
        self.assertEqual(problems, [])

    # -- masking ----------------------------------------------------------------------------

    def test_mask_and_unmask_a_channel(self):
        index = C.channel_index(6, 6, 6)
        self.addCleanup(self.sync.command, "DEL", keys.HEALTH_MASKS)
        page, problems = self.open("health", allow=("mask_channel",))
        self.wait(page, "document.querySelectorAll('#health-open tbody tr').length === 4")
        page.locator('#health-open tr[data-key="hot/6/6/6"] button').click()
        self.assertEqual([page.locator("#mask-" + f).input_value()
                          for f in ("crate", "card", "channel")], ["6", "6", "6"])
        self.assertTrue(page.locator("#mask-reason").input_value().startswith("hot since"))
        page.locator("#mask-submit").click()  # no credentials yet
        self.wait(page, "document.querySelector('#mask-result').textContent.includes('user and password')")
        page.fill("#mask-user", USER)
        page.fill("#mask-password", "wrong")
        page.locator("#mask-submit").click()
        self.wait(page, "document.querySelector('#mask-result').textContent.includes('wrong user or password')")
        self.assertIsNone(self.sync.command("HGET", keys.HEALTH_MASKS, str(index)))
        page.fill("#mask-password", PASSWORD)
        page.locator("#mask-submit").click()
        self.wait(page, "document.querySelectorAll('#health-masked tbody tr').length === 1")
        masked = self.rows(page, "health-masked")[0]
        self.assertEqual(masked[0], "crate 6 · card 6 · channel 6 (3270)")
        self.assertEqual(masked[1], USER)
        self.assertTrue(masked[3].startswith("hot since"))
        self.assertIn("masked by " + USER, page.locator("#mask-result").inner_text())
        # its open finding says it ends with the next bucket (the service closes it)
        self.wait(page, """document.querySelector('#health-open tr[data-key="hot/6/6/6"]')
                           .classList.contains('now-masked')""")
        self.assertIn("masked by " + USER, page.locator(
            '#health-open tr[data-key="hot/6/6/6"] td.kind').inner_text())
        self.shot(page, "masked")
        page.locator("#health-masked tbody button").click()
        self.wait(page, "document.querySelectorAll('#health-masked tbody tr').length === 0")
        self.assertIsNone(self.sync.command("HGET", keys.HEALTH_MASKS, str(index)))
        # the one error seen: the browser's note of the refused try (wrong password)
        self.assertEqual(problems, ["console error: Failed to load resource: the server "
                                    "responded with a status of 401 (Unauthorized)"])

    # -- the maps ---------------------------------------------------------------------------

    def flag_pixels(self, page, selector):
        return page.evaluate(FLAG_PIXELS, selector)

    def test_detector_map_outlines_flagged_channels(self):
        page, problems = self.open("detector")
        self.wait(page, "Minard.healthMarks && Minard.healthMarks.marks().length === 4")
        self.wait(page, "document.querySelector('[data-health-flags]').textContent.startsWith('4 flagged')")
        crate = '#det-crates .crate[data-crate="%d"] canvas'
        self.wait(page, "document.querySelector('#det-info').textContent.length > 0")
        page.wait_for_timeout(500)
        for flagged in (2, 3, 5, 6):
            self.assertGreater(self.flag_pixels(page, crate % flagged), 0, flagged)
        for clean in (0, 1, 4, 9):
            self.assertEqual(self.flag_pixels(page, crate % clean), 0, clean)
        # the whole card 3/7 is outlined: more flagged pixels than a single channel's
        self.assertGreater(self.flag_pixels(page, crate % 3), 2 * self.flag_pixels(page, crate % 5))
        # the tooltip names the finding
        box = page.locator(crate % 3).bounding_box()
        page.mouse.move(box["x"] + box["width"] * 7.5 / 16, box["y"] + box["height"] / 2)
        self.wait(page, "document.querySelector('#det-tooltip').textContent.includes('flagged: card dark')")
        self.shot(page, "detector")
        self.assertEqual(problems, [])
        light, problems = self.open("detector", scheme="light", width=1366, height=900)
        self.wait(light, "Minard.healthMarks && Minard.healthMarks.marks().length === 4")
        light.wait_for_timeout(800)
        self.shot(light, "detector-light")
        self.assertEqual(problems, [])

    def test_daq_maps_outline_flagged_channels(self):
        page, problems = self.open("daq")
        self.wait(page, "Minard.healthMarks && Minard.healthMarks.marks().length === 4")
        self.wait(page, "document.querySelector('#daq-info').textContent.includes('channels')")
        page.wait_for_timeout(500)
        crate = '#daq-crates .crate[data-crate="%d"] canvas'
        self.assertGreater(self.flag_pixels(page, crate % 5), 0)
        self.assertEqual(self.flag_pixels(page, crate % 1), 0)
        self.shot(page, "daq")
        page.locator(crate % 5).click()
        page.wait_for_url("**crate=5*")
        self.wait(page, "document.querySelectorAll('#daq-cardmap canvas').length === 1")
        page.wait_for_timeout(500)
        self.assertGreater(self.flag_pixels(page, "#daq-cardmap canvas"), 0)
        self.shot(page, "daq-crate")
        self.assertEqual(problems, [])
