"""The main web site (SPEC §5.1, §6): the shifter's pages and their JSON API, on Klein.

`Site(redis, programs, log_dir)` holds its state on the instance; `Site.app` is the Klein
router and `site.resource()` the twisted.web resource to serve. Every answer carries the
security headers below; pages use no inline script or style, so the Content-Security-
Policy `default-src 'self'` holds. Every URL a page uses is relative, so the site also
works behind nginx under `/monitoring/`.

Errors a client can cause are JSON `{"error": reason}` with 400 (bad input) or 404
(unknown name); Redis being away is a 503; nothing a client sends gives a 500.

Hostile or greedy clients (SPEC §7) are bounded where they cost: `WebFactory` caps the
open connections of each peer address; the site caps the /stream clients and the
expensive requests (`ExpensiveRequests`) of each client address — behind nginx, the
X-Real-IP it sets, trusted from loopback peers only — and runs at most a few expensive
requests at once, so that cheap ones never wait behind them. Loopback clients (nginx
itself, local tools, ssh tunnels) are not capped per address and keep a share of every
total for themselves (`AddressLimit`). A /metric request's cost (expressions × points) is
bounded too (400, saying the limit).
"""
import collections
import functools
import ipaddress
import json
import os
import re

import jinja2
import txredisapi
from klein import Klein
from twisted.internet import defer, protocol, task
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource
from twisted.web.static import File
from werkzeug.exceptions import MethodNotAllowed, NotFound as RouteNotFound

from minard import constants as C
from minard.store import acks as alarm_acks
from minard.store import keys
from minard.store.runs import RUNS_PER_ANSWER, HistoryReads
from minard.store.reads import HASH_NAMES, METHODS, Reads, parse_expressions
from minard.web import acks as ack_checks
from minard.web import health as channel_health
from minard.web import metrics as prometheus
from minard.web.logsite import address_key, client_address
from minard.web.stream import StreamHub, HubStopped, staleness
from minard.web.timeparse import (BadRequest, NotFound, check_metric_cost, parse_int,
                                  parse_window)

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "templates")
STATIC = os.path.join(os.path.dirname(HERE), "static")

SECURITY_HEADERS = {
    b"Content-Security-Policy": b"default-src 'self'; base-uri 'self'; form-action 'self'; "
                                b"frame-ancestors 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"same-origin",
    b"X-Frame-Options": b"DENY",
}

#: The navigation bar: (relative URL, label).
NAV = (
    ("snostream", "Stream"), ("nhit", "NHit"), ("detector", "Detector"), ("daq", "DAQ"),
    ("health", "Health"), ("runs", "Runs"), ("l2", "L2"), ("nearline", "Nearline"), ("status", "Status"), ("alarms", "Alarms"),
)

NEARLINE_CODES = {"0": ("Success", "ok"), "1": ("Failed", "bad"), "99": ("In progress", "warn")}

REDIS_ERRORS = (txredisapi.ConnectionError, txredisapi.TimeoutError, ConnectionDone,
                ConnectionLost, TimeoutError)


#: Seconds a refused client is asked to wait (Retry-After).
RETRY_AFTER = 5


class Refused(Exception):
    """Not now: 429 (this address holds its share) or 503 (everyone's share is taken)."""

    def __init__(self, code, reason):
        Exception.__init__(self, reason)
        self.code = code


def is_loopback(host):
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


class AddressLimit:
    """How many of something (connections, streams, expensive requests) each client
    address holds, against a total and a per-address cap.

    A non-loopback address may hold `per_address` at most (an IPv6 one counts with its
    /64: one machine has many addresses in it), and all of them together
    `total - loopback_reserve`: one client (or many) cannot take the last slots from the
    loopback clients (nginx in front, local tools, ssh tunnels), which are not capped per
    address but only by `total`."""

    def __init__(self, total, per_address, loopback_reserve, what, loopback=is_loopback):
        self.total = total
        self.per_address = per_address
        self.loopback_reserve = loopback_reserve
        self.what = what
        self.loopback = loopback
        self.counts = {}
        self.held = 0

    def key(self, address):
        """What `address` counts as (itself, or its IPv6 /64)."""
        return address if self.loopback(address) else address_key(address) or address

    def acquire(self, address):
        """Count one more for `address`, or raise Refused."""
        if self.loopback(address):
            if self.held >= self.total:
                raise Refused(503, "too many %s (at most %d); try again later"
                              % (self.what, self.total))
        else:
            address = self.key(address)
            if self.counts.get(address, 0) >= self.per_address:
                raise Refused(429, "too many %s from your address (at most %d)"
                              % (self.what, self.per_address))
            if self.held >= self.total - self.loopback_reserve:
                raise Refused(503, "too many %s (at most %d); try again later"
                              % (self.what, self.total - self.loopback_reserve))
        self.counts[address] = self.counts.get(address, 0) + 1
        self.held += 1

    def release(self, address):
        address = self.key(address)
        n = self.counts.get(address, 0)
        if n <= 0:
            return
        if n == 1:
            del self.counts[address]
        else:
            self.counts[address] = n - 1
        self.held -= 1


