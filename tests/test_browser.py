"""The dashboard pages in headless Chromium against a real web process and a seeded Redis.

Every page must load without a console error (a Content-Security-Policy violation is one),
without a failed request, and draw its charts with the seeded data; the stale banner must
show when the data stop. Screenshots go to /tmp/minard-browser-<page>.png.
"""
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

from tests import web_seed
from tests.support import page_fault
from tests.support import RedisServer, free_port

CHROMIUM = "/usr/bin/chromium"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = os.environ.get("MINARD_SCREENSHOTS", "/tmp")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None


def start_web(redis_url, log_dir):
    """A real `twistd -n minard --role=web` on a free port; returns (process, base URL)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "minard", "--role=web", "--redis", redis_url,
         "--listen", "tcp:%d:interface=127.0.0.1" % port, "--log-dir", log_dir,
         "--programs", os.path.join(ROOT, "etc", "programs.ini")],
        cwd=log_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = "http://127.0.0.1:%d/" % port
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "get_alarm", timeout=1).read()
            return process, base
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the web process exited with %s" % process.returncode)
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the web process did not answer")


_browser = {}


def browser():
    """One headless Chromium for the whole test run (closed at exit)."""
    if not os.path.exists(CHROMIUM):
        raise unittest.SkipTest("%s is missing (apt-get install chromium)" % CHROMIUM)
    if sync_playwright is None:
        raise unittest.SkipTest("the playwright Python package is missing")
    if "browser" not in _browser:
        _browser["playwright"] = sync_playwright().start()
        _browser["browser"] = _browser["playwright"].chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def close():
            _browser["browser"].close()
            _browser["playwright"].stop()
        atexit.register(close)
    return _browser["browser"]


class Environment:
    """A seeded redis-server, a log directory and a web process (stopped at exit)."""

    def __init__(self, stop_at=None):
        self.redis = RedisServer().start()
        self.log_dir = tempfile.mkdtemp(prefix="minard-browser-")
        with open(os.path.join(self.log_dir, "builder.log"), "w") as f:
            for i in range(30):
                f.write("2026-01-01 00:00:%02d,000 - builder - %s - line <b>%d</b>\n"
                        % (i, ("INFO", "WARNING", "DANGER", "SUCCESS")[i % 4], i))
        now = time.time()
        web_seed.seed(self.redis.port, now, future=0 if stop_at else 900,
                      stop_at=None if stop_at is None else now - stop_at)
        self.web, self.base = start_web(self.redis.url, self.log_dir)
        atexit.register(self.close)

    def close(self):
        self.web.send_signal(signal.SIGTERM)
        try:
            self.web.wait(10)
        except subprocess.TimeoutExpired:
            self.web.kill()
        self.redis.cleanup()
        shutil.rmtree(self.log_dir, ignore_errors=True)


_environments = {}


def environment(kind):
    if kind not in _environments:
        _environments[kind] = Environment(stop_at=120 if kind == "stale" else None)
    return _environments[kind]


class BrowserTests(unittest.TestCase):
    kind = "fresh"

    def setUp(self):
        self.browser = browser()
        env = environment(self.kind)
        self.base, self.redis = env.base, env.redis

    def open(self, path, width=1600, height=1000):
        """A page at path with error collectors: returns (page, problems list)."""
        context = self.browser.new_context(viewport={"width": width, "height": height},
                                           color_scheme="dark")
        self.addCleanup(context.close)
        page = context.new_page()
        problems = []
        page.on("console", lambda m: problems.append("console %s: %s" % (m.type, m.text))
                if page_fault(m) else None)
        page.on("pageerror", lambda e: problems.append("page error: %s" % (e,)))
        # a request still in flight when the page navigates away is aborted by the
        # browser (net::ERR_ABORTED): that is the navigation, not a fault of the page
        page.on("requestfailed", lambda r: problems.append("request failed: %s %s" % (
            r.url, r.failure)) if not (r.url.endswith("/stream")
                                       or "ERR_ABORTED" in (r.failure or "")) else None)
        page.on("response", lambda r: problems.append("HTTP %d %s" % (r.status, r.url))
                if r.status >= 400 else None)
        page.goto(self.base + path, wait_until="load")
        return page, problems

    def shot(self, page, name):
        path = os.path.join(SHOTS, "minard-browser-%s.png" % name)
        page.screenshot(path=path, full_page=True)
        return path

    def wait(self, page, script, timeout=15000):
        """Poll a JavaScript expression until it is true. (page.wait_for_function would
        need eval() in the page, which the site's Content-Security-Policy forbids.)"""
        deadline = time.time() + timeout / 1000.0
        while True:
            if page.evaluate(script):
                return
            if time.time() > deadline:
                self.fail("timed out waiting for: %s" % " ".join(script.split()))
            page.wait_for_timeout(100)

    def finish(self, page, problems, name):
        self.wait(page, "document.querySelector('#live-state').textContent === 'live'")
        page.wait_for_timeout(300)
        self.shot(page, name)
        self.assertEqual(problems, [], name)
        # the page is live and not stale (fresh data are seeded)
        self.assertEqual(page.locator("#live-state").inner_text(), "live")
        self.assertTrue(page.locator("#stale-banner").is_hidden(), name)

    # -- the pages ----------------------------------------------------------------------------

    def test_snostream(self):
        page, problems = self.open("")  # / redirects (relatively) to snostream
        self.assertTrue(page.url.endswith("/snostream"))
        self.wait(page, "document.querySelector('#v-run').textContent !== '–'")
        self.wait(page, """Array.from(document.querySelectorAll('.panel[data-expr="TOTAL"] .value'))
                           .every(e => /^[0-9.]+k?$/.test(e.textContent))""")
        rate = page.locator('.panel[data-expr="TOTAL"] h2 .value').inner_text()
        self.assertTrue(rate.endswith("k") or float(rate) > 100, rate)
        self.assertEqual(page.locator(".uplot").count(),
                         page.locator(".panel[data-expr]").count())
        self.assertEqual(page.locator("#v-dispatcher").inner_text(), "builder.sp.snolab.ca")
        self.finish(page, problems, "snostream")
        # clicking a series title opens its graph
        page.locator('.panel[data-expr="100L"] h2 a').click()
        page.wait_for_url("**/graph?name=100L*")

    def test_graph(self):
        page, problems = self.open("graph?name=TOTAL-nhit&range=1h")
        self.wait(page, "document.querySelector('#graph-latest').textContent.length > 0")
        latest = float(page.locator("#graph-latest").inner_text())
        self.assertTrue(25 <= latest <= 35, latest)
        self.assertIn("of 900 points", page.locator("#graph-summary").inner_text())
        self.finish(page, problems, "graph")
        # zoom by dragging on the chart: the window goes in the URL (the last 15 min of
        # the hour, where the seeded 1-s buckets are)
        box = page.locator("#graph-chart .u-over").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + 20)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.95, box["y"] + 20, steps=5)
        page.mouse.up()
        page.wait_for_url("**start=*")
        try:
            self.wait(page, "document.querySelector('#graph-summary').textContent"
                            ".includes('points (1 s each)')")
        finally:
            self.shot(page, "graph-zoomed")
        self.assertEqual(problems, [])

    def test_nhit(self):
        page, problems = self.open("nhit")
        self.wait(page, "document.querySelector('#nhit-60-linear-info').textContent.includes('events')")
        self.wait(page, "document.querySelector('#nhit-10-linear-info').textContent.includes('events')")
        self.finish(page, problems, "nhit")

    def test_detector(self):
        page, problems = self.open("detector")
        self.wait(page, "document.querySelector('#det-summary').textContent.includes('mean')")
        coloured = page.evaluate("""() => {
            const c = document.querySelector('.crate canvas');
            const d = c.getContext('2d').getImageData(1, 1, 1, 1).data;
            return [d[0], d[1], d[2], d[3]];
        }""")
        self.assertEqual(coloured[3], 255)
        self.finish(page, problems, "detector")

    def test_daq_drill_down(self):
        page, problems = self.open("daq")
        self.wait(page, "document.querySelector('#daq-info').textContent.includes('channels')")
        self.wait(page, "document.querySelector('#owl-latest').textContent.length > 0")
        self.assertNotEqual(page.locator("#owl-latest").inner_text(), "no data")
        self.finish(page, problems, "daq")
        page.locator('.crate[data-crate="3"] canvas').click()
        page.wait_for_url("**crate=3*")
        self.wait(page, """Array.from(document.querySelectorAll('#daq-card-charts .value'))
                           .filter(e => /[0-9]/.test(e.textContent)).length === 16""")
        self.shot(page, "daq-crate")
        page.locator("#daq-card-charts .panel h2").nth(5).click()
        page.wait_for_url("**card=5*")
        self.wait(page, "document.querySelectorAll('#daq-channel-charts .uplot').length === 32")
        self.shot(page, "daq-card")
        self.assertEqual(problems, [])

    def test_daq_crate_and_card_views_open_from_their_url(self):
        """A reload or a bookmark of a crate or card view draws it (the overview map,
        never built there, broke it with 'cannot load')."""
        for path, ready in (
                ("daq?crate=3", "document.querySelectorAll('#daq-cardmap canvas').length > 0"),
                ("daq?crate=3&card=5",
                 "document.querySelectorAll('#daq-channel-charts .uplot').length === 32")):
            page, problems = self.open(path)
            self.wait(page, "document.querySelector('#daq-info').textContent.includes('channels')")
            self.wait(page, ready)
            self.assertNotIn("cannot load", page.locator("#daq-info").inner_text(), path)
            self.assertEqual(problems, [], path)

    def test_l2(self):
        page, problems = self.open("l2")
        self.wait(page, "document.querySelector('#l2-done').rows.length === 5")
        self.wait(page, """document.querySelector('.panel[data-expr="lag"] .value')
                           .textContent.length > 0""")
        lag = float(page.locator('.panel[data-expr="lag"] .value').inner_text())
        self.assertTrue(2 <= lag <= 6, lag)  # the seeded L2 runs 4 s behind
        self.finish(page, problems, "l2")

    def test_nearline_status_alarms_log(self):
        for path, name, ready in (
                ("nearline", "nearline", "document.querySelector('table')"),
                ("status", "status", "document.querySelector('#status-table')"),
                ("alarms", "alarms", "document.querySelector('#alarms-table')"),
                ("view_log?name=builder", "view_log", "document.querySelector('#log')")):
            page, problems = self.open(path)
            self.wait(page, ready)
            page.wait_for_timeout(1500)
            self.shot(page, name)
            self.assertEqual(problems, [], name)
            # nothing from Redis or a log was inserted as HTML
            self.assertEqual(page.locator("main b, main script").count(), 0, name)

    def test_absolute_time_range(self):
        """The from/to fields take 24-hour UTC times as the site writes them; a bad one is
        marked, not sent."""
        page, problems = self.open("graph?name=TOTAL-nhit&range=1h")
        self.wait(page, "document.querySelector('#graph-summary').textContent.includes('points')")
        page.select_option("#tr-range", "custom")
        page.wait_for_url("**start=*")
        shown = page.locator("#tr-start").input_value()
        self.assertRegex(shown, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
        now = int(time.time())
        fmt = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))  # noqa: E731
        page.fill("#tr-start", "yesterday")
        page.locator("#tr-abs button[type=submit]").click()
        page.wait_for_timeout(300)
        self.assertIn("invalid", page.locator("#tr-start").get_attribute("class"))
        page.fill("#tr-start", fmt(now - 600))
        page.fill("#tr-stop", fmt(now - 300))
        page.locator("#tr-abs button[type=submit]").click()
        page.wait_for_url("**start=%s*" % time.strftime("%Y-%m-%dT%H%%3A%M%%3A%S", time.gmtime(now - 600)))
        self.wait(page, "document.querySelector('#graph-summary').textContent"
                        ".startsWith('300 of 300 points (1 s each)')")
        self.assertEqual(page.locator("#tr-stop").input_value(), fmt(now - 300))
        self.assertEqual(problems, [])

    def test_stream_comes_back_after_http_errors(self):
        """Through nginx a restarting web process answers /stream with 502, after which
        a browser's EventSource never retries by itself: the page must open it again."""
        context = self.browser.new_context(viewport={"width": 1280, "height": 800})
        self.addCleanup(context.close)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/stream", lambda route: route.fulfill(status=502, body="Bad Gateway"))
        page.goto(self.base + "snostream")
        self.wait(page, "!document.querySelector('#stale-banner').hidden", 10000)
        self.assertIn("NO CONNECTION", page.locator("#stale-banner").inner_text())
        page.unroute("**/stream")  # the web process is back
        self.wait(page, "document.querySelector('#live-state').textContent === 'live'", 20000)
        self.assertTrue(page.locator("#stale-banner").is_hidden())
        self.assertEqual(errors, [])

    def test_nearline_is_live(self):
        from tests.support import SyncRedis
        sync = SyncRedis(self.redis.port)
        page, problems = self.open("nearline")
        row = "Array.from(document.querySelectorAll('#nearline-result tr'))" \
              ".find(r => r.cells[0].textContent === 'muons').cells[1].textContent"
        self.assertEqual(page.evaluate(row), "In progress")
        sync.command("HSET", "nearline:250000", "muons", "0")
        self.addCleanup(sync.command, "HSET", "nearline:250000", "muons", "99")
        self.wait(page, row + " === 'Success'", 20000)
        self.assertIn("updated", page.locator("#nearline-updated").inner_text())
        self.assertEqual(page.locator("main script, main b").count(), 0)
        self.assertEqual(problems, [])

    def test_double_click_resets_only_a_zoom(self):
        page, problems = self.open("nhit")
        self.wait(page, "document.querySelector('#nhit-60-linear-info').textContent.includes('events')")
        page.wait_for_timeout(500)
        page.goto(self.base + "graph?name=TOTAL-nhit&range=1h")
        self.wait(page, "document.querySelector('#graph-summary').textContent.includes('points')")
        over = page.locator("#graph-chart .u-over")
        over.dblclick()  # nothing zoomed: stay here (it went back to the NHit page)
        page.wait_for_timeout(500)
        self.assertTrue(page.url.endswith("graph?name=TOTAL-nhit&range=1h"), page.url)
        box = over.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 20)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + 20, steps=5)
        page.mouse.up()
        page.wait_for_url("**start=*")
        over.dblclick()  # undo the zoom
        page.wait_for_url("**range=1h")
        self.assertEqual(page.locator("#tr-range").input_value(), "1h")
        self.assertEqual(problems, [])

    def test_browser_clock_off_by_two_minutes(self):
        """A control-room PC whose clock is off: the pages run on the server's clock (the
        clock shown, the chart windows), so live points land where they belong."""
        context = self.browser.new_context(viewport={"width": 1280, "height": 800})
        self.addCleanup(context.close)
        page = context.new_page()
        page.clock.install(time=time.time() + 120)
        page.clock.resume()
        page.goto(self.base + "graph?name=TOTAL-nhit&range=15m")
        self.wait(page, "document.querySelector('#live-state').textContent === 'live'")

        def off_by():
            """Seconds between the window's end shown and now; None before it is shown."""
            text = page.locator("#graph-summary").inner_text()
            stop = text.rsplit("→", 1)[-1].replace("UTC", "").strip()
            try:
                shown = time.mktime(time.strptime(stop, "%Y-%m-%d %H:%M:%S")) - time.timezone
            except ValueError:
                return None
            return abs(shown - time.time())

        deadline = time.time() + 15
        while (off_by() is None or off_by() > 5) and time.time() < deadline:
            page.wait_for_timeout(200)
        self.assertIsNotNone(off_by(), "the graph never showed its window")
        self.assertLess(off_by(), 5)  # not 120 s ahead
        clock = page.locator("#clock").inner_text().replace(" UTC", "")
        real = time.strftime("%H:%M:%S", time.gmtime())
        self.assertLess(abs(time.mktime(time.strptime(clock, "%H:%M:%S")) -
                            time.mktime(time.strptime(real, "%H:%M:%S"))), 3, (clock, real))

    def test_alarm_badge_on_every_page(self):
        """A new alarm of level >= 40 shows on the Alarms link of any page until it is
        acknowledged on the Alarms page."""
        import datetime
        import json
        from tests.support import SyncRedis
        sync = SyncRedis(self.redis.port)
        when = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        alarm = {"id": 30, "level": 40, "message": "xl3 - crate 9 <b>lost</b>", "time": when}
        sync.command("SET", "alarms:30", json.dumps(alarm), "EX", 600)
        sync.command("SET", "alarms:count", "31")
        self.addCleanup(sync.command, "DEL", "alarms:30")  # it would ring on other tests' pages
        page, problems = self.open("detector")
        self.wait(page, "(b => b !== null && !b.hidden)(document.querySelector('#alarm-badge'))")
        self.assertEqual(page.locator("#alarm-badge").inner_text(), "1")
        self.shot(page, "alarm-badge")
        page.locator('.nav a[href$="alarms"]').click()
        page.wait_for_url("**/alarms")
        self.wait(page, "document.querySelectorAll('#alarms tr').length >= 31")
        page.fill("#ack-name", "Shifter")
        page.locator("#ack-all").click()
        self.wait(page, "(b => b !== null && b.hidden)(document.querySelector('#alarm-badge'))")
        page.goto(self.base + "snostream")
        page.wait_for_timeout(1500)
        self.assertTrue(page.locator("#alarm-badge").is_hidden())
        # the Alarms page may warn that the browser blocked its sound (no click yet)
        self.assertEqual([p for p in problems if "AudioContext" not in p], [])

    def test_wall_screen_and_laptop(self):
        for width, height, name in ((3840, 2160, "wall"), (1280, 800, "laptop")):
            page, problems = self.open("snostream", width=width, height=height)
            self.wait(page, "document.querySelector('#v-run').textContent !== '–'")
            page.wait_for_timeout(1500)
            page.screenshot(path=os.path.join(SHOTS, "minard-browser-snostream-%s.png" % name))
            overflow = page.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1")
            self.assertFalse(overflow, name)
            self.assertEqual(problems, [], name)


