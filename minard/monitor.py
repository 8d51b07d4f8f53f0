"""Client library of the logging server (SPEC §5.2): heartbeats and log records from any
Twisted program, over HTTP or HTTPS with certificate and hostname verification.

    from minard.monitor import Poster, HeartbeatService, LogForwarder
    poster = Poster("https://minard.example:8081", ("snoplus", password), cafile="ca.pem")
    HeartbeatService(poster=poster, name="builder", status=lambda: "ok").setServiceParent(app)
    LogForwarder(poster, "builder", level=30).setServiceParent(app)

Nothing here blocks the program: every post is asynchronous, a failed post is retried
with exponential backoff, forwarded log records wait in a bounded queue (what does not
fit is counted and reported when the server is back) and are sent in order. Every post
carries an id (form field `id`), the same in each of its retries, so that the server
stores a retried post once although an earlier try may have been half stored (its line
written, its alarm not: the server answered 503 or 507, or the answer was lost).

minard processes get both from their INI file's `[monitor]` section (`from_config`);
shell scripts and C programs use the `minard-log` command (`main`).

What a minard process forwards is what its operator needs on /view_log: its warnings and
errors (`level`), and the INFO lines of minard's own code (links up and down, migration:
`own-level`), plus Twisted's "retry to connect" lines thinned to attempts 1, 2, 4, 8 ...
At most MONITOR_FORWARD_BURST records at once and MONITOR_FORWARD_RATE a second are
forwarded: a storm is counted, and reported in one WARNING record, not posted line by line
(the process's own log file keeps every line).
"""
import base64
import collections
import json
import os
import re
import sys
import uuid
from urllib.parse import urlsplit

from twisted.application.service import MultiService, Service
from twisted.internet import defer, error, ssl, threads
from twisted.logger import (ILogObserver, LogLevel, Logger, formatEvent,
                            globalLogPublisher)
from twisted.python import threadable
from zope.interface import implementer

from minard import constants as C

#: Forwarded records of this namespace are never forwarded (no feedback loop).
NAMESPACE = "minard.monitor"
log = Logger(namespace=NAMESPACE)
#: Events of these namespaces are forwarded from `own_level` (INFO) up: minard's own code
#: logs at INFO only what an operator wants to see (a link up or down).
OWN_NAMESPACES = ("minard.",)
#: Twisted's ClientService: "Scheduling retry {attempt} to connect {endpoint} in {delay}
#: seconds." at INFO, once per failed attempt; forwarded for attempts 1, 2, 4, 8 ...
RETRY_NAMESPACE = "twisted.application._client_service"
ENDPOINT = re.compile(r"^<\w*Endpoint ([^>]+)>$")

TWISTED_LEVELS = {LogLevel.debug: 10, LogLevel.info: 20, LogLevel.warn: 30,
                  LogLevel.error: 40, LogLevel.critical: 50}
LEVEL_NAMES = {"DEBUG": 10, "INFO": 20, "SUCCESS": 21, "WARNING": 30, "WARN": 30,
               "ERROR": 40, "DANGER": 40, "CRITICAL": 50}
#: An answer with one of these codes will never succeed: drop the record.
PERMANENT_ERRORS = (400, 401, 403, 404, 405, 413, 431)


def new_post_id():
    """A fresh post id: a retry of the post sends the same one."""
    return uuid.uuid4().hex


class MonitorError(Exception):
    """A post that failed; `permanent` when retrying cannot help."""

    def __init__(self, text, permanent=False):
        super().__init__(text)
        self.permanent = permanent


class ConfigError(ValueError):
    """A bad [monitor] setting or minard-log argument; str() is the one-line reason."""


def load_trust_root(cafile):
    """The certificates of a PEM file as a Twisted trust root."""
    try:
        with open(cafile, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError("cafile: cannot read %s: %s" % (cafile, e.strerror or e))
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                        data, re.S)
    if not blocks:
        raise ConfigError("cafile: no PEM certificate in %s" % (cafile,))
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ConfigError("cafile: bad certificate in %s: %s" % (cafile, e))
    return ssl.trustRootFromCertificates(certificates)


def check_url(url):
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("url must be http://host:port or https://host:port, not %r"
                          % (url,))
    try:
        parts.port
    except ValueError:
        raise ConfigError("url has a bad port: %r" % (url,))
    return url.rstrip("/")


