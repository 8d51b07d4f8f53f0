"""Status, Alarms and Log pages in headless Chromium, live against the real main site and
the real logging server (same Redis, same log directory). Data are posted over HTTP to
the log server while the pages are open, as a DAQ program would.

Screenshots go to /tmp/minard-page-{status,alarms,view_log}.png.
"""
import base64
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request

from twisted.internet import defer, threads
from twisted.trial import unittest

from minard import auth
from minard.programs import load_programs
from minard.web.logsite import RotatingLogFiles, make_log_site
from tests.logserver_support import PASSWORD, USER, write_users
from tests.web_support import PROGRAMS, SiteTestMixin

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'

#: Replaces the Web Audio API: counts the beeps alarms.js plays.
FAKE_AUDIO = """
window.__beeps = 0;
window.AudioContext = function () {
  this.state = "running"; this.currentTime = 0; this.destination = {};
};
window.AudioContext.prototype.createOscillator = function () {
  return { type: "", frequency: { value: 0 }, connect: function () {},
           start: function () { window.__beeps += 1; }, stop: function () {} };
};
window.AudioContext.prototype.createGain = function () {
  return { gain: { setValueAtTime: function () {}, exponentialRampToValueAtTime: function () {} },
           connect: function () {} };
};
window.AudioContext.prototype.resume = function () {};
"""


