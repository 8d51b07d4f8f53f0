"""The charts of the dashboard as a shifter reads them, in headless Chromium against the
real web role and a seeded Redis (the environment of tests/test_browser.py, shared).

Readable small charts (three labelled y ticks, axis titles with units, no ±1 % zoom), the
shared crosshair, legends with hover values, y from zero, zoom-out / shift / live buttons
and keys, pause and resume, page state in the URL (time range spellings, EXT2–EXT8), and
a second without data drawn as a gap, never as 0. Every page must load without a console
error or a failed request.
"""
import time
import urllib.parse

from twisted.trial import unittest

from minard.store import keys
from tests.support import SyncRedis
from tests import test_browser  # (not its TestCase by name: trial would run it again)

# the series colour of a one-line chart (minard.js PALETTE[0]) as RGB
SERIES_RGB = (0x4f, 0xb3, 0xff)

#: every chart with data: at least three labelled y ticks, a y title, a time title
READABLE = """() => Minard.charts.filter(c => c.hasData() && c.plot.root.offsetParent !== null)
    .map(c => ({ labels: c.yLabels(), y: c.plot.axes[1].label, x: c.plot.axes[0].label }))"""


def url_params(page):
    return dict(urllib.parse.parse_qsl(urllib.parse.urlparse(page.url).query))


