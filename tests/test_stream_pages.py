"""The pages of issue 13 in headless Chromium: Runs, Clock jumps, the Stream page's FEC/D,
orphan and polling panels and the NHit page's event-type selector, against a real web
process and a Redis filled the way the pull workers fill it (the simulator's detector ->
minard.wire.sno -> SecondAccumulator -> the store's own scripts), on top of the browser
tests' seed. No console error, no failed request. Screenshots (dark and light, 1366 and
1920 px) go to /tmp/minard-browser-<page>-<scheme>-<width>.png.
"""
import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import numpy as np
from twisted.trial import unittest

from minard.aggregate.events import SecondAccumulator
from minard.aggregate.runs import RunFollower
from minard.sim.detector import SyntheticDetector
from minard.store import analyses, runs as run_store
from minard.store.events import FLUSH_SCRIPT, chunks
from minard.wire import sno
from tests import web_seed
from tests.support import page_fault
from tests.support import RedisServer, SyncRedis
from tests.test_browser import SHOTS, browser, start_web

SECONDS = 240          # of simulated stream before now ...
FUTURE = 600           # ... and after (the current run stays live while the tests run)
RATE = 200             # events per second


def fill(port, now):
    """Seconds of the simulator's detector through the pull worker's own code into Redis:
    two runs (the second current, with events up to FUTURE s from now, as the seed's), a
    clock jump, FEC/D, orphans, polling."""
    sync = SyncRedis(port)
    detector = SyntheticDetector(seed=4)
    follower = RunFollower("browser-test")
    first = int(now) - SECONDS
    for second in range(first, int(now) + FUTURE):
        if second == first + SECONDS // 2:
            detector.run_start = -1e9          # a new run from here (and no other)
            detector.next_jump = detector.time + 0.5  # and a clock jump, mid-second
        else:
            detector.run_start = max(detector.run_start, detector.time - 1)
        records = detector.events(RATE, seconds=1.0)
        acc = SecondAccumulator(second, follower=follower)
        acc.add(sno.decode_batch(detector.take_headers() + records), second * 1_000_000)
        doc = json.loads(acc.payload("b%d" % second, np.random.default_rng(0),
                                     writer="browser-test"))
        x = doc.pop("x")
        payload = json.dumps(doc)
        for c in chunks(doc):  # the trig hashes, histograms (on top of the seed's)
            sync.command("EVAL", FLUSH_SCRIPT.text, 0, payload, json.dumps(c))
        doc["x"] = x
        for k, ops in enumerate(analyses.chunk_operations(analyses.operations(doc))):
            sync.command("EVAL", analyses.ANALYSES_SCRIPT.text, 0,
                         json.dumps({"id": doc["id"], "k": k, "ops": ops}))
    parts, _ = follower.collect()
    for run, t, field, hits, events in parts:
        sync.command("EVAL", run_store.RUNOCC_WRITE.text, 1,
                     "minard:runocc:%d:%s" % (run, run_store.type_field(t)), "3600", field,
                     run_store.encode_part(hits, events))
    return detector


class Environment:
    def __init__(self):
        self.redis = RedisServer().start()
        self.log_dir = tempfile.mkdtemp(prefix="minard-browser-")
        now = time.time()
        web_seed.seed(self.redis.port, now, future=900)
        self.detector = fill(self.redis.port, now)
        self.web, self.base = start_web(self.redis.url, self.log_dir)

    def close(self):
        self.web.send_signal(signal.SIGTERM)
        try:
            self.web.wait(10)
        except subprocess.TimeoutExpired:
            self.web.kill()
        self.redis.cleanup()
        shutil.rmtree(self.log_dir, ignore_errors=True)


_environment = []


def environment():
    """One filled Redis and web process for the whole test run (closed at exit)."""
    if not _environment:
        env = Environment()
        atexit.register(env.close)
        _environment.append(env)
    return _environment[0]