class FairSlots:
    """`n` slots handed out in turn to the client addresses that wait (round robin), each
    address's requests in their order: one client's queue of requests does not hold up
    everybody else's (a FIFO made a 60-point /metric wait 27 s behind another address's
    32 long /owl_tubes). acquire(address) -> Deferred (cancellable); release()."""

    def __init__(self, n):
        self.free = n
        self.waiting = collections.OrderedDict()  # address -> deque of Deferreds

    def acquire(self, address):
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return defer.succeed(None)
        d = defer.Deferred(lambda d: self._cancel(address, d))
        self.waiting.setdefault(address, collections.deque()).append(d)
        return d

    def _cancel(self, address, d):
        queue = self.waiting.get(address)
        if queue is not None and d in queue:
            queue.remove(d)
            if not queue:
                del self.waiting[address]

    def release(self):
        if not self.waiting:
            self.free += 1
            return
        address, queue = next(iter(self.waiting.items()))
        d = queue.popleft()
        if queue:
            self.waiting.move_to_end(address)  # the other addresses first
        else:
            del self.waiting[address]
        d.callback(None)


class ExpensiveRequests:
    """Requests whose cost grows with their parameters: admitted per client address
    (`admitted`, waiting and running together) and run `running` at a time, the waiting
    addresses taking turns (FairSlots).

    Cheap requests never come here, so they are never queued behind these; and Redis's
    queue holds the calls of at most `running` of them (each sends a few at a time), so a
    cheap request's command waits behind milliseconds of theirs. A client that goes away
    gives its place back (Klein cancels its Deferred)."""

    def __init__(self, running=C.EXPENSIVE_RUNNING, admitted=None, stats=None):
        self.slots = FairSlots(running)
        self.admitted = admitted or AddressLimit(
            C.EXPENSIVE_WAITING, C.EXPENSIVE_PER_ADDRESS, C.EXPENSIVE_LOOPBACK_RESERVE,
            "requests at once")
        self.stats = stats
        self.running = 0

    def _gauges(self):
        if self.stats is not None:
            self.stats.set("expensive_running", self.running)
            self.stats.set("expensive_waiting", self.admitted.held - self.running)

    @defer.inlineCallbacks
    def run(self, address, f, *args):
        """f(*args)'s result, once it is this request's turn."""
        self.admitted.acquire(address)
        self._gauges()
        try:
            yield self.slots.acquire(address)
            self.running += 1
            self._gauges()
            try:
                result = yield defer.maybeDeferred(f, *args)
            finally:
                self.running -= 1
                self.slots.release()
        finally:
            self.admitted.release(address)
            self._gauges()
        return result


class GuardedChannel(http.HTTPChannel):
    """An HTTP connection that gives its place back (WebFactory.connections) when it ends."""

    peer_host = None

    def connectionLost(self, reason):
        try:
            http.HTTPChannel.connectionLost(self, reason)
        finally:
            if self.peer_host is not None:
                self.factory.connections.release(self.peer_host)
                self.peer_host = None


class RefusedConnection(protocol.Protocol):
    """A connection over WebFactory's caps: aborted as soon as it is made (under TLS
    too, before any handshake), before it costs more than the accept."""

    def connectionMade(self):
        self.transport.abortConnection()


class WebFactory(server.Site):
    """twisted.web's Site with a cap on the open connections of each peer address (and
    of all non-loopback peers together); a connection beyond it is aborted at once.

    Behind nginx every peer is loopback: there the per-client caps are the site's (by
    X-Real-IP), and nginx's own."""

    protocol = GuardedChannel

    def __init__(self, resource, stats=None, connections=None, **kwargs):
        server.Site.__init__(self, resource, **kwargs)
        self.displayTracebacks = False
        self.stats = stats
        self.connections = connections or AddressLimit(
            C.WEB_MAX_CONNECTIONS, C.WEB_CONNECTIONS_PER_ADDRESS, C.WEB_LOOPBACK_RESERVE,
            "connections")

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if host is not None:  # (a UNIX socket's peers are local: not counted)
            try:
                self.connections.acquire(host)
            except Refused:
                if self.stats is not None:
                    self.stats.incr("connections_refused")
                return RefusedConnection()
        channel = server.Site.buildProtocol(self, addr)
        channel.peer_host = host
        return channel


def _dumps(value):
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def encode_metric(series, single):
    """Deferred: the /metric answer as JSON bytes, encoded a series at a time with the
    reactor free in between (100,000 numbers take ~0.2 s to encode in one go)."""
    parts = []

    def work():
        for name, values in series.items():
            parts.append(_dumps(values) if single else _dumps(name) + ":" + _dumps(values))
            yield None

    job = task.cooperate(work())
    d = defer.Deferred(lambda _: job.stop())
    job.whenDone().chainDeferred(d)
    d.addCallback(lambda _: ('{"values":%s}' % (
        parts[0] if single else "{" + ",".join(parts) + "}")).encode("utf-8"))
    return d


class StaticFiles(File):
    """The static directory, without directory listings at any depth (subdirectories are
    made with createSimilarFile, i.e. of this class, with the same childNotFound)."""

    def directoryListing(self):
        return self.childNotFound