class PagesTests(SiteTestMixin, unittest.TestCase):
    use_clock = False
    timeout = 180

    def setUp(self):
        if sync_playwright is None or not os.path.exists(CHROMIUM):
            raise unittest.SkipTest("playwright or chromium not installed")
        SiteTestMixin.setUp(self)
        from twisted.internet import reactor
        os.makedirs(self.log_dir + "-auth", exist_ok=True)
        auth_file = write_users(self.log_dir + "-auth")
        self.logsite = make_log_site(self.redis, load_programs(PROGRAMS), self.log_dir,
                                     auth.Authenticator(auth_file), clock=reactor)
        self.log_port = reactor.listenTCP(0, self.logsite.site(), interface="127.0.0.1")
        self.addCleanup(self.log_port.stopListening)
        self.log_url = "http://127.0.0.1:%d" % self.log_port.getHost().port

    # -- run in the browser thread (blocking calls are fine there) ----------------------

    def post(self, path, **fields):
        request = urllib.request.Request(
            self.log_url + path, data=urllib.parse.urlencode(fields).encode(),
            headers={"Authorization": "Basic " + base64.b64encode(
                ("%s:%s" % (USER, PASSWORD)).encode()).decode()})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == b"ok\n"

    def browse(self, script):
        """Run script(page, errors) in Chromium in a thread; the reactor keeps serving."""

        def run():
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                try:
                    context = browser.new_context(viewport={"width": 1400, "height": 900})
                    page = context.new_page()
                    errors = []
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error"
                            else None)
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    script(page, errors)
                    return errors
                finally:
                    browser.close()

        return threads.deferToThread(run)

    # -- the pages ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_status_page(self):
        def script(page, errors):
            self.post("/heartbeat", name="builder", status="ok")
            self.post("/heartbeat", name="xl3", status=XSS)
            page.goto(self.base + "status")
            page.wait_for_function(
                "() => document.querySelector('tr[data-name=builder]').classList.contains('ok')")
            row = page.locator("tr[data-name=builder]")
            assert row.locator("td.status").inner_text() == "OK"
            assert row.locator("td.uptime").inner_text() == "a few seconds"
            assert row.locator("td.machine").inner_text() == "builder1"
            assert row.locator("td.log a").get_attribute("href") == "view_log?name=builder"
            page.wait_for_function(
                "() => document.querySelector('tr[data-name=xl3]').classList.contains('warn')")
            assert page.locator("tr[data-name=xl3] td.status").inner_text() == XSS
            data = page.locator("tr[data-name=data]")
            assert "stale" in data.get_attribute("class")
            assert data.locator("td.status").inner_text() == "Not responding"
            # live: the data server starts posting; its row turns green by itself
            self.post("/heartbeat", name="data", status="ok")
            page.wait_for_function(
                "() => document.querySelector('tr[data-name=data]').classList.contains('ok')",
                timeout=6000)
            assert page.evaluate("window.__xss") is None
            assert page.locator("#status-table img").count() == 0
            assert page.evaluate("MinardStatus.humanize(3 * 3600)") == "3 hours"
            assert page.evaluate("MinardStatus.humanize(86400 * 2.2)") == "2 days"
            page.screenshot(path="/tmp/minard-page-status.png", full_page=True)

        errors = yield self.browse(script)
        self.assertEqual(errors, [])

    @defer.inlineCallbacks
    def test_alarms_page(self):
        def script(page, errors):
            self.post("/log", name="builder", level="40", message="old danger " + XSS)
            self.post("/log", name="xl3", level="30", message="a warning", notify="1")
            page.add_init_script(FAKE_AUDIO)
            page.goto(self.base + "alarms")
            page.wait_for_function("() => document.querySelectorAll('#alarms tr').length == 2")
            first = page.locator("#alarms tr").nth(0)
            assert first.locator("td.msg").inner_text() == "xl3 - a warning"  # newest first
            assert "level-row-warning" in first.get_attribute("class")
            second = page.locator("#alarms tr").nth(1)
            assert second.locator("td.msg").inner_text() == "builder - old danger " + XSS
            assert second.locator(".level").inner_text() == "DANGER"
            assert "level-row-danger" in second.get_attribute("class")
            # the danger alarm is recent and unacknowledged: it rings
            page.wait_for_function("() => window.__beeps > 0", timeout=6000)
            # live: a new alarm arrives at the top
            self.post("/log", name="data", level="40", message="crate 7 lost")
            page.wait_for_function("() => document.querySelectorAll('#alarms tr').length == 3",
                                   timeout=5000)
            assert page.locator("#alarms tr").nth(0).locator("td.msg").inner_text() == \
                "data - crate 7 lost"
            assert "unacknowledged" in page.locator("#alarm-count").inner_text()
            assert page.title().startswith("(2) ")
            # acknowledging needs a name: without one nothing is sent
            page.locator("#alarms tr").nth(0).locator("button.ack-button").click()
            assert "Type your name" in page.locator("#ack-state").inner_text()
            assert "invalid" in page.locator("#ack-name").get_attribute("class")
            assert page.locator("#alarms tr.acked").count() == 0
            # acknowledge both danger alarms as Ana: the sound stops
            page.fill("#ack-name", "Ana")
            page.locator("#alarms tr").nth(0).locator("button.ack-button").click()
            page.wait_for_function("() => document.querySelectorAll('#alarms tr.acked').length == 1")
            page.locator("#alarms tr").nth(2).locator("button.ack-button").click()
            page.wait_for_function("() => MinardAlarms.ringing().length == 0", timeout=5000)
            assert page.locator("#alarms tr").nth(2).locator("td.ack .ack-name").inner_text() \
                == "Ana"
            beeps = page.evaluate("window.__beeps")
            page.wait_for_timeout(3000)
            assert page.evaluate("window.__beeps") == beeps
            page.screenshot(path="/tmp/minard-page-alarms.png", full_page=True)
            # acknowledgements (the server's) and mute (this screen's) survive a reload
            page.locator("#mute").click()
            assert page.locator("#mute").get_attribute("aria-pressed") == "true"
            page.reload()
            page.wait_for_function("() => document.querySelectorAll('#alarms tr').length == 3")
            page.wait_for_function("() => document.querySelectorAll('#alarms tr.acked').length == 2")
            assert page.locator("#ack-name").input_value() == "Ana"  # remembered here
            assert page.locator("#mute").get_attribute("aria-pressed") == "true"
            # muted: a new danger alarm does not ring
            before = page.evaluate("window.__beeps")
            self.post("/log", name="data", level="40", message="crate 8 lost")
            page.wait_for_function("() => document.querySelectorAll('#alarms tr').length == 4")
            page.wait_for_timeout(3000)
            assert page.evaluate("window.__beeps") == before
            # a mute runs out (1 hour): the next shift hears the alarms again
            page.evaluate("localStorage.setItem('minard.alarms.muted-until', "
                          "JSON.stringify(Date.now() - 1))")
            page.reload()
            page.wait_for_function("() => document.querySelectorAll('#alarms tr').length == 4")
            assert page.locator("#mute").get_attribute("aria-pressed") == "false"
            page.wait_for_function("() => window.__beeps > 0", timeout=6000)
            assert page.evaluate("window.__xss") is None
            assert page.locator("#alarms img, #alarms script").count() == 0

        errors = yield self.browse(script)
        self.assertEqual(errors, [])

    @defer.inlineCallbacks
    def test_alarms_page_real_audio_has_no_errors(self):
        def script(page, errors):
            self.post("/log", name="builder", level="40", message="ring")
            page.goto(self.base + "alarms")
            page.wait_for_function("() => document.querySelectorAll('#alarms tr').length == 1")
            page.locator("h1").click()  # a user gesture lets the AudioContext run
            page.wait_for_timeout(3000)

        errors = yield self.browse(script)
        self.assertEqual(errors, [])

    @defer.inlineCallbacks
    def test_view_log_page(self):
        def script(page, errors):
            self.post("/log", name="builder", level="20", message="run 1234 started")
            self.post("/log", name="builder", level="40", message="two\nlines " + XSS)
            self.post("/log", name="builder", level="10", message="debug detail")
            page.goto(self.base + "view_log?name=builder")
            page.wait_for_function("() => document.querySelectorAll('#log-lines tr.line').length == 3")
            lines = page.locator("#log-lines tr.line")
            assert lines.nth(0).locator("td.msg").inner_text() == "debug detail"
            assert lines.nth(1).locator("td.msg").inner_text() == "two\nlines " + XSS
            assert lines.nth(1).locator(".level").inner_text() == "DANGER"
            assert page.locator("#log-lines tr.date-row").count() == 1
            # live
            self.post("/log", name="builder", level="30", message="newest")
            page.wait_for_function("() => document.querySelectorAll('#log-lines tr.line').length == 4",
                                   timeout=5000)
            assert lines.nth(0).locator("td.msg").inner_text() == "newest"
            # level filter
            page.locator("#level-filter input[value=DEBUG]").uncheck()
            assert page.locator("#log-lines tr.line:not([hidden])").count() == 3
            # the filter is in the URL: a reload shows the same lines
            assert "hide=DEBUG" in page.url, page.url
            page.reload()
            page.wait_for_function("() => document.querySelectorAll('#log-lines tr.line').length == 4")
            assert not page.locator("#level-filter input[value=DEBUG]").is_checked()
            assert page.locator("#log-lines tr.line:not([hidden])").count() == 3
            page.locator("#level-filter input[value=DEBUG]").check()
            assert "hide=" not in page.url, page.url
            # rotation: the file is renamed to .1 while the page follows it
            # (one rotation between two polls, as with 5 MB files: the next write rotates)
            size = os.path.getsize(os.path.join(self.log_dir, "builder.log"))
            self.logsite.log_files = RotatingLogFiles(self.log_dir, max_bytes=size, backups=3)
            for i in range(3):
                self.post("/log", name="builder", level="20", message="after rotation %d" % i)
            assert os.path.exists(os.path.join(self.log_dir, "builder.log.1"))
            assert not os.path.exists(os.path.join(self.log_dir, "builder.log.2"))
            page.wait_for_function(
                "() => document.querySelectorAll('#log-lines tr.line').length == 7", timeout=6000)
            shown = page.eval_on_selector_all(
                "#log-lines tr.line td.msg", "els => els.map(e => e.textContent)")
            assert shown[:4] == ["after rotation %d" % i for i in (2, 1, 0)] + ["newest"], shown
            assert len(set(shown)) == len(shown)  # nothing twice
            assert page.evaluate("window.__xss") is None
            assert page.locator("#log-lines img").count() == 0
            page.screenshot(path="/tmp/minard-page-view_log.png", full_page=True)
            assert page.evaluate("MinardLog.unescapeMessage('a\\\\\\\\b\\\\xe9\\\\u20ac\\\\n')") \
                == "a\\b\u00e9\u20ac\n"

        errors = yield self.browse(script)
        self.assertEqual(errors, [])