class Poster:
    """Posts forms to the logging server; one persistent connection pool.

    reactor: does the network; clock: times out requests (defaults to reactor).
    """

    def __init__(self, base_url, credentials=None, trust_root=None, cafile=None,
                 reactor=None, clock=None, timeout=C.MONITOR_TIMEOUT):
        import treq.client
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

        if reactor is None:
            from twisted.internet import reactor
        self.base_url = check_url(base_url)
        if trust_root is None and cafile:
            trust_root = load_trust_root(cafile)
        self.reactor = reactor
        self.clock = clock or reactor
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 2
        self.pool.retryAutomatically = False
        # drop an idle connection before the server's request deadline closes it under
        # the next request
        self.pool.cachedConnectionTimeout = C.MONITOR_IDLE_CONNECTION
        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trust_root),
                      pool=self.pool, connectTimeout=timeout)
        self.client = treq.client.HTTPClient(agent)
        self.headers = {b"content-type": [b"application/x-www-form-urlencoded"]}
        if credentials is not None:
            user, password = credentials
            token = base64.b64encode(("%s:%s" % (user, password)).encode("utf-8"))
            self.headers[b"authorization"] = [b"Basic " + token]

    @defer.inlineCallbacks
    def post(self, path, fields):
        """POST the form; fires None on 200, fails with MonitorError otherwise."""
        from urllib.parse import urlencode

        body = urlencode(fields).encode("ascii")
        try:
            response = yield self.client.post(
                self.base_url + path, data=body, headers=self.headers,
                reactor=self.clock, timeout=self.timeout)
            text = yield response.text("utf-8")
        except defer.CancelledError:
            raise MonitorError("no answer within %g s" % (self.timeout,))
        except Exception as e:  # connection refused, TLS failure, DNS ...
            raise MonitorError(describe_failure(e))
        if response.code != 200:
            reason = text.strip()
            try:
                reason = json.loads(reason)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise MonitorError("HTTP %d: %s" % (response.code, reason[:200]),
                               permanent=response.code in PERMANENT_ERRORS)

    def close(self):
        return self.pool.closeCachedConnections()


def describe_failure(e):
    """A one-line description of a connection failure (TLS errors included)."""
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused"
    reasons = getattr(e, "reasons", None)  # ResponseNeverReceived, RequestGenerationFailed
    if reasons:
        return "; ".join(describe_failure(r.value) for r in reasons)
    text = str(e) or e.__class__.__name__
    return text.splitlines()[0][:300]


class Backoff:
    """Delays after consecutive failures: first, 2 x first, ... up to maximum."""

    def __init__(self, first=1.0, maximum=C.MONITOR_MAX_BACKOFF):
        self.first = first
        self.maximum = maximum
        self.failures = 0

    def next(self):
        self.failures += 1
        return min(self.maximum, self.first * 2 ** (self.failures - 1))

    def reset(self):
        self.failures = 0


class HeartbeatService(Service):
    """Posts `name` and `status()` to /heartbeat every `interval` seconds.

    Never more than one post in flight; after a failure the next try waits longer
    (up to MONITOR_MAX_BACKOFF); the server's being down or back is logged once.
    """

    def __init__(self, base_url=None, name=None, credentials=None, interval=C.HEARTBEAT_INTERVAL,
                 status=None, trust_root=None, reactor=None, clock=None, poster=None):
        self._owns_poster = poster is None
        if poster is None:
            poster = Poster(base_url, credentials, trust_root=trust_root, reactor=reactor,
                            clock=clock)
        self.poster = poster
        self.name = name
        self.interval = interval
        self.status = status or (lambda: "ok")
        self.clock = clock or poster.clock
        self.backoff = Backoff(first=min(1.0, interval), maximum=max(interval,
                                                                     C.MONITOR_MAX_BACKOFF))
        self.posted = 0
        self.failed = 0
        self.up = None  # unknown until the first answer
        self._call = None
        self._inflight = None

    def startService(self):
        super().startService()
        self._schedule(0)

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._inflight is not None:
            self._inflight.cancel()
        if self._owns_poster:
            return self.poster.close()

    def _schedule(self, delay):
        if self.running:
            self._call = self.clock.callLater(delay, self.beat)

    def _status_text(self):
        try:
            text = self.status()
        except Exception as e:
            return "status unknown (%s)" % (e.__class__.__name__,)
        return text if isinstance(text, str) else str(text)

    def beat(self):
        """Post one heartbeat now (the next one is scheduled when it is answered)."""
        self._call = None
        if self._inflight is not None:
            return
        d = self.poster.post("/heartbeat", {"name": self.name, "status": self._status_text(),
                                            "id": new_post_id()})
        self._inflight = d
        d.addCallbacks(self._posted, self._failed)
        d.addBoth(self._done)

    def _posted(self, _):
        self.posted += 1
        self.backoff.reset()
        if self.up is False:
            log.info("log server reachable again: heartbeats of {name} resumed",
                     name=self.name)
        self.up = True
        return self.interval

    def _failed(self, failure):
        if failure.check(defer.CancelledError) or not self.running:
            return None
        self.failed += 1
        reason = failure.value
        if self.up is not False:
            log.warn("heartbeat of {name} not posted ({reason}); retrying with backoff",
                     name=self.name, reason=str(reason))
        self.up = False
        return self.backoff.next()

    def _done(self, delay):
        self._inflight = None
        if delay is not None:
            self._schedule(delay)


