"""Runs on the pages (issue 13) in headless Chromium, on the environment of
tests.test_stream_pages (two runs, the second current, filled through the pull worker's
own code): the run boundaries every time chart draws (minard.js), the Detector page's
run / event-type selector, the NHit page's histogram of the time picker's window. No
console error, no failed request. Screenshots (dark and light, 1366 and 1920 px) go to
/tmp/minard-browser-<page>-<scheme>-<width>.png.

And the simulator's clock jumps: none in the first 15 minutes (a fresh local system
raises no alarm for its first 10 minutes, issue 11).
"""
from urllib.parse import parse_qs, urlparse

from twisted.trial import unittest

from minard.sim import detector as sim_detector
from minard.sim.detector import SyntheticDetector
from tests import test_stream_pages as pages
from tests.test_browser import browser


class RunPagesTests(unittest.TestCase):

    open = pages.StreamPagesTests.open
    wait = pages.StreamPagesTests.wait
    shots = pages.StreamPagesTests.shots
    get = pages.StreamPagesTests.get

    def setUp(self):
        self.browser = browser()
        self.base = pages.environment().base
        self.runs = self.get("get_runs")["runs"]
        self.assertEqual(len(self.runs), 2)

    def test_run_boundaries_on_charts(self):
        current = self.runs[0]
        ready = ("document.querySelectorAll('.uplot[data-run-boundaries~=\"%d\"]').length >= 1"
                 % current["run"])
        page, problems = self.open("graph?name=TOTAL&range=15m")
        self.wait(page, ready)
        # the line is on the canvas, in the run-line colour, at the run's start
        found = page.evaluate("""(start) => {
            const u = Minard.charts[0].plot, ctx = u.ctx;
            const x = Math.round(u.valToPos(start, 'x', true));
            const want = getComputedStyle(document.documentElement)
                .getPropertyValue('--run-line').trim();
            const rgb = [1, 3, 5].map(i => parseInt(want.slice(i, i + 2), 16));
            const p = ctx.getImageData(x, u.bbox.top, 1, u.bbox.height).data;  // one read
            let hits = 0;
            for (let i = 0; i < p.length; i += 4) {
                if (Math.abs(p[i] - rgb[0]) + Math.abs(p[i + 1] - rgb[1]) + Math.abs(p[i + 2] - rgb[2]) < 60)
                    hits++;
            }
            return hits;
        }""", current["start"])
        self.assertGreater(found, 20)
        # each run that starts inside the window, and only those
        lo, hi = page.evaluate("[Minard.charts[0].plot.scales.x.min, Minard.charts[0].plot.scales.x.max]")
        inside = sorted(str(r["run"]) for r in self.runs if r["start"] is not None and lo <= r["start"] <= hi)
        self.assertEqual(sorted(page.evaluate("document.querySelector('.uplot').dataset.runBoundaries")
                                .split()), inside)
        self.assertEqual(problems, [])
        # every time chart of the Stream page draws it, read once for the page
        asked = []
        page, problems = self.open("snostream?range=15m")
        page.on("request", lambda r: asked.append(r.url) if "get_runs" in r.url else None)
        page.reload(wait_until="load")
        self.wait(page, """(() => { const c = document.querySelectorAll('.uplot');
            return c.length > 3 && [...c].filter(n => (n.dataset.runBoundaries || '')
                .split(' ').includes('%d')).length >= 3; })()""" % current["run"])
        self.assertEqual(len(asked), 1, asked)
        query = parse_qs(urlparse(asked[0]).query)
        self.assertLessEqual(float(query["start"][0]), current["start"])
        self.assertEqual(problems, [])
        self.shots("snostream?range=15m", ready.replace(">= 1", ">= 3"), "snostream-runs")

    def test_detector_run_selector(self):
        previous = self.runs[1]
        types = self.get("get_run?run=%d" % previous["run"])["occupancy_types"]
        self.assertIn("PULGT", types)
        page, problems = self.open("detector")
        self.wait(page, "document.querySelector('#det-run option[value=\"%d\"]') !== null"
                  % previous["run"])
        self.assertTrue(page.locator("#det-trigger-label").is_hidden())
        page.locator("#det-run").select_option(str(previous["run"]))
        self.wait(page, "document.querySelector('#det-info').textContent.startsWith('run %d ')"
                  % previous["run"])
        page.locator("#det-trigger").select_option("PULGT")
        shown = "document.querySelector('#det-info').textContent.includes('PULGT events')"
        self.wait(page, shown)
        occupancy = self.get("run_occupancy?run=%d&trigger=PULGT" % previous["run"])
        channels = sum(1 for v in occupancy["values"] if v is not None)
        self.assertIn("%d channels with data" % channels, page.locator("#det-info").inner_text())
        self.assertIn("events: %d" % occupancy["events"], page.locator("#det-info").inner_text())
        self.assertIn("run=%d" % previous["run"], page.url)
        self.assertIn("trigger=PULGT", page.url)
        self.assertTrue(page.locator("#det-window-label").is_hidden())
        # a reload shows the same
        page.reload(wait_until="load")
        self.wait(page, shown)
        self.assertEqual(page.locator("#det-run").input_value(), str(previous["run"]))
        self.assertEqual(page.locator("#det-trigger").input_value(), "PULGT")
        self.assertIn("mean", page.locator("#det-summary").inner_text())
        # back to the time window: today's page
        page.locator("#det-run").select_option("")
        self.wait(page, "document.querySelector('#det-info').textContent.includes('bucket')")
        self.assertNotIn("run=", page.url)
        self.assertEqual(problems, [])
        self.shots("detector?run=current&trigger=PULGT",
                   "document.querySelector('#det-info').textContent.includes('PULGT events')",
                   "detector-run")
        self.shots("detector", "document.querySelector('#det-info').textContent"
                   ".includes('channels with data')", "detector")

    def test_nhit_time_range(self):
        asked = []
        page, problems = self.open("nhit")
        page.on("request", lambda r: asked.append(r.url) if "nhit_hist" in r.url else None)
        page.goto(self.base + "nhit?range=1h&trigger=PULGT", wait_until="load")
        ready = "document.querySelector('#nhit-window-linear-info').textContent.includes('events')"
        self.wait(page, ready)
        windows = [parse_qs(urlparse(u).query) for u in asked if "start=" in u]
        self.assertTrue(windows, asked)
        q = windows[-1]
        self.assertEqual(q["trigger"], ["PULGT"])
        self.assertLessEqual(abs(float(q["stop"][0]) - float(q["start"][0]) - 3600), 2)
        self.assertIn("1 hour", page.locator(".nhit-window-title").first.inner_text())
        # the same numbers as the route's
        answer = self.get("query?name=nhit_hist&trigger=PULGT&start=%s&stop=%s"
                          % (q["start"][0], q["stop"][0]))
        total = sum(answer["events"])
        self.assertGreater(total, 0)
        info = page.locator("#nhit-window-linear-info").inner_text()
        self.assertIn("events · mean", info)
        self.assertEqual(page.locator("#nhit-window-log-info").inner_text(), info)
        # a window of the picker's from/to
        page.locator("#tr-range").select_option("custom")
        self.wait(page, "new URLSearchParams(location.search).has('start')")
        self.wait(page, ready)
        self.assertEqual(problems, [])
        self.shots("nhit?range=1h", ready, "nhit-range")


class SimulatorClockJumpTests(unittest.TestCase):

    def test_no_jump_in_the_first_15_minutes(self):
        det = SyntheticDetector(seed=3)
        self.assertGreaterEqual(det.next_jump, 15 * 60)
        for _ in range(15 * 60):
            det.events(2, seconds=1.0)
        self.assertEqual(det.jumps, 0)
        while det.time < sim_detector.FIRST_CLOCK_JUMP + 5:
            det.events(2, seconds=1.0)
        self.assertEqual(det.jumps, 1)
        # then about hourly
        self.assertGreater(det.next_jump - det.time, sim_detector.CLOCK_JUMP_SECONDS * 0.7)