def wants_html(request):
    """Whether the client asked for a page: its Accept header names text/html (a browser
    navigating). fetch(), curl and API clients (*/*, application/json) get JSON."""
    accept = (request.getHeader(b"accept") or b"").decode("latin-1").lower()
    return "text/html" in accept


class NotFoundPage(Resource):
    """The 404 of a path the site does not have (a missing static file included): the
    site's HTML page for a browser, {"error"} for everybody else (Site.error_answer)."""

    isLeaf = True

    def __init__(self, site):
        Resource.__init__(self)
        self.site = site

    def render(self, request):
        return self.site.error_answer(request, 404, "Not found", not_found_text(request))


def not_found_text(request):
    """"There is no page at <path>.", with the prefix nginx strips (X-Forwarded-Prefix,
    e.g. /monitoring) so that the path is the one in the browser's address bar."""
    prefix = (request.getHeader(b"x-forwarded-prefix") or b"").decode("latin-1")
    if not re.fullmatch(r"(/[A-Za-z0-9_.-]+){1,4}", prefix):
        prefix = ""
    return "There is no page at %s%s." % (prefix,
                                          request.path.decode("latin-1", "replace")[:200])


def secure(request):
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)


def arg(request, name):
    """The first value of a query parameter as text, or None."""
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("%s is not UTF-8" % (name,))


def root_of(request):
    """The relative way back to the site root from this page ("" or "../" ...)."""
    path = request.path.decode("latin-1")
    return "../" * max(0, path.count("/") - 1)


def refuse(request, refused):
    """Answer a Refused: its code, Retry-After, and {"error"}."""
    request.setResponseCode(refused.code)
    request.setHeader(b"Retry-After", b"%d" % RETRY_AFTER)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return _dumps({"error": str(refused)}).encode("utf-8")


def json_route(f):
    """A JSON answer: the result as JSON (or bytes already encoded), errors as {"error"}
    with 400/404/429/503."""
    @functools.wraps(f)
    @defer.inlineCallbacks
    def wrapper(self, request, *args, **kwargs):
        secure(request)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        self.stats.incr("requests")
        try:
            result = yield defer.maybeDeferred(f, self, request, *args, **kwargs)
        except BadRequest as e:
            self.stats.incr("bad_requests")
            request.setResponseCode(400)
            result = {"error": str(e)}
        except NotFound as e:
            request.setResponseCode(404)
            result = {"error": str(e)}
        except Refused as e:
            self.stats.incr("requests_refused")
            return refuse(request, e)
        except REDIS_ERRORS as e:
            self.stats.incr("redis_errors")
            request.setResponseCode(503)
            result = {"error": "Redis is unavailable (%s)" % (e.__class__.__name__,)}
        except defer.CancelledError:
            # The client went away while Redis answered (Klein cancels the request's
            # Deferred): nobody to answer, nothing wrong. Klein drops it silently.
            self.stats.incr("requests_cancelled")
            raise
        except Exception:
            self.stats.incr("internal_errors")
            self.log.failure("error answering {path}", path=request.path)
            request.setResponseCode(500)
            result = {"error": "internal error"}
        if isinstance(result, bytes):
            return result
        return _dumps(result).encode("utf-8")
    return wrapper


def page_route(f):
    """An HTML page: f returns (template, context)."""
    @functools.wraps(f)
    @defer.inlineCallbacks
    def wrapper(self, request, *args, **kwargs):
        secure(request)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        self.stats.incr("page_requests")
        try:
            template, context = yield defer.maybeDeferred(f, self, request, *args, **kwargs)
        except BadRequest as e:
            request.setResponseCode(400)
            template, context = "message.html", {"title": "Bad request", "message": str(e)}
        except NotFound as e:
            request.setResponseCode(404)
            template, context = "message.html", {"title": "Not found", "message": str(e)}
        except defer.CancelledError:
            self.stats.incr("requests_cancelled")
            raise  # the client went away (see json_route)
        except REDIS_ERRORS as e:
            request.setResponseCode(503)
            template, context = "message.html", {
                "title": "Redis unavailable",
                "message": "The web server cannot read Redis (%s)." % e.__class__.__name__}
        return self.render(request, template, **context)
    return wrapper