class LogSender:
    """Sends log records to /log in order, one at a time, from a bounded queue.

    A record that fails for a transient reason (no connection, 5xx such as 503 or a full
    disk's 507, 429) is retried with backoff, always with the record's own post id, so
    the server writes its line and raises its alarm once however many tries it takes;
    one refused for good (400, 401, 413, 431) is dropped and counted. `max_attempts`
    (None = forever) bounds the tries of one record. What does not fit in the queue is
    counted in `dropped` and reported with a WARNING record once the server is back.
    """

    def __init__(self, poster, name, max_queue=C.MONITOR_QUEUE, max_attempts=None, clock=None):
        self.poster = poster
        self.name = name
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.clock = clock or poster.clock
        self.queue = collections.deque()
        self.backoff = Backoff()
        self.sent = 0
        self.dropped = 0  # did not fit in the queue
        self.refused = 0  # answered with a permanent error
        self.given_up = 0  # max_attempts reached
        self.last_error = None  # why the last failed post failed
        self._unreported = 0
        self._attempts = 0
        self._sending = None
        self._retry = None
        self._drained = []
        self.up = None
        self.stopped = False

    def send(self, level, message, notify=False):
        """Queue one record (never blocks, never raises)."""
        if self.stopped:
            return False
        if len(self.queue) >= self.max_queue:
            self.dropped += 1
            self._unreported += 1
            return False
        self.queue.append((int(level), message, bool(notify), new_post_id()))
        self._pump()
        return True

    def _pump(self):
        if self._sending is not None or self._retry is not None:
            return
        if not self.queue:
            self._fire_drained()
            return
        level, message, notify, post_id = self.queue[0]
        fields = {"name": self.name, "level": str(level), "message": message, "id": post_id}
        if notify:
            fields["notify"] = "1"
        d = self.poster.post("/log", fields)
        self._sending = d
        d.addCallbacks(self._sent, self._failed)

    def _sent(self, _):
        self._sending = None
        self.queue.popleft()
        self.sent += 1
        self._attempts = 0
        self.backoff.reset()
        if self.up is False:
            log.info("log server reachable again: sending {n} queued records of {name}",
                     n=len(self.queue), name=self.name)
        self.up = True
        if self._unreported and len(self.queue) < self.max_queue:
            self.queue.append((30, "%d log records were dropped while the log server was "
                               "unreachable (queue of %d full)" % (self._unreported,
                                                                   self.max_queue), False,
                               new_post_id()))
            self._unreported = 0
        self._pump()

    def _failed(self, failure):
        self._sending = None
        if failure.check(defer.CancelledError) or self.stopped:
            return
        self._attempts += 1
        self.last_error = str(failure.value)
        permanent = failure.check(MonitorError) and failure.value.permanent
        if permanent or (self.max_attempts and self._attempts >= self.max_attempts):
            self.queue.popleft()
            self._attempts = 0
            if permanent:
                self.refused += 1
            else:
                self.given_up += 1
            log.warn("log record of {name} dropped: {reason}", name=self.name,
                     reason=str(failure.value))
            self._pump()
            return
        if self.up is not False:
            log.warn("log records of {name} not sent ({reason}); {n} queued, retrying",
                     name=self.name, reason=str(failure.value), n=len(self.queue))
        self.up = False
        self._retry = self.clock.callLater(self.backoff.next(), self._retry_now)

    def _retry_now(self):
        self._retry = None
        self._pump()

    def retry_now(self):
        """Skip the backoff wait (e.g. when the server is known to be back)."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
            self._retry_now()

    def drained(self):
        """A Deferred that fires when the queue is empty."""
        if not self.queue and self._sending is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drained.append(d)
        return d

    def _fire_drained(self):
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    def stop(self):
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._sending is not None:
            self._sending.cancel()
        self._fire_drained()


class ForwardBudget:
    """A token bucket: `burst` records at once, then `rate` a second."""

    def __init__(self, clock, rate=C.MONITOR_FORWARD_RATE, burst=C.MONITOR_FORWARD_BURST):
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = self.burst
        self.last = None

    def _refill(self):
        now = self.clock.seconds()
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def take(self):
        self._refill()
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def wait(self):
        """Seconds until a token is there."""
        self._refill()
        return max(0.0, (1.0 - self.tokens) / self.rate)


def event_level(event):
    level = event.get("log_level")
    if level is None:
        return 40 if event.get("isError") else 20
    return TWISTED_LEVELS.get(level, 20)


def event_text(event):
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            text = "%s\n%s" % (text, failure.getTraceback())
        except Exception:
            pass
    return text


def retry_text(event):
    """ClientService's retry line, readable: None for an attempt that is not 1, 2, 4 ..."""
    attempt = event.get("attempt")
    if not isinstance(attempt, int) or attempt < 1 or attempt & (attempt - 1):
        return None
    delay = event.get("delay")
    delay = "%.1f s" % delay if isinstance(delay, (int, float)) else "a while"
    endpoint = str(event.get("endpoint"))
    shown = ENDPOINT.match(endpoint)  # <HostnameEndpoint 127.0.0.1:5553> -> 127.0.0.1:5553
    return "cannot connect to %s (attempt %d failed); next try in %s" % (
        shown.group(1) if shown else endpoint, attempt, delay)