class ChartTests(unittest.TestCase):
    kind = "fresh"
    setUp = test_browser.BrowserTests.setUp
    open = test_browser.BrowserTests.open
    shot = test_browser.BrowserTests.shot
    wait = test_browser.BrowserTests.wait

    def charts_ready(self, page, n=1):
        self.wait(page, "Minard.charts.filter(c => c.hasData()).length >= %d" % n)

    def hover(self, page, selector, fx=0.5, fy=0.5):
        over = page.locator(selector)
        over.scroll_into_view_if_needed()
        box = over.bounding_box()
        page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
        return box

    # -- readable charts ----------------------------------------------------------------------

    def test_small_charts_have_three_labelled_ticks_and_titled_axes(self):
        for path, expected in (("snostream", 29), ("daq?crate=3&card=8", 32), ("l2", 8)):
            page, problems = self.open(path, width=1366)
            self.charts_ready(page, expected)
            page.wait_for_timeout(300)
            charts = page.evaluate(READABLE)
            self.assertGreaterEqual(len(charts), expected, path)
            for c in charts:
                labelled = [t for t in c["labels"] if t]
                self.assertGreaterEqual(len(labelled), 3, (path, c))
                self.assertEqual(len(set(labelled)), len(labelled), (path, c))  # no "1k 1k 1k"
                self.assertTrue(c["y"], (path, c))
                self.assertEqual(c["x"], "time (UTC)", (path, c))
            self.assertEqual(problems, [], path)
        # a rate of ~1 kHz with 5 % noise is not drawn as if it swung from top to bottom
        page, problems = self.open("snostream", width=1366)
        self.charts_ready(page, 29)
        span = page.evaluate("""() => { const c = Minard.charts.find(c =>
            c.plot.root.closest('.panel').dataset.expr === '100L');
            const s = c.plot.scales.y, ys = c.plot.data[1].filter(v => v !== null);
            return [s.min, s.max, Math.max(...ys)]; }""")
        self.assertGreaterEqual(span[1] - span[0], 0.19 * span[2], span)
        # a flat 1 kHz with ±0.5 % noise, drawn in a small panel of the page
        flat = page.evaluate("""async () => {
            const box = document.createElement('div');
            box.className = 'chart';
            document.querySelector('.panel[data-expr="MISS"]').appendChild(box);
            const c = Minard.chart(box, { series: [{ label: 'flat' }], height: 130, yLabel: 'rate (Hz)' });
            const xs = [], ys = [];
            for (let i = 0; i < 300; i++) { xs.push(1.8e9 + i); ys.push(1000 + 5 * Math.sin(i)); }
            c.setData([xs, ys]);
            await new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)));
            return [c.plot.scales.y.min, c.plot.scales.y.max, c.yLabels()];
        }""")
        self.assertGreaterEqual(flat[1] - flat[0], 0.19 * 1005, flat)
        self.assertLessEqual(flat[0], 995)
        self.assertGreaterEqual(flat[1], 1005)
        self.assertGreaterEqual(len([t for t in flat[2] if t]), 3, flat)
        self.assertEqual(page.evaluate("""Minard.charts.find(c => c.plot.root.closest('.panel')
            .dataset.expr === '100L').plot.axes[1].label"""), "rate (Hz)")
        self.assertEqual(problems, [])

    def test_histogram_axes_have_titles_and_units(self):
        for path, x_title, y_title in (("nhit", "nhit", "events"),
                                       ("detector", "occupancy (hits/event)", "channels"),
                                       ("graph?name=TOTAL-nhit&range=1h", "mean nhit", "points")):
            page, problems = self.open(path, width=1366)
            self.wait(page, "Minard.histograms.length > 0 && Minard.histograms.every(h => h.hasData())")
            page.wait_for_timeout(300)
            axes = page.evaluate("""Minard.histograms.map(h => [h.plot.axes[0].label,
                                    h.plot.axes[1].label, h.yLabels().filter(t => t).length])""")
            for x, y, labelled in axes:
                self.assertEqual((x, y), (x_title, y_title), path)
                self.assertGreaterEqual(labelled, 3, path)
            self.assertEqual(problems, [], path)

    def test_graph_legend_is_24_hour_utc(self):
        page, problems = self.open("graph?name=TOTAL&range=15m", width=1366)
        self.charts_ready(page)
        self.hover(page, "#graph-chart .u-over", 0.5)
        self.wait(page, "document.querySelector('#graph-chart .u-legend .u-series .u-value')"
                        ".textContent.endsWith('UTC')")
        shown = page.locator("#graph-chart .u-legend .u-series .u-value").first.inner_text()
        self.assertRegex(shown, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
        self.assertNotRegex(shown, r"(?i)[ap]m")
        self.assertEqual(problems, [])

    # -- crosshair and legends ----------------------------------------------------------------

    def test_crosshair_is_shared_by_the_panels_of_a_page(self):
        page, problems = self.open("snostream", width=1366)
        self.charts_ready(page, 29)
        self.hover(page, '.panel[data-expr="100L"] .u-over', 0.4)
        page.wait_for_timeout(200)
        state = page.evaluate("""() => Minard.charts.map(c => ({
            expr: c.plot.root.closest('.panel').dataset.expr, idx: c.plot.cursor.idx,
            x: c.plot.cursor.idx === null ? null : c.plot.data[0][c.plot.cursor.idx],
            readout: (r => r.hidden ? null : r.textContent)(c.plot.root.querySelector('.chart-readout'))
        }))""")
        by = {s["expr"]: s for s in state}
        self.assertIsNotNone(by["100L"]["x"])
        # the TOTAL chart above and the PULGT mean charge chart far below follow the mouse
        for other in ("TOTAL", "PULGT-charge", "gtid"):
            self.assertEqual(by[other]["x"], by["100L"]["x"], other)
            self.assertIsNotNone(by[other]["readout"], other)
        stamp = time.strftime("%H:%M:%S", time.gmtime(by["100L"]["x"]))
        self.assertTrue(by["TOTAL"]["readout"].startswith(stamp + " UTC · "), by["TOTAL"])
        # the panel's value at that second, as its own data have it
        value = page.evaluate("""() => { const c = Minard.charts.find(c =>
            c.plot.root.closest('.panel').dataset.expr === 'gtid');
            return c.plot.data[1][c.plot.cursor.idx]; }""")
        self.assertIn(" · %d" % value, by["gtid"]["readout"])
        page.mouse.move(5, 5)  # off the charts: the read-outs go
        self.wait(page, "Array.from(document.querySelectorAll('.chart-readout')).every(r => r.hidden)")
        self.assertEqual(problems, [])

    def test_crates_over_time_legend_shows_values_at_the_cursor(self):
        page, problems = self.open("daq", width=1366)
        self.wait(page, "Minard.charts.length === 2 && Minard.charts.every(c => c.hasData())")
        legend_time = "document.querySelector('#crates-chart .u-legend .u-series .u-value').textContent"
        self.assertEqual(page.evaluate(legend_time), "latest")  # no cursor: the latest values
        self.hover(page, "#crates-chart .u-over", 0.3, 0.5)
        self.wait(page, legend_time + ".endsWith('UTC')")
        rows = page.evaluate("""() => { const u = Minard.charts.find(c => c.plot.root.closest('#crates-chart')).plot;
            return Array.from(document.querySelectorAll('#crates-chart .u-legend .u-series')).map((r, i) =>
                [r.querySelector('.u-label').textContent, r.querySelector('.u-value').textContent,
                 u.data[i][u.cursor.idx]]); }""")
        crates = [r for r in rows if r[0].startswith("crate ")]
        self.assertEqual(len(crates), 19)  # crate 19 is not installed in SNO+
        for name, shown, value in crates:  # the value at the cursor, as the chart has it
            self.assertRegex(shown, r"^[0-9.]+k?$", name)
            number = float(shown.rstrip("k")) * (1000 if shown.endswith("k") else 1)
            self.assertLess(abs(number - value), 0.006 * value, (name, shown, value))
        self.hover(page, "#crates-chart .u-over", 0.32, 0.5)  # (a chart redrawn with new data drops it)
        readout = page.locator("#crates-chart .chart-readout").inner_text()
        self.assertRegex(readout, r"^\d\d:\d\d:\d\d UTC · crate \d+ [0-9.]+k?")
        # the OWL chart beside it follows the same crosshair
        self.assertFalse(page.evaluate("document.querySelector('#owl-chart .chart-readout').hidden"))
        self.shot(page, "charts-crates-legend")
        self.assertEqual(problems, [])

    # -- y from zero ----------------------------------------------------------------------------

    def test_y_from_zero_is_kept_in_the_url(self):
        total_min = """Minard.charts.find(c => c.plot.root.closest('.panel').dataset.expr === 'TOTAL')
                       .plot.scales.y.min"""
        page, problems = self.open("snostream", width=1366)
        self.charts_ready(page, 29)
        self.assertGreater(page.evaluate(total_min), 0)  # ~1 kHz: not from zero by default
        page.locator("#tr-yzero").check()
        self.wait(page, total_min + " === 0")
        self.assertEqual(url_params(page).get("y"), "zero")
        page.reload()
        self.charts_ready(page, 29)
        self.assertTrue(page.locator("#tr-yzero").is_checked())
        self.wait(page, total_min + " === 0")
        page.locator("#tr-yzero").uncheck()
        self.wait(page, total_min + " > 0")
        self.assertNotIn("y", url_params(page))
        self.assertEqual(problems, [])

    # -- zoom out, shift, live: buttons and keys ------------------------------------------------

    def window(self, page):
        return page.evaluate("(w => [w.t0, w.t1, w.live])(Minard.timeRange.current())")

    def test_zoom_out_shift_and_live_buttons_and_keys(self):
        page, problems = self.open("graph?name=TOTAL&range=15m", width=1366)
        self.charts_ready(page)
        page.locator("#tr-out").click()
        page.wait_for_url("**range=1h*")
        page.keyboard.press("z")
        page.wait_for_url("**range=3h*")
        page.keyboard.press("-")
        page.wait_for_url("**range=9h*")
        # half a window earlier: an absolute window 4.5 h back
        page.keyboard.press("ArrowLeft")
        page.wait_for_url("**start=*")
        t0, t1, live = self.window(page)
        self.assertFalse(live)
        self.assertLess(abs(t1 - t0 - 9 * 3600), 2)
        self.assertLess(abs(t1 - (time.time() - 4.5 * 3600)), 30)
        page.locator("#tr-earlier").click()
        self.wait(page, "Minard.timeRange.current().t1 < Date.now() / 1000 - 8.9 * 3600")
        page.locator("#tr-later").click()
        self.wait(page, "Minard.timeRange.current().t1 > Date.now() / 1000 - 4.6 * 3600")
        # a zoomed-out absolute window: twice as long, same middle
        before = self.window(page)
        page.keyboard.press("z")
        self.wait(page, "Minard.timeRange.current().span > 17 * 3600")
        t0, t1, live = self.window(page)
        self.assertLess(abs((t0 + t1) / 2 - (before[0] + before[1]) / 2), 2)
        # later than now is live again; L goes live from anywhere
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        self.wait(page, "Minard.timeRange.current().live")
        self.assertIn("range", url_params(page))
        page.keyboard.press("ArrowLeft")
        self.wait(page, "!Minard.timeRange.current().live")
        page.keyboard.press("l")
        self.wait(page, "Minard.timeRange.current().live")
        self.assertTrue(page.locator("#tr-later").is_disabled())
        # keys do nothing while typing in a field
        page.select_option("#tr-range", "custom")
        page.wait_for_url("**start=*")
        url = page.url
        page.locator("#tr-start").click()
        page.keyboard.press("z")
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("l")
        page.wait_for_timeout(300)
        self.assertEqual(page.url, url)
        self.assertEqual(problems, [])

    # -- pause -----------------------------------------------------------------------------------

    def test_pause_stops_updates_and_resume_resumes(self):
        last_x = """(c => c.plot.data[0][c.plot.data[0].length - 1])(Minard.charts.find(c =>
                    c.plot.root.closest('.panel').dataset.expr === 'TOTAL'))"""
        page, problems = self.open("snostream", width=1366)
        self.charts_ready(page, 29)
        self.wait(page, "document.querySelector('#live-state').textContent === 'live'")
        page.locator("#pause").click()
        self.assertTrue(page.locator("#paused-banner").is_visible())
        self.assertIn("PAUSED", page.locator("#paused-banner").inner_text())
        self.assertEqual(page.locator("#pause").inner_text(), "Resume")
        self.wait(page, "document.querySelector('#live-state').textContent === 'paused'")
        frozen, gtid = page.evaluate(last_x), page.locator("#v-gtid").inner_text()
        self.shot(page, "charts-paused")
        page.wait_for_timeout(3500)  # /stream sends a message every second
        self.assertEqual(page.evaluate(last_x), frozen)
        self.assertEqual(page.locator("#v-gtid").inner_text(), gtid)
        page.keyboard.press("p")
        self.assertTrue(page.locator("#paused-banner").is_hidden())
        self.wait(page, last_x + " > %s" % frozen)
        self.wait(page, "document.querySelector('#live-state').textContent === 'live'")
        self.assertEqual(page.locator("#pause").inner_text(), "Pause")
        self.assertEqual(problems, [])

    # -- state in the URL ----------------------------------------------------------------------

    def test_ext_toggle_survives_a_reload(self):
        ext_shown = "!document.querySelector('.panel[data-expr=\"EXT2\"]').hidden"
        page, problems = self.open("snostream", width=1366)
        toggle = page.locator("#toggle-ext")
        self.assertEqual(toggle.inner_text(), "show EXT2–EXT8")
        self.assertFalse(page.evaluate(ext_shown))
        toggle.click()
        self.assertEqual(toggle.inner_text(), "hide EXT2–EXT8")
        self.assertTrue(page.evaluate(ext_shown))
        self.assertEqual(url_params(page).get("ext"), "1")
        page.reload()
        self.wait(page, ext_shown)
        self.assertEqual(page.locator("#toggle-ext").inner_text(), "hide EXT2–EXT8")
        self.assertEqual(page.locator("#toggle-ext").get_attribute("aria-pressed"), "true")
        page.locator("#toggle-ext").click()
        self.assertFalse(page.evaluate(ext_shown))
        self.assertEqual(page.locator("#toggle-ext").inner_text(), "show EXT2–EXT8")
        self.assertNotIn("ext", url_params(page))
        self.assertEqual(problems, [])

    def test_nhit_range_is_kept_in_the_url(self):
        page, problems = self.open("nhit", width=1366)
        page.select_option("#nhit-range", "300")
        self.assertEqual(url_params(page).get("x"), "300")
        page.reload()
        self.wait(page, "document.querySelector('#nhit-range').value === '300'")
        self.wait(page, "Minard.histograms[0].hasData()")
        self.assertEqual(page.evaluate("Minard.histograms[0].plot.scales.x.max"), 300)
        self.assertEqual(problems, [])

    def test_every_range_spelling_works_and_an_unknown_one_is_said(self):
        for spelling, seconds, shown in (("24h", 86400, "1d"), ("1d", 86400, "1d"),
                                         ("2h", 7200, "2h"), ("90 min", 5400, "90 min")):
            page, problems = self.open("graph?name=TOTAL&range=" + urllib.parse.quote(spelling),
                                       width=1366)
            self.wait(page, "document.querySelector('#graph-summary').textContent.includes('points')")
            w = page.evaluate("(w => [w.span, w.stop - w.start])(Minard.timeRange.current())")
            self.assertEqual(w[0], seconds, spelling)
            self.assertGreaterEqual(w[1], seconds, spelling)
            self.assertEqual(page.locator("#tr-range").input_value(), shown, spelling)
            self.assertTrue(page.locator("#tr-problem").is_hidden(), spelling)
            step = -(-seconds // 900)
            self.assertIn("points (%d s each)" % step, page.locator("#graph-summary").inner_text())
            self.assertEqual(problems, [], spelling)
        for spelling, said in (("banana", "unknown range “banana”"), ("5s", "outside"),
                               ("20y", "outside")):
            page, problems = self.open("graph?name=TOTAL&range=" + spelling, width=1366)
            self.wait(page, "!document.querySelector('#tr-problem').hidden")
            text = page.locator("#tr-problem").inner_text()
            self.assertIn(said, text)
            self.assertIn("showing the last 15 min", text)
            self.assertEqual(problems, [], spelling)
        self.shot(page, "charts-unknown-range")

    # -- gaps ---------------------------------------------------------------------------------

    def test_a_second_without_data_is_a_gap_not_zero(self):
        """Delete one second (its trigger counts and pull-worker heartbeat) 700 s back,
        outside every window the other browser tests read at 1-s steps: the Graph page
        draws nothing there, no line down to 0."""
        sync = SyncRedis(self.redis.port)
        gap = int(time.time()) - 700
        sync.command("DEL", keys.trig(1, gap), keys.ts(1, gap, "trig:nhit"),
                     keys.ts(1, gap, "trig:charge"), keys.pull_heartbeat(1, gap))
        iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
        page, problems = self.open("graph?name=TOTAL&start=%s&stop=%s" % (iso(gap - 40), iso(gap + 40)),
                                   width=1366)
        self.wait(page, "document.querySelector('#graph-summary').textContent.includes('79 of 80 points')")
        page.wait_for_timeout(300)
        columns = page.evaluate("""(gap) => {
            const u = Minard.charts[0].plot, ctx = u.ctx;
            const i = u.data[0].indexOf(gap);
            const rgb = [%d, %d, %d];
            const b = { left: Math.round(u.bbox.left), top: Math.round(u.bbox.top),
                        width: Math.round(u.bbox.width), height: Math.round(u.bbox.height) };
            const all = ctx.getImageData(b.left, b.top, b.width, b.height).data; // one read-back
            function hits(t) { // pixels of the series' colour in the column at time t
                const x = Math.round(u.valToPos(t, 'x', true)) - b.left;
                let n = 0;
                for (let y = 0; y < b.height; y++) {
                    const k = (y * b.width + x) * 4;
                    if (Math.abs(all[k] - rgb[0]) + Math.abs(all[k + 1] - rgb[1]) + Math.abs(all[k + 2] - rgb[2]) < 60) { n++; }
                }
                return n;
            }
            return { value: u.data[1][i], before: u.data[1][i - 1], after: u.data[1][i + 1],
                     atGap: hits(gap), beside: hits(gap - 20), min: u.scales.y.min };
        }""" % SERIES_RGB, gap)
        self.assertIsNone(columns["value"])
        self.assertGreater(columns["before"], 100)
        self.assertGreater(columns["after"], 100)
        self.assertGreater(columns["beside"], 0)  # the line is there where there are data
        self.assertEqual(columns["atGap"], 0)  # and not at the missing second
        self.assertGreater(columns["min"], 0)  # no 0 pulled the axis down
        self.hover(page, "#graph-chart .u-over", 0.5)
        self.wait(page, "document.querySelectorAll('#graph-chart .u-legend .u-value')[1]"
                        ".textContent.length > 1")
        self.shot(page, "charts-gap")
        self.assertEqual(problems, [])

    def test_no_data_says_no_data(self):
        page, problems = self.open("graph?name=NOSUCH&range=15m", width=1366)
        self.wait(page, "document.querySelector('#graph-summary').textContent.includes('missing data')")
        state = page.evaluate("""() => ({
            chart: !Minard.charts[0].plot.root.querySelector('.chart-nodata').hidden,
            hists: Minard.histograms.map(h => !h.plot.root.querySelector('.chart-nodata').hidden),
            labels: Minard.charts[0].yLabels().concat(...Minard.histograms.map(h => h.yLabels())),
            values: Minard.charts[0].plot.data[1].filter(v => v !== null).length })""")
        self.assertTrue(state["chart"])
        self.assertEqual(state["hists"], [True, True])
        self.assertEqual([t for t in state["labels"] if t], [])  # no axis of zeros
        self.assertEqual(state["values"], 0)
        self.assertEqual(page.locator("#graph-latest").inner_text(), "no data")
        self.assertEqual(problems, [])

