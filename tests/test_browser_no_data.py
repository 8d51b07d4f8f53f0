"""Honest states in the browser (issue 11), against the whole real chain: the simulator,
dispatch-push, a dispatch-pull, the data producer and both data consumers, the web role
and a real redis-server; headless Chromium, failing on any console error.

* DAQ: the default colours of the simulator's (normal) detector are mostly "normal", the
  few dead and hot channels stand out, and every quantity shows its unit.
* Crate 19 (not installed in SNO+) is drawn "not installed", not as a dead crate.
* Detector, 1-day window: no day has been finalised yet, and the map is not grey: it
  shows the day so far, said to be not final; the tooltip goes with the data.
* Stream: with the simulator stopped, the banner says the dispatcher is not connected and
  the rates are unknown, and the rate panels say "no data" — never 0 Hz.
* An unknown path is the HTML 404 page for a browser.

Screenshots (DAQ and Detector at 1366 and 1920 px, dark and light) go to
/tmp/minard-nodata-*.png.
"""
import json
import atexit
import os
import re
import shutil
import tempfile
import time
import urllib.request

from twisted.trial import unittest

from tests.support import page_fault
from tests.support import RedisServer, RoleProcess, free_port
from tests.test_browser import SHOTS, browser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE_EXPRS_NOT = ("run", "subrun", "gtid", "heartbeat")


class Chain:
    """Redis and every role of the local system, the simulator feeding them (stopped at
    exit). `stop_simulator()` and `start_simulator()` cut and restore both of its links."""

    def __init__(self):
        self.redis = RedisServer().start()
        self.log_dir = tempfile.mkdtemp(prefix="minard-nodata-")
        self.dispatcher_port, self.data_port = free_port(), free_port()
        events, cmos, base = ("tcp://127.0.0.1:%d" % free_port() for _ in range(3))
        common = ("--redis", self.redis.url)
        self.simulator = None
        self.start_simulator()
        self.roles = [
            RoleProcess("dispatch-push", *common, "--port", str(self.dispatcher_port),
                        "--zmq", events),
            RoleProcess("dispatch-pull", *common, "--zmq", events, "--name", "pull-0"),
            RoleProcess("data-producer", *common, "--port", str(self.data_port),
                        "--cmos-zmq", cmos, "--base-zmq", base),
            RoleProcess("data-consumer", *common, "--zmq", cmos),
            RoleProcess("data-consumer", *common, "--zmq", base),
        ]
        web_port = free_port()
        self.web = RoleProcess("web", *common, "--listen",
                               "tcp:%d:interface=127.0.0.1" % web_port, "--log-dir",
                               self.log_dir, "--programs",
                               os.path.join(ROOT, "etc", "programs.ini"))
        for role in self.roles + [self.web]:
            role.start()
        self.base = "http://127.0.0.1:%d/" % web_port
        atexit.register(self.close)
        deadline = time.time() + 90  # (a loaded machine starts twistd slowly)
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.base + "get_alarm", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        log = self.web.log()[-2000:]
        self.close()
        raise RuntimeError("the web role did not answer:\n" + log)

    def start_simulator(self):
        self.simulator = RoleProcess(
            "simulator", "--dispatcher-listen",
            "tcp:%d:interface=127.0.0.1" % self.dispatcher_port, "--data-listen",
            "tcp:%d:interface=127.0.0.1" % self.data_port, "--rate", "300", "--seed", "11")
        self.simulator.start()

    def stop_simulator(self):
        self.simulator.stop()

    def close(self):
        for role in [self.simulator, self.web] + self.roles:
            role.stop()
        self.redis.cleanup()
        shutil.rmtree(self.log_dir, ignore_errors=True)


_chain = []


def chain():
    """The one Chain of the test run (a failed start is not tried again by every test)."""
    if not _chain:
        try:
            _chain.append(Chain())
        except Exception as e:
            _chain.append(e)
    if isinstance(_chain[0], Exception):
        raise _chain[0]
    return _chain[0]