@implementer(ILogObserver)
class LogForwarder(Service):
    """A twisted.logger observer (added to the global publisher while running) that
    forwards events at or above `level` (numeric, 30 = warnings), and those of minard's
    own namespaces at or above `own_level` (20 = INFO), to the log server; at most
    `burst` at once and `rate` a second (the module docstring).

    sender: what takes the records (`send(level, message)`), by default a LogSender of
    `poster` (the log server itself passes one that writes its own log file)."""

    def __init__(self, poster, name, level=30, max_queue=C.MONITOR_QUEUE, publisher=None,
                 clock=None, drain_timeout=2.0, own_level=20, sender=None,
                 rate=C.MONITOR_FORWARD_RATE, burst=C.MONITOR_FORWARD_BURST):
        self.sender = sender or LogSender(poster, name, max_queue=max_queue, clock=clock)
        self.program = name  # (not `name`: a Service's name must be unique in its parent)
        self.level = level
        self.own_level = max(own_level, 0) if own_level is not None else level
        self.publisher = publisher if publisher is not None else globalLogPublisher
        self.drain_timeout = drain_timeout
        self.clock = clock or getattr(self.sender, "clock", None)
        if self.clock is None:
            from twisted.internet import reactor as clock_default
            self.clock = clock_default
        self.budget = ForwardBudget(self.clock, rate, burst)
        self.suppressed = 0  # records over the budget not yet reported
        self.suppressed_total = 0
        self._report = None

    def wanted(self, event):
        """(level, text) of an event to forward, or None."""
        namespace = str(event.get("log_namespace", ""))
        if namespace.startswith(NAMESPACE):
            return None
        level = event_level(event)
        if namespace.startswith(RETRY_NAMESPACE) and level < self.level:
            text = retry_text(event) if level >= self.own_level else None
            return None if text is None else (level, text)
        threshold = self.own_level if namespace.startswith(OWN_NAMESPACES) else self.level
        if level < min(threshold, self.level):
            return None
        try:
            return level, event_text(event)
        except Exception:
            return level, repr(event.get("log_format"))

    def __call__(self, event):
        record = self.wanted(event)
        if record is None:
            return
        if threadable.isInIOThread():
            self._forward(*record)
        else:
            from twisted.internet import reactor

            reactor.callFromThread(self._forward, *record)

    def _forward(self, level, text):
        if not self.running:
            return
        if self.suppressed:
            self._report_due()  # the report of what was left out goes first
        if not self.budget.take():
            self.suppressed += 1
            self.suppressed_total += 1
            self._schedule_report()
            return
        self.sender.send(level, text)

    def _report_due(self):
        """Send the report of suppressed records if the budget allows; True if sent."""
        if not self.suppressed or not self.budget.take():
            return False
        n, self.suppressed = self.suppressed, 0
        self.sender.send(30, "%d log record%s of %s not forwarded (more than %d at once or "
                         "%g a minute); the process's own log file has them"
                         % (n, "s" if n != 1 else "", self.program, self.budget.burst,
                            self.budget.rate * 60))
        return True

    def _schedule_report(self):
        if self._report is None or not self._report.active():
            self._report = self.clock.callLater(self.budget.wait() + 0.01, self._reported)

    def _reported(self):
        self._report = None
        if self.running and self.suppressed and not self._report_due():
            self._schedule_report()

    def startService(self):
        super().startService()
        if hasattr(self.sender, "stopped"):
            self.sender.stopped = False
        self.publisher.addObserver(self)

    def stopService(self):
        """Stop observing; give queued records up to drain_timeout seconds to leave."""
        super().stopService()
        self.publisher.removeObserver(self)
        if self._report is not None and self._report.active():
            self._report.cancel()
        self._report = None
        drained = getattr(self.sender, "drained", None)
        if drained is None:
            return defer.succeed(None)
        d = drained()
        timer = self.sender.clock.callLater(self.drain_timeout, d.cancel)

        def finish(result):
            if timer.active():
                timer.cancel()
            self.sender.stop()

        return d.addBoth(finish)