class Site:
    """The main site. redis: a txredisapi connection; programs: {name: Program}."""

    app = Klein()
    log = Logger()

    def __init__(self, redis, programs, log_dir, clock=None, stats=None, wall=None,
                 replica=None, auth=None):
        if clock is None:
            from twisted.internet import reactor as clock
        if stats is None:
            from minard.stats import Stats
            stats = Stats("web")
        self.redis = redis  # the primary: writes
        # the pages' data: from a replica when there is one (--redis-replica)
        self.reads = Reads(replica if replica is not None else redis)
        # runs, run occupancy by type, clock jumps, nhit by type (issue 13)
        self.history = HistoryReads(replica if replica is not None else redis, self.reads)
        #: store.replica.ReplicaLag when reading from a replica (its state() goes to
        #: /stream), else None
        self.replica_lag = None
        self.programs = programs
        self.log_dir = log_dir
        self.clock = clock  # timers (monotonic in the role: minard/clock.py)
        self.wall = wall or clock.seconds  # the time of the data asked for
        self.stats = stats
        self.hub = StreamHub(self.reads, clock, stats=stats, wall=self.wall)
        self.streams = AddressLimit(C.STREAM_MAX_CLIENTS, C.STREAM_PER_ADDRESS,
                                    C.STREAM_LOOPBACK_RESERVE, "stream clients")
        self.expensive = ExpensiveRequests(stats=stats)
        # masking known-bad channels: users of `auth` (minard.auth.Authenticator) only
        self.masking = channel_health.Masking(auth, clock.seconds)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
            undefined=jinja2.StrictUndefined)
        self.static = StaticFiles(STATIC)
        self.static.childNotFound = NotFoundPage(self)
        self.static.contentTypes.update({
            ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
            ".svg": "image/svg+xml", ".json": "application/json"})

    def resource(self):
        return self.app.resource()

    def factory(self, **kwargs):
        """The HTTP server factory to listen with (WebFactory around resource())."""
        return WebFactory(self.resource(), stats=self.stats, **kwargs)

    def costly(self, request, f, *args):
        """f(*args) as an expensive request of this client (ExpensiveRequests)."""
        return self.expensive.run(client_address(request), f, *args)

    def now(self):
        return self.wall()

    def render(self, request, template, **context):
        context.setdefault("root", root_of(request))
        context.setdefault("page", "")
        context.setdefault("title", "SNO+")
        context.setdefault("nav", NAV)
        context.setdefault("ranges", C.TIME_RANGES)
        context.setdefault("installed_crates", " ".join(map(str, C.INSTALLED_CRATES)))
        return self.templates.get_template(template).render(**context).encode("utf-8")

    def known_program(self, request):
        name = arg(request, "name")
        if not name:
            raise BadRequest("missing name")
        if name not in self.programs:
            raise NotFound("unknown program %r" % (name,))
        return name

    # -- errors ---------------------------------------------------------------------------

    def error_answer(self, request, code, title, message):
        """An error of the site itself (no such path, method): the HTML message page for
        a browser (wants_html), JSON {"error": message} for an API client."""
        secure(request)
        request.setResponseCode(code)
        request.setHeader(b"Cache-Control", b"no-store")
        if wants_html(request):
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return self.render(request, "message.html", title=title, message=message)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return _dumps({"error": message}).encode("utf-8")

    @app.handle_errors(RouteNotFound)
    def not_found(self, request, failure):
        return self.error_answer(request, 404, "Not found", not_found_text(request))

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request, failure):
        return self.error_answer(request, 405, "Method not allowed",
                                 "%s is not allowed here." % (
                                     request.method.decode("latin-1", "replace")[:20],))

    # -- pages ----------------------------------------------------------------------------

    @app.route("/", methods=["GET", "HEAD"])
    def home(self, request):
        secure(request)
        request.setResponseCode(302)
        request.setHeader(b"Location", b"snostream")  # relative: works under /monitoring/
        return b""

    @app.route("/static/", branch=True, methods=["GET", "HEAD"])
    def static_files(self, request):
        secure(request)
        request.setHeader(b"Cache-Control", b"public, max-age=300")
        return self.static

    @app.route("/snostream", methods=["GET", "HEAD"])
    @page_route
    def snostream(self, request):
        return "snostream.html", {"page": "snostream", "title": "Stream",
                                  "triggers": C.TRIGGERS}

    @app.route("/nhit", methods=["GET", "HEAD"])
    @page_route
    def nhit_page(self, request):
        return "nhit.html", {"page": "nhit", "title": "NHit", "event_types": C.EVENT_TYPES}

    @app.route("/detector", methods=["GET", "HEAD"])
    @page_route
    def detector(self, request):
        return "detector.html", {"page": "detector", "title": "Detector"}

    @app.route("/daq", methods=["GET", "HEAD"])
    @page_route
    def daq(self, request):
        return "daq.html", {
            "page": "daq", "title": "DAQ", "daq_thresholds": _dumps(C.DAQ_THRESHOLDS),
            "units": {name: c["unit"] for name, c in C.DAQ_THRESHOLDS.items()}}

    @app.route("/graph", methods=["GET", "HEAD"])
    @page_route
    def graph(self, request):
        name = arg(request, "name")
        if not name:
            raise BadRequest("missing name (e.g. graph?name=TOTAL)")
        if len(parse_expressions(name)) != 1:  # a bad name is a 400 page, not a broken chart
            raise BadRequest("graph shows one series: name must be one expression, not a list")
        masked = name == "TOTAL" or name in C.TRIGGERS  # rates the pull workers write
        return "graph.html", {"page": "graph", "title": name, "name": name, "masked": masked}

    @app.route("/l2", methods=["GET", "HEAD"])
    @page_route
    def l2(self, request):
        return "l2.html", {"page": "l2", "title": "L2", "states": L2_TABLES}

    @app.route("/nearline", methods=["GET", "HEAD"])
    @app.route("/nearline/<run>", methods=["GET", "HEAD"])
    @page_route
    @defer.inlineCallbacks
    def nearline(self, request, run=None):
        if run is not None and not run.isdigit():
            raise BadRequest("run must be a number")
        run, jobs = yield self.reads.nearline(run)
        rows = []
        for program in sorted(jobs):
            text, css = NEARLINE_CODES.get(jobs[program], ("Unknown (%s)" % jobs[program], ""))
            rows.append({"program": program, "status": text, "css": css})
        return "nearline.html", {"page": "nearline", "title": "Nearline", "run": run,
                                 "rows": rows}

    @app.route("/status", methods=["GET", "HEAD"])
    @page_route
    def status(self, request):
        return "status.html", {"page": "status", "title": "Status",
                               "programs": list(self.programs.values()),
                               "level_names": C.LEVELS}

    @app.route("/alarms", methods=["GET", "HEAD"])
    @page_route
    def alarms_page(self, request):
        return "alarms.html", {"page": "alarms", "title": "Alarms",
                               "ack_name_max": C.ACK_NAME_MAX}

    @app.route("/runs", methods=["GET", "HEAD"])
    @page_route
    def runs_page(self, request):
        return "runs.html", {"page": "runs", "title": "Runs"}

    @app.route("/clock_jumps", methods=["GET", "HEAD"])
    @page_route
    def clock_jumps_page(self, request):
        return "clockjumps.html", {"page": "runs", "title": "Clock jumps"}

    @app.route("/view_log", methods=["GET", "HEAD"])
    @page_route
    def view_log(self, request):
        name = self.known_program(request)
        levels = [(level, label) for level, label in sorted(C.LEVELS.items())]
        return "view_log.html", {"page": "status", "title": "Log of %s" % name,
                                 "name": name, "levels": levels}

    # -- JSON API -------------------------------------------------------------------------

    def _window(self, request):
        return parse_window(arg(request, "start"), arg(request, "stop"), arg(request, "step"),
                            arg(request, "now"), self.now())

    @app.route("/metric", methods=["GET", "HEAD"])
    @json_route
    def metric(self, request):
        text = arg(request, "expr")
        expressions = parse_expressions(text)
        start, stop, step = self._window(request)
        check_metric_cost(len(expressions), len(range(start, stop, step)))
        single = len(expressions) == 1 and "," not in text
        return self.costly(request, self._metric_answer, expressions, start, stop, step,
                           single)

    @defer.inlineCallbacks
    def _metric_answer(self, expressions, start, stop, step, single):
        series = yield self.reads.metric(expressions, start, stop, step)
        body = yield encode_metric(series, single)
        return body

    def _hash_name(self, request):
        name = arg(request, "name")
        if name not in HASH_NAMES:
            raise BadRequest("name must be one of %s" % ", ".join(HASH_NAMES))
        return name

    def _method(self, request):
        method = arg(request, "method") or "avg"
        if method not in METHODS:
            raise BadRequest("method must be avg or max")
        return method

    @app.route("/metric_hash", methods=["GET", "HEAD"])
    @json_route
    @defer.inlineCallbacks
    def metric_hash(self, request):
        name = self._hash_name(request)
        start, stop, step = self._window(request)
        crate = parse_int(arg(request, "crate"), "crate", 0, C.N_CRATES - 1)
        card = arg(request, "card")
        channel = arg(request, "channel")
        card = None if not card else parse_int(card, "card", 0, C.N_CARDS - 1)
        channel = None if not channel else parse_int(channel, "channel", 0,
                                                     C.N_CHANNELS_PER_CARD - 1)
        if channel is not None and card is None:
            raise BadRequest("channel needs a card")
        method = self._method(request)
        values = yield self.costly(request, self.reads.hash_series, name, start, stop, step,
                                   crate, card, channel, method, self.now())
        return {"values": values}

    @app.route("/owl_tubes", methods=["GET", "HEAD"])
    @json_route
    @defer.inlineCallbacks
    def owl_tubes(self, request):
        name = self._hash_name(request)
        start, stop, step = self._window(request)
        values = yield self.costly(request, self.reads.owl_series, name, start, stop, step,
                                   self._method(request), self.now())
        return {"values": values}

    @app.route("/query", methods=["GET", "HEAD"])
    @json_route
    @defer.inlineCallbacks
    def query(self, request):
        name = arg(request, "name")
        now = self.now()
        if name == "dispatcher":
            value = yield self.reads.dispatcher()
            return {"name": value}
        if name == "nhit":
            seconds = parse_int(arg(request, "seconds"), "seconds", 1, C.NHIT_SAMPLES_TTL)
            values = yield self.costly(request, self._nhit_samples, seconds, now)
            return {"value": values}
        if name == "nhit_hist" and (arg(request, "trigger") not in (None, "", "TOTAL") or
                                    arg(request, "start") not in (None, "")):
            answer = yield self._nhit_hist_of(request, now)
            return answer
        if name == "nhit_hist":
            seconds = parse_int(arg(request, "seconds"), "seconds", 1, C.NHIT_HIST_MAX_SECONDS,
                                default=10)
            hist = yield self.costly(request, self.reads.nhit_hist, seconds, now)
            return hist
        if name in HASH_NAMES:
            step = parse_int(arg(request, "step"), "step", 1, 10 ** 9, default=60)
            answer = yield self.costly(request, self._latest_channels, name, step, now)
            return answer
        if not name:
            raise BadRequest("missing name")
        raise NotFound("unknown query %r (dispatcher, nhit, nhit_hist, occupancy, cmos, base)"
                       % (name,))

    # -- runs, run occupancy by type, clock jumps, nhit by type (issue 13) ---------------

    def _nhit_hist_of(self, request, now):
        """/query?name=nhit_hist&trigger=X[&seconds=N | &start=..&stop=..[&now=..]]: the
        exact nhit histogram of one event type (a trigger name, polling, NONE, or TOTAL:
        all events) over the last N s or a window (its complete buckets)."""
        trigger = arg(request, "trigger") or "TOTAL"
        if trigger != "TOTAL" and trigger not in C.EVENT_TYPES:
            raise NotFound("unknown trigger %r (%s, TOTAL)" % (trigger,
                                                             ", ".join(C.EVENT_TYPES)))
        if arg(request, "start") not in (None, ""):
            start, stop, _ = parse_window(arg(request, "start"), arg(request, "stop"), "1",
                                          arg(request, "now"), now, max_points=10 ** 10)
        else:
            seconds = parse_int(arg(request, "seconds"), "seconds", 1,
                                C.NHIT_HIST_MAX_SECONDS, default=10)
            interval = C.NHIT_HIST_INTERVAL if seconds <= 600 else 60
            stop = (int(now) // interval) * interval
            start = stop - -(-seconds // interval) * interval
        d = self.costly(request, self.history.nhit_hist, trigger, start, stop, now,
                        C.NHIT_RANGE_BUCKETS)
        d.addCallback(lambda out: dict(out, trigger=trigger))
        return d

    def _run_number(self, request, required=True):
        """The `run` parameter: a run number, or `current` (the newest run); None when
        absent and not required."""
        text = arg(request, "run")
        if text in (None, ""):
            if required:
                raise BadRequest("missing run (a run number or 'current')")
            return None
        if text == "current":
            return "current"
        return parse_int(text, "run", 0, 2 ** 32 - 1)

    @defer.inlineCallbacks
    def _resolve_run(self, run):
        if run == "current":
            run = yield self.history.current_run()
            if run is None:
                raise NotFound("no run yet")
        return run

    @app.route("/get_runs", methods=["GET", "HEAD"])
    @json_route
    def get_runs(self, request):
        """{"runs": [summary, ...] newest first, "current": run}: ?limit=N (default 100),
        ?before=RUN (older ones), or ?start=&stop= (the runs overlapping a window)."""
        limit = parse_int(arg(request, "limit"), "limit", 1, RUNS_PER_ANSWER, default=100)
        before = arg(request, "before")
        before = None if before in (None, "") else parse_int(before, "before", 0,
                                                               2 ** 32 - 1)
        start = stop = None
        if arg(request, "start") not in (None, "") or arg(request, "stop") not in (None, ""):
            start, stop, _ = parse_window(arg(request, "start"), arg(request, "stop"), "1",
                                          arg(request, "now"), self.now(),
                                          max_points=10 ** 10)
        return self.costly(request, self.history.runs, limit, start, stop, before)

    @app.route("/get_run", methods=["GET", "HEAD"])
    @json_route
    @defer.inlineCallbacks
    def get_run(self, request):
        """One run's summary (as in /get_runs), with `occupancy_types`: the event types of
        which /run_occupancy has a map for it. ?run=N or ?run=current."""
        run = yield self._resolve_run(self._run_number(request))
        summary = yield self.history.run(run)
        if summary is None:
            raise NotFound("no record of run %d" % (run,))
        summary["occupancy_types"] = yield self.history.run_occupancy_types(run)
        return summary

    @app.route("/run_occupancy", methods=["GET", "HEAD"])
    @json_route
    @defer.inlineCallbacks
    def run_occupancy(self, request):
        """The occupancy of every channel for one event type in one run: ?run=N (or
        current)&trigger=X (a trigger name, polling or NONE) -> {"run", "trigger",
        "events", "hits": [10240 hits], "values": [10240 hits / events, null for a
        channel without hits]}; 404 when no pull worker followed that type in that run."""
        run = yield self._resolve_run(self._run_number(request))
        trigger = arg(request, "trigger")
        if not trigger:
            raise BadRequest("missing trigger (%s)" % ", ".join(C.EVENT_TYPES))
        if trigger not in C.EVENT_TYPES:
            raise NotFound("unknown trigger %r (%s)" % (trigger, ", ".join(C.EVENT_TYPES)))
        out = yield self.costly(request, self.history.run_occupancy, run, trigger)
        if not out["partials"]:
            raise NotFound("no occupancy of %s events in run %d" % (trigger, run))
        out.update({"run": run, "trigger": trigger})
        return out

    @app.route("/get_clock_jumps", methods=["GET", "HEAD"])
    @json_route
    @defer.inlineCallbacks
    def get_clock_jumps(self, request):
        """{"jumps": [...]} newest first (?limit=N, default 100): time (unix s), gtid,
        previous_gtid, d10 and d50 (signed ticks of 100 ns and 20 ns), kind, run."""
        limit = parse_int(arg(request, "limit"), "limit", 1, C.CLOCK_JUMPS_KEPT, default=100)
        jumps = yield self.history.clock_jumps(limit)
        return {"jumps": jumps, "kept": C.CLOCK_JUMPS_KEPT}

    @defer.inlineCallbacks
    def _latest_channels(self, name, step, now):
        """/query?name=occupancy|cmos|base: the newest finalised bucket of the interval
        asked for (final true); when none is there yet (the first day of a 1-day window, a
        fresh start), the bucket being filled, summed from the workers' partials so far
        (final false, `stop` = now); without those, the newest finalised bucket of a finer
        interval (`interval` < `asked`). The best data there are, said as such, rather
        than an empty map."""
        interval, bucket, values = yield self.reads.latest_channels(name, step, now)
        if bucket is not None:
            return {"values": values, "interval": interval, "asked": interval,
                    "bucket": bucket, "start": bucket * interval,
                    "stop": (bucket + 1) * interval, "final": True}
        asked = interval
        bucket, values, _ = yield self.reads.open_channels(name, interval, now)
        if bucket is not None:
            return {"values": values, "interval": interval, "asked": asked, "bucket": bucket,
                    "start": bucket * interval,
                    "stop": min(int(now), (bucket + 1) * interval), "final": False}
        # no partial either (the workers' partials gone): the newest finer finalised bucket
        for finer in sorted((h for h in C.HASH_INTERVALS if h < asked), reverse=True):
            interval, bucket, values = yield self.reads.latest_channels(name, finer, now)
            if bucket is not None:
                return {"values": values, "interval": interval, "asked": asked,
                        "bucket": bucket, "start": bucket * interval,
                        "stop": (bucket + 1) * interval, "final": True}
        return {"values": values, "interval": asked, "asked": asked, "bucket": None,
                "start": None, "stop": None, "final": False}

    @defer.inlineCallbacks
    def _nhit_samples(self, seconds, now):
        """reads.nhit_samples, NHIT_SAMPLES_PER_CALL seconds at a time, newest first as
        one read gives them: 3600 s × 100 samples in one read held Redis ~0.1 s and the
        reactor ~0.4 s."""
        out = []
        for back in range(0, seconds, C.NHIT_SAMPLES_PER_CALL):
            part = yield self.reads.nhit_samples(min(C.NHIT_SAMPLES_PER_CALL, seconds - back),
                                                 now - back)
            out.extend(part)
        return out

    @app.route("/get_status", methods=["GET", "HEAD"])
    @json_route
    def get_status(self, request):
        return self.reads.status(self.known_program(request), self.now())

    @app.route("/get_alarm", methods=["GET", "HEAD"])
    @json_route
    def get_alarm(self, request):
        start = arg(request, "start")
        start = None if start in (None, "") else parse_int(start, "start", -10 ** 12, 10 ** 15)
        return self.reads.alarms(start=start)

    @app.route("/alarm_acks", methods=["GET", "HEAD"])
    @json_route
    def alarm_acks(self, request):
        """Who acknowledged which alarm, when (store/acks.py); `version` = the one the
        screen has: then just {"version"} while nothing changed."""
        version = arg(request, "version")
        version = None if version in (None, "") else parse_int(version, "version", 0, 2 ** 62)
        return alarm_acks.read_acks(self.redis, version)

    @app.route("/ack_alarm", methods=["POST"])
    @json_route
    @defer.inlineCallbacks
    def ack_alarm(self, request):
        """POST {"name", "ids"} (JSON, same-origin only: web/acks.py): acknowledge alarms
        for every screen. 400 with the reason for a bad name or id, or an id that is not
        an alarm (nothing is stored then); 403 cross-site; 413 too large."""
        try:
            ack_checks.check_same_origin(request)
            name, ids = ack_checks.parse_ack(request)
            answer = yield alarm_acks.acknowledge(self.redis, ids, name, self.now())
        except ack_checks.Refused as e:
            request.setResponseCode(e.code)
            return {"error": str(e)}
        except alarm_acks.MissingAlarms as e:
            raise BadRequest("%s (alarms are kept %d h): nothing acknowledged"
                             % (e, C.ALARM_TTL // 3600))
        self.stats.incr("alarm_acks")
        return answer

    @app.route("/health", methods=["GET", "HEAD"])
    @page_route
    def health_page(self, request):
        return "health.html", {"page": "health", "title": "Channel health",
                               "reason_max": channel_health.REASON_MAX}

    @app.route("/get_health", methods=["GET", "HEAD"])
    @json_route
    def get_health(self, request):
        """Channel health (web/health.py): open and recent closed findings, masks."""
        closed = parse_int(arg(request, "closed"), "closed", 0, channel_health.CLOSED_MAX,
                           default=channel_health.CLOSED_DEFAULT)
        return channel_health.health_answer(self.reads.redis, self.now(), closed,
                                            self.masking.enabled)

    @app.route("/mask_channel", methods=["POST"])
    @json_route
    @defer.inlineCallbacks
    def mask_channel(self, request):
        """POST {"action", "crate", "card", "channel", "reason"} (JSON, same origin, Basic
        credentials of a user of --auth-file: web/health.py): mask or unmask a channel.
        400 bad field, 401 credentials, 403 cross-site or masking off, 413, 429."""
        try:
            answer = yield self.masking.post(self.redis, request, self.now())
        except channel_health.Refused as e:
            request.setResponseCode(e.code)
            for name, value in e.headers.items():
                request.setHeader(name, value)
            return {"error": str(e)}
        self.stats.incr("channel_masks")
        self.log.info("channel health: {user} {action}ed crate {crate} card {card} channel "
                      "{channel}", user=answer["by"], action=answer["action"],
                      crate=answer["index"] >> 9, card=answer["index"] >> 5 & 15,
                      channel=answer["index"] & 31)
        return answer

    @app.route("/get_l2", methods=["GET", "HEAD"])
    @json_route
    def get_l2(self, request):
        name = arg(request, "name")
        if not name:
            raise BadRequest("missing name")
        if name not in C.L2_STATES:
            raise NotFound("unknown L2 state %r (%s)" % (name, ", ".join(C.L2_STATES)))
        return self.reads.l2_files(name)

    @app.route("/tail", methods=["GET", "HEAD"])
    @json_route
    def tail(self, request):
        name = self.known_program(request)
        seek = arg(request, "seek")
        seek = None if seek in (None, "") else parse_int(seek, "seek", 0, 2 ** 62)
        # The path is built from a name in programs.ini, never from the request's text.
        path = os.path.join(self.log_dir, self.programs[name].name + ".log")
        return tail_file(path, seek)

    @app.route("/stream", methods=["GET"])
    def stream(self, request):
        secure(request)
        address = client_address(request)
        try:
            self.streams.acquire(address)
        except Refused as e:
            self.stats.incr("streams_refused")
            return refuse(request, e)
        try:
            request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-store")
            request.setHeader(b"X-Accel-Buffering", b"no")  # nginx: do not buffer
            client = self.hub.add(request)
        except HubStopped:
            self.streams.release(address)
            return refuse(request, Refused(503, "the server is shutting down"))
        client.finished.addBoth(lambda _: self.streams.release(address))
        return client.finished.addCallback(lambda _: b"")

    @app.route("/metrics", methods=["GET", "HEAD"])
    @defer.inlineCallbacks
    def metrics(self, request):
        secure(request)
        request.setHeader(b"Content-Type", prometheus.CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        now = self.now()
        try:
            process_stats = yield self.reads.process_stats()
            names = list(self.programs)
            (beats,) = yield self.reads.batch([("GET", [keys.heartbeat(n) for n in names], ())])
            snap = yield self.reads.stream_snapshot(int(now) - 1)
            memory = yield self.reads.memory()
        except REDIS_ERRORS as e:
            request.setResponseCode(503)
            return ("# Redis is unavailable: %s\nminard_redis_up 0\n"
                    % e.__class__.__name__).encode()
        stale = staleness(now, snap["last_events"], snap["last_heartbeat"])
        text = prometheus.render(
            process_stats, now,
            programs_up={n: b is not None for n, b in zip(names, beats)},
            ages={"pull_heartbeat": stale["heartbeat_age"], "events": stale["events_age"]},
            redis_memory=memory)
        return (text + "# TYPE minard_redis_up gauge\nminard_redis_up 1\n").encode()


#: The L2 page's tables: (state, heading).
L2_TABLES = (("process", "Being processed"), ("wait", "Waiting for RAT"), ("rat", "RAT"),
             ("done", "Done"), ("fail", "Failed"))


def _complete_lines(data):
    """(lines, bytes consumed): only whole lines; a partial last line waits."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0
    text = data[:end].decode("utf-8", "replace")
    return [line.rstrip("\r") for line in text.split("\n")], end + 1


def tail_file(path, seek, lines=C.TAIL_LINES, max_bytes=C.TAIL_MAX_BYTES):
    """{"seek", "lines"} of a log file (the original /tail behaviour, bounded).

    seek None: the last `lines` lines. seek <= size: what was appended since. seek > size:
    the file was rotated: the rest of `<path>.1` from seek, then the new file."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return {"seek": 0, "lines": []}  # no log yet: nothing to show, not an error
    with open(path, "rb") as f:
        if seek is None:
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(size - start)
            got, used = _complete_lines(data)
            if start > 0 and got:
                got = got[1:]  # the first line was cut by the byte limit
            return {"seek": start + used, "lines": got[-lines:]}
        if seek <= size:
            f.seek(seek)
            data = f.read(max_bytes)
            got, used = _complete_lines(data)
            if not used and len(data) >= max_bytes:  # one line longer than the limit
                got, used = [data.decode("utf-8", "replace")], len(data)
            return {"seek": seek + used, "lines": got}
        out = []
        try:
            with open(path + ".1", "rb") as old:
                old.seek(seek)
                out, _ = _complete_lines(old.read(max_bytes))
        except OSError:
            pass
        f.seek(0)
        got, used = _complete_lines(f.read(max_bytes))
        return {"seek": used, "lines": out + got}