class StaleBannerTests(unittest.TestCase):
    """When the pull workers and events stop, every page says so (and shows no data)."""

    kind = "stale"
    setUp = BrowserTests.setUp
    open = BrowserTests.open
    shot = BrowserTests.shot
    wait = BrowserTests.wait

    def test_stale_banner(self):
        # this environment's data stopped two minutes ago
        for path in ("snostream", "detector", "nhit", "status"):
            page, problems = self.open(path)
            self.wait(page, "!document.querySelector('#stale-banner').hidden")
            banner = page.locator("#stale-banner").inner_text()
            self.assertIn("STALE", banner)
            self.assertIn("no pull-worker heartbeat", banner)
            if path == "snostream":
                self.wait(page, "document.querySelector('#v-rate').textContent === 'no data'")
                self.shot(page, "stale")
            self.assertEqual(problems, [], path)

    def test_no_data_is_not_zero(self):
        """Rates of seconds nobody wrote are gaps, not zeros: the Graph page's latest
        TOTAL rate is the last one stored (two minutes ago), and it counts only the
        points that have data."""
        page, problems = self.open("graph?name=TOTAL&range=15m")
        self.wait(page, "document.querySelector('#graph-summary').textContent.includes('points')")
        latest = page.locator("#graph-latest").inner_text()
        self.assertNotEqual(latest, "0")
        self.assertTrue(latest.endswith("k") or float(latest) > 100, latest)
        summary = page.locator("#graph-summary").inner_text()
        present = int(summary.split(" of ")[0])
        self.assertTrue(700 <= present <= 800, summary)  # 900 s minus the last 120 s
        self.assertNotIn("min 0 ", summary)
        self.shot(page, "stale-graph")
        self.assertEqual(problems, [])