class MonitorService(MultiService):
    """Heartbeat and log forwarding sharing one Poster, whose connections it closes."""

    def __init__(self, poster):
        super().__init__()
        self.poster = poster

    @defer.inlineCallbacks
    def stopService(self):
        yield super().stopService()
        yield self.poster.close()


# -- configuration ------------------------------------------------------------------------

MONITOR_KEYS = {"url", "user", "password", "password-file", "cafile", "interval", "level",
                "own-level"}


def read_password_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("password-file: cannot read %s: %s" % (path, e))


def parse_level(text):
    text = str(text).strip()
    if text.upper() in LEVEL_NAMES:
        return LEVEL_NAMES[text.upper()]
    try:
        return int(text)
    except ValueError:
        raise ConfigError("level must be a number or one of %s, not %r"
                          % (", ".join(LEVEL_NAMES), text))


def from_config(section, name, status_fn, reactor=None):
    """HeartbeatService + LogForwarder from a `[monitor]` INI section, or None when it has
    no url. Keys: url, user, password or password-file, cafile, interval (s, default 5),
    level (forward log events at or above it; default WARNING; `off` forwards nothing),
    own-level (minard's own INFO lines: links up and down; default INFO; `off`: only
    `level`). A bad value raises minard.tap.OptionError (a one-line usage error)."""
    from minard.tap import OptionError

    try:
        return _from_config(section, name, status_fn, reactor)
    except ConfigError as e:
        raise OptionError("[monitor] %s" % (e,))


def poster_from_config(section, reactor=None):
    """(Poster, heartbeat interval) of a `[monitor]` section, or (None, None) without url;
    ConfigError for a bad value. (The simulator's stand-in heartbeats use it too.)"""
    unknown = set(section) - MONITOR_KEYS
    if unknown:
        raise ConfigError("unknown key %r (known: %s)" % (sorted(unknown)[0],
                                                          ", ".join(sorted(MONITOR_KEYS))))
    url = (section.get("url") or "").strip()
    if not url:
        return None, None
    check_url(url)
    credentials = None
    user = (section.get("user") or "").strip()
    if user:
        if "password-file" in section:
            password = read_password_file(section["password-file"])
        elif "password" in section:
            password = section["password"]
        else:
            raise ConfigError("user %r needs password or password-file" % (user,))
        credentials = (user, password)
    try:
        interval = float(section.get("interval", C.HEARTBEAT_INTERVAL))
    except ValueError:
        raise ConfigError("interval must be a number of seconds")
    if not 0.1 <= interval <= 3600:
        raise ConfigError("interval must be between 0.1 and 3600 s")
    poster = Poster(url, credentials, cafile=section.get("cafile") or None, reactor=reactor)
    return poster, interval


def _from_config(section, name, status_fn, reactor):
    level_text = str(section.get("level", "WARNING")).strip().lower()
    own_text = str(section.get("own-level", "INFO")).strip().lower()
    level = None if level_text in ("off", "none", "") else parse_level(level_text)
    own_level = None if own_text in ("off", "none", "") else parse_level(own_text)
    poster, interval = poster_from_config(section, reactor)
    if poster is None:
        return None
    service = MonitorService(poster)
    HeartbeatService(name=name, interval=interval, status=status_fn,
                     poster=poster).setServiceParent(service)
    if level is not None:
        LogForwarder(poster, name, level=level, own_level=own_level).setServiceParent(service)
    return service