class NoDataBrowserTests(unittest.TestCase):
    timeout = 240

    def setUp(self):
        self.browser = browser()
        self.chain = chain()
        self.base = self.chain.base

    def open(self, path, width=1600, height=1000, scheme="dark"):
        context = self.browser.new_context(viewport={"width": width, "height": height},
                                           color_scheme=scheme)
        self.addCleanup(context.close)
        page = context.new_page()
        problems = []
        # (reading canvas pixels back, as the tests do, makes Chromium suggest
        # willReadFrequently: that warning is the test's, not the page's)
        page.on("console", lambda m: problems.append("console %s: %s" % (m.type, m.text))
                if page_fault(m) and "willReadFrequently" not in m.text
                else None)
        page.on("pageerror", lambda e: problems.append("page error: %s" % (e,)))
        page.on("requestfailed", lambda r: problems.append("request failed: %s %s" % (
            r.url, r.failure)) if not (r.url.endswith("/stream")
                                       or "ERR_ABORTED" in (r.failure or "")) else None)
        page.on("response", lambda r: problems.append("HTTP %d %s" % (r.status, r.url))
                if r.status >= 400 else None)
        response = page.goto(self.base + path, wait_until="load")
        return page, problems, response

    def wait(self, page, script, timeout=30000):
        deadline = time.time() + timeout / 1000.0
        while True:
            if page.evaluate(script):
                return
            if time.time() > deadline:
                self.fail("timed out waiting for: %s" % " ".join(script.split()))
            page.wait_for_timeout(200)

    def shot(self, page, name):
        page.screenshot(path=os.path.join(SHOTS, "minard-nodata-%s.png" % name), full_page=True)

    def counts(self, page):
        """{class: channels} from the DAQ legend ("normal 81 – 4.1k Hz (9012)")."""
        out = {}
        for key, id_ in (("low", "daq-leg-lo"), ("normal", "daq-leg-mid"),
                         ("high", "daq-leg-hi"), ("nodata", "daq-leg-nodata")):
            text = page.locator("#" + id_).inner_text()
            m = re.search(r"\((\d+)\)$", text)
            out[key] = int(m.group(1)) if m else None
        return out

    # -- DAQ ----------------------------------------------------------------------------------

    def test_daq_default_colours_mean_something(self):
        page, problems, _ = self.open("daq?window=5")
        self.wait(page, "/\\(\\d+\\)$/.test(document.querySelector('#daq-leg-mid').textContent)"
                        " && document.querySelector('#daq-info').textContent.includes('channels')")
        for data, unit in (("cmos", "Hz"), ("base", "ADC counts"), ("occupancy", "hits/event")):
            if data != "cmos":
                page.select_option("#daq-data", data)
                page.wait_for_url("**data=%s*" % data)
                self.wait(page, "/\\(\\d+\\)$/.test(document.querySelector('#daq-leg-mid')"
                                ".textContent)")
            counts = self.counts(page)
            flagged = counts["low"] + counts["high"]
            seen = flagged + counts["normal"]
            self.assertGreater(seen, 1000, (data, counts))
            # a normal detector is normal: the simulator's 6 hot and 25 dead channels (and
            # the noise of a 5-s bucket) are all that may stand out
            self.assertLess(flagged, 0.02 * seen, (data, counts))
            self.assertIn(unit, page.locator("#daq-leg-mid").inner_text(), data)
            self.assertIn(unit, page.locator("#daq-thresholds").inner_text(), data)
            self.assertIn("median", page.locator("#daq-thresholds").inner_text(), data)
            self.wait(page, "(t => /[0-9]/.test(t) && t.includes(%s))(document.querySelector("
                            "'#owl-latest').textContent)" % json.dumps(unit))
            self.assertIn(unit, page.locator("#owl-latest").inner_text(), data)
            self.assertIn(unit, page.locator("#crates-chart").locator("xpath=..").inner_text())
            # the map is drawn in the "normal" colour almost everywhere
            share = page.evaluate("""() => {
                const css = getComputedStyle(document.documentElement);
                const probe = document.createElement('canvas').getContext('2d');
                probe.fillStyle = css.getPropertyValue('--daq-normal').trim();
                probe.fillRect(0, 0, 1, 1);
                const want = Array.from(probe.getImageData(0, 0, 1, 1).data.slice(0, 3));
                let normal = 0, all = 0;
                document.querySelectorAll('#daq-crates .crate:not(.not-installed) canvas').forEach(c => {
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    for (let i = 0; i < d.length; i += 4 * 7) {
                        all++;
                        if (Math.abs(d[i] - want[0]) < 3 && Math.abs(d[i + 1] - want[1]) < 3 &&
                            Math.abs(d[i + 2] - want[2]) < 3) { normal++; }
                    }
                });
                return normal / all;
            }""")
            self.assertGreater(share, 0.6, data)  # (the gaps between cells are not cells)
        self.shot(page, "daq-occupancy")
        # thresholds typed by the user are kept in the URL, "auto thresholds" brings back
        # the automatic ones
        page.fill("#daq-lo", "0.001")
        page.fill("#daq-hi", "0.002")
        page.locator("#daq-hi").dispatch_event("change")
        page.wait_for_url("**hi=0.002*")
        self.assertIn("set by you", page.locator("#daq-thresholds").inner_text())
        counts = self.counts(page)
        self.assertGreater(counts["high"], counts["normal"])  # 1e-3..2e-3: nearly all red
        page.reload()
        self.wait(page, "document.querySelector('#daq-thresholds').textContent"
                        ".includes('set by you')")
        self.assertEqual(page.locator("#daq-hi").input_value(), "0.002")
        page.locator("#daq-reset").click()
        self.wait(page, "document.querySelector('#daq-thresholds').textContent"
                        ".includes('automatic')")
        self.assertNotIn("hi=", page.url)
        self.assertEqual(problems, [])

    def test_crate_19_is_not_installed(self):
        for path, grid in (("daq?window=5", "#daq-crates"), ("detector?window=5", "#det-crates")):
            page, problems, _ = self.open(path)
            self.wait(page, "document.querySelector('%s .crate[data-crate=\"19\"]') !== null"
                      % grid)
            crate = page.locator('%s .crate[data-crate="19"]' % grid)
            self.assertIn("not-installed", crate.get_attribute("class"))
            self.assertIn("not installed", crate.inner_text())
            self.assertIn("not installed", crate.locator("canvas").get_attribute("aria-label"))
            # not the "no data" grey of a dead crate: the canvas shows the hatching
            pixels = page.evaluate("""(sel) => {
                const c = document.querySelector(sel + ' .crate[data-crate="19"] canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                const css = getComputedStyle(document.documentElement);
                const probe = document.createElement('canvas').getContext('2d');
                probe.fillStyle = css.getPropertyValue('--nodata').trim();
                probe.fillRect(0, 0, 1, 1);
                const grey = probe.getImageData(0, 0, 1, 1).data;
                let same = 0, n = 0, colours = new Set();
                for (let i = 0; i < d.length; i += 4) {
                    n++;
                    colours.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
                    if (d[i] === grey[0] && d[i + 1] === grey[1] && d[i + 2] === grey[2]) { same++; }
                }
                return {grey: same / n, colours: colours.size};
            }""", grid)
            self.assertLess(pixels["grey"], 0.05, path)
            self.assertGreater(pixels["colours"], 2, path)  # hatching and the label
            page.hover('%s .crate[data-crate="19"] canvas' % grid)
            tooltip = "#daq-tooltip" if grid == "#daq-crates" else "#det-tooltip"
            self.wait(page, "document.querySelector('%s').textContent.includes('not installed')"
                      % tooltip)
            self.assertEqual(problems, [], path)

    # -- Detector -----------------------------------------------------------------------------

    def test_detector_day_window_is_not_grey(self):
        page, problems, _ = self.open("detector?window=86400")
        self.wait(page, "document.querySelector('#det-summary').textContent.includes('mean')")
        info = page.locator("#det-info").inner_text()
        # no day has been finalised in this system: the day so far, said to be not final
        self.assertIn("no finalised day yet", info)
        self.assertIn("so far", info)
        grey = page.evaluate("""() => {
            const css = getComputedStyle(document.documentElement);
            const probe = document.createElement('canvas').getContext('2d');
            probe.fillStyle = css.getPropertyValue('--nodata').trim();
            probe.fillRect(0, 0, 1, 1);
            const g = probe.getImageData(0, 0, 1, 1).data;
            let same = 0, n = 0;
            document.querySelectorAll('#det-crates .crate:not(.not-installed) canvas').forEach(c => {
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                for (let i = 0; i < d.length; i += 4 * 5) {
                    n++;
                    if (d[i] === g[0] && d[i + 1] === g[1] && d[i + 2] === g[2]) { same++; }
                }
            });
            return same / n;
        }""")
        self.assertLess(grey, 0.2)
        self.assertNotEqual(page.locator("#det-legend-hi").inner_text(), "")
        # the tooltip shows the hovered channel's value; another window clears it
        page.hover('#det-crates .crate[data-crate="4"] canvas')
        self.wait(page, "document.querySelector('#det-tooltip').textContent.includes('crate 4')")
        self.assertIn("hits/event", page.locator("#det-tooltip").inner_text())
        page.select_option("#det-window", "5")
        page.wait_for_url("**window=5")
        self.assertEqual(page.locator("#det-tooltip").inner_text(), "")
        self.wait(page, "document.querySelector('#det-info').textContent.includes('bucket')")
        self.assertEqual(problems, [])

    def test_screenshots_daq_and_detector(self):
        for width in (1366, 1920):
            for scheme in ("dark", "light"):
                for path, name, ready in (
                        ("daq?window=5", "daq",
                         "/\\(\\d+\\)$/.test(document.querySelector('#daq-leg-mid').textContent)"),
                        ("detector", "detector",
                         "document.querySelector('#det-summary').textContent.includes('mean')")):
                    page, problems, _ = self.open(path, width=width, height=900, scheme=scheme)
                    self.wait(page, ready)
                    page.wait_for_timeout(800)
                    self.shot(page, "%s-%d-%s" % (name, width, scheme))
                    overflow = page.evaluate(
                        "document.documentElement.scrollWidth > window.innerWidth + 1")
                    self.assertFalse(overflow, (name, width))
                    self.assertEqual(problems, [], (name, width, scheme))

    # -- 404 ----------------------------------------------------------------------------------

    def test_unknown_path_is_the_html_404_page(self):
        page, problems, response = self.open("doesnotexist")
        self.assertEqual(response.status, 404)
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(page.locator("h1").inner_text(), "Not found")
        self.assertIn("/doesnotexist", page.locator("main").inner_text())
        page.locator('.nav a[href$="detector"]').wait_for()
        # the only fault: the document's own 404 (Chromium logs it as a console error)
        self.assertEqual(problems[0], "HTTP 404 %sdoesnotexist" % self.base)
        self.assertEqual([p for p in problems[1:] if "status of 404" not in p], [])
        self.assertEqual(len(problems), 2, problems)

    # -- Stream, simulator stopped (last: z) ---------------------------------------------------

    def test_z_stream_with_the_simulator_stopped_shows_no_data(self):
        page, problems, _ = self.open("snostream")
        rates = """Array.from(document.querySelectorAll('.panel[data-expr]'))
            .filter(p => !%r.includes(p.dataset.expr) && !/-(nhit|charge)$/.test(p.dataset.expr))
            .map(p => p.querySelector('.value').textContent)""" % (list(RATE_EXPRS_NOT),)
        self.wait(page, "/^[0-9.]+k?$/.test(document.querySelector("
                        "'.panel[data-expr=\"TOTAL\"] .value').textContent)", 60000)
        self.assertTrue(page.locator("#stale-banner").is_hidden())
        self.chain.stop_simulator()
        self.addCleanup(self.chain.start_simulator)
        self.wait(page, "document.querySelector('#stale-banner').textContent"
                        ".includes('dispatcher not connected')", 20000)
        banner = page.locator("#stale-banner").inner_text()
        self.assertIn("event rates unknown", banner)
        self.assertNotIn("rates of 0 are real", banner)
        self.wait(page, "document.querySelector('#v-rate').textContent === 'no data'")
        # after 5 s every rate panel's latest value is "no data", never a 0
        self.wait(page, "(%s).every(t => t === 'no data')" % rates, 20000)
        self.shot(page, "stream-simulator-stopped")
        # the history says so too (per second, recorded while it happened)
        page.reload()
        self.wait(page, "(%s).length > 0 && (%s).every(t => t === 'no data')" % (rates, rates))
        now = time.time()
        answer = page.evaluate("""(q) => fetch('metric?' + q).then(r => r.json())""",
                               "expr=TOTAL,100L,20&start=%d&stop=%d&step=1" % (now - 6, now - 2))
        for name, values in answer["values"].items():
            self.assertEqual(values, [None] * len(values), name)
        self.assertNotIn("0 Hz", page.locator("main").inner_text())
        self.assertEqual(problems, [])