class StreamPagesTests(unittest.TestCase):

    def setUp(self):
        self.browser = browser()
        self.base = environment().base

    def open(self, path, width=1366, scheme="dark"):
        context = self.browser.new_context(viewport={"width": width, "height": 900},
                                           color_scheme=scheme)
        self.addCleanup(context.close)
        page = context.new_page()
        problems = []
        page.on("console", lambda m: problems.append("console %s: %s" % (m.type, m.text))
                if page_fault(m) else None)
        page.on("pageerror", lambda e: problems.append("page error: %s" % (e,)))
        page.on("requestfailed", lambda r: problems.append("request failed: %s %s" % (
            r.url, r.failure)) if not (r.url.endswith("/stream")
                                       or "ERR_ABORTED" in (r.failure or "")) else None)
        page.on("response", lambda r: problems.append("HTTP %d %s" % (r.status, r.url))
                if r.status >= 400 else None)
        page.goto(self.base + path, wait_until="load")
        return page, problems

    def wait(self, page, script, timeout=20000):
        deadline = time.time() + timeout / 1000.0
        while not page.evaluate(script):
            if time.time() > deadline:
                self.fail("timed out waiting for: %s" % " ".join(script.split()))
            page.wait_for_timeout(100)

    def shots(self, path, ready, name):
        """The page in both colour schemes at 1366 and 1920 px, without a problem."""
        for scheme in ("dark", "light"):
            for width in (1366, 1920):
                page, problems = self.open(path, width, scheme)
                self.wait(page, ready)
                page.wait_for_timeout(400)
                page.screenshot(path=os.path.join(SHOTS, "minard-browser-%s-%s-%d.png" % (
                    name, scheme, width)), full_page=True)
                self.assertEqual(problems, [], (name, scheme, width))

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return json.load(r)

    def test_runs_page(self):
        runs = self.get("get_runs")["runs"]
        self.assertEqual(len(runs), 2)
        current, previous = runs
        page, problems = self.open("runs")
        self.wait(page, "document.querySelectorAll('#runs-body tr').length === 2")
        rows = page.locator("#runs-body tr")
        self.assertEqual(rows.nth(0).get_attribute("data-run"), str(current["run"]))
        self.assertEqual(rows.nth(0).locator("td").nth(3).inner_text(), "running")
        self.assertIn("live", rows.nth(0).get_attribute("class"))
        self.assertEqual(rows.nth(1).locator("td").nth(5).inner_text(),
                         str(previous["events"]["TOTAL"]))
        self.assertIn("Physics", rows.nth(1).locator("td").nth(1).inner_text())
        # each run opens the charts over its range
        href = rows.nth(1).locator("td.charts a").nth(1).get_attribute("href")
        self.assertTrue(href.startswith("graph?") and "start=" in href and "stop=" in href,
                        href)
        rows.nth(1).locator("td.charts a").nth(0).click()
        page.wait_for_url("**/snostream?start=*")
        self.assertEqual(problems, [])
        self.shots("runs", "document.querySelectorAll('#runs-body tr').length === 2", "runs")

    def test_clock_jumps_page(self):
        self.assertGreaterEqual(len(self.get("get_clock_jumps")["jumps"]), 1)
        ready = ("document.querySelectorAll('#jumps-body tr').length >= 1 && "
                 "document.querySelectorAll('.uplot').length === 1")
        page, problems = self.open("clock_jumps?range=15m")
        self.wait(page, ready)
        self.assertIn("clocks disagree", page.locator("#jumps-body").inner_text())
        self.assertEqual(problems, [])
        self.shots("clock_jumps?range=15m", ready, "clock-jumps")

    def test_stream_page_fecd_orphans_polling(self):
        ready = """['FECD/100L', 'DISPATCH_ORPHANS', 'NONE', 'polling'].every(e =>
            /[0-9]/.test(document.querySelector('.panel[data-expr="' + e + '"] .value')
                         .textContent))"""
        page, problems = self.open("snostream")
        self.wait(page, ready)
        self.assertEqual(problems, [])
        self.shots("snostream", ready, "snostream-fecd")

    def test_nhit_page_by_trigger(self):
        ready = ("document.querySelector('#nhit-60-linear-info').textContent.includes('events')"
                 " && document.querySelector('#nhit-10-linear-info').textContent"
                 ".includes('events')")
        page, problems = self.open("nhit?trigger=PULGT")
        self.wait(page, ready)
        self.assertEqual(page.locator("#nhit-trigger").input_value(), "PULGT")
        pulgt = page.locator("#nhit-60-linear-info").inner_text()
        page.locator("#nhit-trigger").select_option("TOTAL")
        self.wait(page, "document.querySelector('#nhit-60-linear-info').textContent !== %s"
                  % json.dumps(pulgt))
        self.assertNotIn("trigger=", page.url)
        self.assertEqual(problems, [])
        self.shots("nhit?trigger=PULGT", ready, "nhit-trigger")