# -- minard-log ---------------------------------------------------------------------------

#: A stdin line `LEVEL - message` (as the original bin/monitor.py read them).
STDIN_LINE = re.compile(r"^\s*(ERROR|WARNING|WARN|INFO|SUCCESS|DEBUG|DANGER|CRITICAL)\s+-\s+(.*)$")


def parse_stdin_line(line, default_level):
    """(level, message, notify) of one stdin line; SUCCESS is sent as 21 with notify."""
    line = line.rstrip("\r\n")
    match = STDIN_LINE.match(line)
    if match is None:
        return default_level, line, False
    name, message = match.groups()
    level = LEVEL_NAMES[name]
    return level, message, name == "SUCCESS"


def _parser():
    from minard.auth import UsageParser

    p = UsageParser(
        prog="minard-log",
        description="Post a log line (or stdin lines 'LEVEL - message') to the minard "
                    "logging server.")
    p.add_argument("--url", required=True, help="http(s)://host:port of the log server")
    p.add_argument("--name", required=True, help="program name (as in programs.ini)")
    p.add_argument("--user", help="user of the log server")
    p.add_argument("--password-file", help="file whose first line is the password "
                   "(or set MINARD_LOG_PASSWORD)")
    p.add_argument("--cafile", help="PEM CA certificate(s) to verify an https server")
    p.add_argument("--level", default="20", help="level (number or name; default 20 INFO)")
    p.add_argument("--notify", action="store_true", help="also raise an alarm")
    p.add_argument("--heartbeat", metavar="STATUS",
                   help="post a heartbeat with this status instead of a log line")
    p.add_argument("--retries", type=int, default=10,
                   help="tries per record before giving up (default 10)")
    p.add_argument("message", nargs="*", help="the message; none: read stdin lines")
    return p


def main(argv=None):
    from twisted.internet import task

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        level = parse_level(args.level)
        check_url(args.url)
        credentials = None
        if args.user:
            if args.password_file:
                password = read_password_file(args.password_file)
            elif "MINARD_LOG_PASSWORD" in os.environ:
                password = os.environ["MINARD_LOG_PASSWORD"]
            else:
                raise ConfigError("--user needs --password-file or MINARD_LOG_PASSWORD")
            credentials = (args.user, password)
        if args.retries < 1:
            raise ConfigError("--retries must be at least 1")
        trust_root = load_trust_root(args.cafile) if args.cafile else None
    except ConfigError as e:
        parser.error(str(e))

    def run(reactor):
        poster = Poster(args.url, credentials, trust_root=trust_root, reactor=reactor)
        d = _run(reactor, poster, args, level)
        return d.addBoth(lambda r: poster.close().addBoth(lambda _: r))

    task.react(run)  # never returns: exit code 0, or 1 when a record was not posted


@defer.inlineCallbacks
def _run(reactor, poster, args, level):
    if args.heartbeat is not None:
        fields = {"name": args.name, "status": args.heartbeat, "id": new_post_id()}
        for attempt in range(args.retries):
            try:
                yield poster.post("/heartbeat", fields)
                return 0
            except MonitorError as e:
                if e.permanent or attempt == args.retries - 1:
                    sys.stderr.write("minard-log: heartbeat not posted: %s\n" % (e,))
                    raise SystemExit(1)
                yield _sleep(reactor, 1.0)
    sender = LogSender(poster, args.name, max_queue=100000, max_attempts=args.retries)
    sender.backoff = Backoff(first=1.0, maximum=1.0)  # like the original: 1 s between tries
    if args.message:
        sender.send(level, " ".join(args.message), args.notify)
    else:
        yield _read_stdin(reactor, sender, level, args.notify)
    yield sender.drained()
    failed = sender.refused + sender.given_up + sender.dropped
    if failed:
        sys.stderr.write("minard-log: %d of %d records not posted (last answer: %s)\n"
                         % (failed, failed + sender.sent, sender.last_error))
        raise SystemExit(1)
    return 0


def _sleep(reactor, seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


def _read_stdin(reactor, sender, level, notify):
    """Read stdin lines in a thread (stdin may be a pipe, a file or a terminal) and queue
    each one in the reactor thread as it arrives."""

    def read_all():
        for line in sys.stdin:
            if not line.strip():
                continue
            lvl, message, note = parse_stdin_line(line, level)
            reactor.callFromThread(sender.send, lvl, message, note or notify)

    return threads.deferToThread(read_all)


if __name__ == "__main__":
    main()
