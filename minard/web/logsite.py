"""The logging server (`log-server` role, SPEC §5.2): heartbeats, log lines and alarms
posted by the DAQ programs.

    curl --data "name=builder&status=ok" -u snoplus:PASS http://host:8081/heartbeat
    curl --data "name=builder&level=40&message=..." -u snoplus:PASS http://host:8081/log

The server listens on every interface, so it expects hostile clients. Before Klein sees
anything, the connection layer (LogSiteFactory, LogChannel) applies:
  * connection caps (ConnectionLimits): a total below the file-descriptor limit, at most
    CONNECTIONS_PER_ADDRESS not-yet-authenticated connections per remote address, and
    capacity that strangers never get, kept for loopback (nginx) and for addresses that
    logged in recently; a refused connection is answered 503 with the reason;
  * a request deadline: the whole request, headers and body, within REQUEST_DEADLINE s of
    the connection's start (or of the previous answer), however the bytes trickle (408);
  * header limits answered, not dropped: 431 (a line or all headers over 16 KiB), 400
    with a reason for a malformed request.
Then every request passes, in order: the per-client request-rate limit (429), the
body-size limit (413, enforced by LimitedRequest before the body is read), HTTP Basic
authentication against the auth file (401; every slow password check takes one of the
client's failed-login tokens first, refunded on success, so a flood gets 429 without
hashing), then the form checks (400).

Messages are stored as text: the log line escapes them (minard.logformat) so that no
message can forge a line, and the pages show them with textContent. A line is appended
whole or not at all. A level-40 (or notify) post raises its alarm even when the line
cannot be written (full disk: 507). A post with an `id` (minard.monitor and minard-log
send one) is stored once however often it is retried.
"""
import base64
import binascii
import collections
import errno
import ipaddress
import json
import os
import re
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.web import http, server

from minard import constants as C
from minard import logformat
from minard.store import logserver as store

#: A rejected body is read and thrown away up to this size so that the client sees the
#: 413 answer; beyond it the connection is dropped.
LINGER_MAX_BYTES = 16 * 1024 * 1024
#: Log a given kind of rejected request at most once per this many seconds.
COMPLAINT_INTERVAL = 60.0
#: Forget rate-limit state of this many clients at most.
MAX_CLIENTS = 10000
LEVEL_RANGE = (0, 1000)
REALM = "minard"
#: Peers whose connections are local: nginx in front of the server, and local programs.
LOCAL_ADDRESSES = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
POST_ID = re.compile(r"^[A-Za-z0-9_.-]{1,%d}$" % C.POST_ID_MAX_LENGTH)
STATUS_TEXT = {400: b"Bad Request", 408: b"Request Timeout", 431:
               b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class HTTPError(Exception):
    def __init__(self, code, reason, headers=None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.headers = headers or {}


class TokenBuckets:
    """One token bucket per client: `rate` tokens/s refilled up to `burst`."""

    def __init__(self, rate, burst, clock):
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.buckets = {}  # client -> (tokens, last time)

    def _level(self, client):
        now = self.clock()
        tokens, last = self.buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate), now

    def available(self, client):
        return self._level(client)[0] >= 1.0

    def take(self, client):
        """Take one token; False (and nothing taken) when the bucket is empty."""
        tokens, now = self._level(client)
        if tokens < 1.0:
            self.buckets[client] = (tokens, now)
            return False
        if len(self.buckets) >= MAX_CLIENTS and client not in self.buckets:
            self._prune(now)
        self.buckets[client] = (tokens - 1.0, now)
        return True

    def refund(self, client):
        """Give back a token taken for something that turned out to be fine."""
        tokens, now = self._level(client)
        self.buckets[client] = (min(self.burst, tokens + 1.0), now)

    def _prune(self, now):
        full = [c for c, (tokens, last) in self.buckets.items()
                if tokens + (now - last) * self.rate >= self.burst]
        for c in full:
            del self.buckets[c]
        if len(self.buckets) >= MAX_CLIENTS:
            self.buckets.clear()


class Complaints:
    """Logs each kind of bad request at most once per interval, counting the rest."""

    log = Logger()

    def __init__(self, clock, interval=COMPLAINT_INTERVAL):
        self.clock = clock
        self.interval = interval
        self.last = {}
        self.suppressed = {}

    def __call__(self, kind, text):
        now = self.clock()
        if now - self.last.get(kind, -self.interval - 1) < self.interval:
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return
        more = self.suppressed.pop(kind, 0)
        self.last[kind] = now
        self.log.warn("log-server rejected a request ({kind}): {text}{more}", kind=kind,
                      text=text, more=" (+%d more since last report)" % more if more else "")


class RotatingLogFiles:
    """Appends lines to `<log-dir>/<name>.log`, rotating at max_bytes into .1 ... .backups
    (the newest backup is .1, as Python's RotatingFileHandler does)."""

    def __init__(self, log_dir, max_bytes=C.LOG_FILE_MAX_BYTES, backups=C.LOG_FILE_BACKUPS):
        self.log_dir = os.path.abspath(log_dir)
        self.max_bytes = max_bytes
        self.backups = backups

    def path(self, name):
        path = os.path.join(self.log_dir, name + ".log")
        if (os.path.dirname(os.path.abspath(path)) != self.log_dir
                or os.path.basename(path) != name + ".log"):
            raise ValueError("bad log name %r" % (name,))
        return path

    def write(self, name, line):
        """Append one line, whole or not at all: when the disk takes only part of it
        (ENOSPC after a short write), the file is cut back to where the line began and
        the OSError is raised, so no fragment is left for the next line to be glued to."""
        path = self.path(name)
        data = line.encode("ascii") + b"\n"
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            self.rotate(path)
        # O_NOFOLLOW: a symlink planted in the log directory cannot redirect the write
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":
                # a line torn by something else (a crash, another writer) stays apart
                data = b"\n" + data
            _write_whole(fd, data, start)
        finally:
            os.close(fd)

    def rotate(self, path):
        for i in range(self.backups - 1, 0, -1):
            older = "%s.%d" % (path, i)
            if os.path.lexists(older):
                os.replace(older, "%s.%d" % (path, i + 1))
        if self.backups > 0:
            os.replace(path, path + ".1")
        else:
            os.unlink(path)


def _write_whole(fd, data, start):
    """os.write until all of data is in the file (opened O_APPEND at size start); on any
    failure truncate back to start and raise."""
    view = memoryview(data)
    done = 0
    try:
        while done < len(data):
            written = os.write(fd, view[done:])
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += written
    except OSError:
        if done:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass  # the next write starts on a new line (see write)
        raise


def _error_body(reason):
    return json.dumps({"error": reason}).encode("utf-8") + b"\n"


class LimitedRequest(server.Request):
    """A Request that refuses a body over max_body bytes without storing it: a declared
    Content-Length is checked as soon as the headers are in, a chunked body as it comes."""

    max_body = C.MAX_BODY_BYTES
    rejected = False
    _received = 0

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            expects = self.requestHeaders.getRawHeaders(b"expect") or []
            self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after a 413
            self.content = _NullFile()
            self._reject(close_now=bool(expects) or length > LINGER_MAX_BYTES)
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        self._received += len(data)
        if self.rejected:
            if self._received > LINGER_MAX_BYTES and self.channel.transport is not None:
                self.channel.transport.abortConnection()
            return
        if self._received > self.max_body:
            self.content = _NullFile()
            self._reject(close_now=False)
            return
        super().handleContentChunk(data)

    def _reject(self, close_now):
        self.rejected = True
        body = _error_body("request body larger than %d bytes" % (self.max_body,))
        site = getattr(self.channel, "site", None)
        on_reject = getattr(site, "on_too_large", None)
        if on_reject is not None:
            on_reject(self)
        self.channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        if close_now:
            self.channel.loseConnection()

    def requestReceived(self, command, path, version):
        if self.rejected:  # the 413 is already written; drop the connection
            self.channel.loseConnection()
            return
        super().requestReceived(command, path, version)


class _NullFile:
    """Where a rejected body goes."""

    def write(self, data):
        pass

    def read(self, *args):
        return b""

    def seek(self, *args):
        return 0

    def tell(self):
        return 0

    def close(self):
        pass


def address_key(host):
    """What a connection counts against: None for a local peer (nginx, local programs,
    a UNIX socket); an IPv6 peer by its /64 (one machine has many addresses in it)."""
    if not host or host in LOCAL_ADDRESSES:
        return None
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            return host
        if address.ipv4_mapped is not None:  # an IPv4 client of a dual-stack listener
            return address_key(str(address.ipv4_mapped))
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


class ConnectionLimits:
    """Who may hold how many of the server's connections at once.

    total: all connections (below the file-descriptor limit, so accept() never fails
    and the listen queue never overflows into resets). A remote address may hold at most
    per_address connections that have not authenticated; once a request on a connection
    authenticates, the connection stops counting against its address and the address is
    trusted for trusted_seconds. Strangers together get at most total minus the local
    and the trusted reserve; trusted addresses may also use the trusted reserve; local
    peers may use everything. A flood of held-open connections therefore costs the
    attacker's address its own slots, and never the slots of loopback or of programs that
    have logged in.
    """

    def __init__(self, total, per_address=C.CONNECTIONS_PER_ADDRESS, clock=None,
                 trusted_seconds=C.TRUSTED_ADDRESS_SECONDS):
        if clock is None:
            from twisted.internet import reactor as clock
        self.total = max(1, int(total))
        self.per_address = max(1, int(per_address))
        self.local_reserve = int(self.total * C.CONNECTIONS_RESERVED_LOCAL)
        self.trusted_reserve = int(self.total * C.CONNECTIONS_RESERVED_TRUSTED)
        self.clock = clock
        self.trusted_seconds = trusted_seconds
        self.open = 0
        self.strangers = {}  # address key -> connections not (yet) authenticated
        self.trusted = {}  # address key -> time until which it is trusted

    def is_trusted(self, key):
        until = self.trusted.get(key)
        if until is None:
            return False
        if until < self.clock.seconds():
            del self.trusted[key]
            return False
        return True

    def admit(self, host):
        """(slot, None) for a new connection from host, or (None, reason)."""
        key = address_key(host)
        if key is None:
            if self.open >= self.total:
                return None, "the log server is at its limit of %d connections" % self.total
        else:
            limit = self.total - self.local_reserve
            if not self.is_trusted(key):
                limit -= self.trusted_reserve
            if self.open >= limit:
                return None, "the log server has no free connection for %s" % (host,)
            if self.strangers.get(key, 0) >= self.per_address:
                return None, ("too many connections from %s (at most %d before one "
                              "authenticates)" % (host, self.per_address))
            self.strangers[key] = self.strangers.get(key, 0) + 1
        self.open += 1
        return ConnectionSlot(self, key), None

    def trust(self, key):
        now = self.clock.seconds()
        if key not in self.trusted and len(self.trusted) >= MAX_CLIENTS:
            self.trusted = {k: t for k, t in self.trusted.items() if t >= now}
            if len(self.trusted) >= MAX_CLIENTS:
                self.trusted.clear()
        self.trusted[key] = now + self.trusted_seconds

    def _leave(self, key):
        left = self.strangers.get(key, 0) - 1
        if left > 0:
            self.strangers[key] = left
        else:
            self.strangers.pop(key, None)


class ConnectionSlot:
    """One admitted connection's place in ConnectionLimits."""

    def __init__(self, limits, key):
        self.limits = limits
        self.key = key
        self.stranger = key is not None
        self.held = True

    def authenticated(self):
        """A request on this connection authenticated: trust its address, and stop
        counting the connection against it."""
        if self.key is not None and self.held:
            self.limits.trust(self.key)
        if self.stranger:
            self.stranger = False
            self.limits._leave(self.key)

    def release(self):
        if not self.held:
            return
        self.held = False
        self.limits.open -= 1
        if self.stranger:
            self.stranger = False
            self.limits._leave(self.key)


def _close_lingering(transport):
    """Close after what was written, reading on meanwhile (the caller aborts after
    LINGER_SECONDS): closing a socket with unread input sends a reset, and the client
    would lose the answer."""
    if interfaces.ISSLTransport.providedBy(transport):
        transport.loseConnection()  # a TLS close_notify after the answer
        return
    try:
        transport.loseWriteConnection()  # FIN after the answer; keep reading
    except Exception:
        transport.loseConnection()


def _raw_answer(code, reason, extra=b""):
    body = _error_body(reason)
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\n%sConnection: close\r\n\r\n%s"
            % (code, STATUS_TEXT[code], len(body), extra, body))


class LogChannel(http.HTTPChannel):
    """The HTTP channel of the log server: HTTPChannel with a request deadline that
    trickling bytes cannot extend, and an answer (not a dropped connection) for
    requests it refuses before they reach a Request.

    Twisted's own timeout is an idle timeout, restarted by every byte: one byte every
    few seconds holds a connection for ever. Here a whole request must arrive within
    request_deadline seconds of the connection's start, or of the answer before it on a
    kept-alive connection; an incomplete one is answered 408, an idle connection closed.
    """

    request_deadline = C.REQUEST_DEADLINE
    slot = None
    closing = False
    _deadline_call = None
    _linger_call = None
    _bytes = 0

    def connectionMade(self):
        super().connectionMade()
        self._start_deadline()

    def _start_deadline(self):
        self._cancel_deadline()
        self._bytes = 0
        if self.request_deadline:
            self._deadline_call = self.callLater(self.request_deadline, self._deadline_passed)

    def _cancel_deadline(self):
        call, self._deadline_call = self._deadline_call, None
        if call is not None and call.active():
            call.cancel()

    def _deadline_passed(self):
        self._deadline_call = None
        if self.closing or self.transport is None:
            return
        if any(getattr(r, "rejected", False) for r in self.requests):
            self._abort()  # a 413 is already answered; its body is still trickling
            return
        if not self._bytes and not self.requests:  # a kept-alive connection, idle
            self.closing = True
            self.loseConnection()
            self._linger_call = self.callLater(C.LINGER_SECONDS, self._abort)
            return
        self.refuse(408, "request not complete within %g s" % (self.request_deadline,))

    def dataReceived(self, data):
        if self.closing:
            return  # answered: what else comes is read and dropped
        self._bytes += len(data)
        super().dataReceived(data)

    def lineReceived(self, line):
        if self.closing:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(431, "request headers larger than %d bytes" % self.totalHeadersSize)
            return
        super().lineReceived(line)

    def rawDataReceived(self, data):
        if self.closing:
            return
        super().rawDataReceived(data)

    def lineLengthExceeded(self, line):
        self.refuse(431, "request line or header line longer than %d bytes" % self.MAX_LENGTH)

    def _respondToBadRequestAndDisconnect(self):
        self.refuse(400, "malformed HTTP request (request line, header or chunked body)")

    def allContentReceived(self):
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request):
        # before HTTPChannel reads a pipelined request that may already be buffered
        self._start_deadline()
        super().requestDone(request)

    def refuse(self, code, reason):
        """Answer `code` with a JSON reason at once, then close without a reset."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self._cancel_deadline()
        self.setTimeout(None)
        on_refused = getattr(getattr(self, "site", None), "on_bad_request", None)
        if on_refused is not None:
            on_refused(self, code, reason)
        self.transport.write(_raw_answer(code, reason))
        self._networkProducer.unregisterProducer()
        try:
            self._networkProducer.resumeProducing()  # read on (and drop) what comes
        except Exception:
            pass
        _close_lingering(self.transport)
        self._linger_call = self.callLater(C.LINGER_SECONDS, self._abort)

    def _abort(self):
        self._linger_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self._cancel_deadline()
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        if self.slot is not None:
            self.slot.release()
        super().connectionLost(reason)


class Refusal(protocol.Protocol):
    """A connection over the limits: answered 503 with the reason and closed. At most
    LINGERING_REFUSALS of them linger to read the request (so the client sees the
    answer, not a reset); the rest are closed at once, so refusals hold no descriptors."""

    lingering = False
    _call = None

    def __init__(self, factory, reason):
        self.factory = factory
        self.reason = reason

    def connectionMade(self):
        self.transport.write(_raw_answer(503, self.reason, b"Retry-After: 10\r\n"))
        if self.factory.lingering < C.LINGERING_REFUSALS:
            self.factory.lingering += 1
            self.lingering = True
            _close_lingering(self.transport)
            self._call = self.factory.reactor.callLater(C.LINGER_SECONDS,
                                                        self.transport.abortConnection)
        else:
            self.transport.loseConnection()

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self.lingering:
            self.lingering = False
            self.factory.lingering -= 1


class LogSiteFactory(server.Site):
    """The HTTP factory of the log server: LogChannel and LimitedRequest, the connection
    caps (limits: a ConnectionLimits, or None for none), no per-request access log
    (heartbeats would flood it; rejected requests are logged by Complaints)."""

    protocol = LogChannel
    requestFactory = LimitedRequest
    request_deadline = C.REQUEST_DEADLINE
    limits = None
    lingering = 0  # Refusals lingering now
    on_too_large = None  # (request) a body over the limit
    on_refused = None  # (host, reason) a connection refused by the limits
    on_bad_request = None  # (channel, code, reason) answered by LogChannel itself

    def buildProtocol(self, addr):
        slot = None
        if self.limits is not None:
            slot, reason = self.limits.admit(getattr(addr, "host", None))
            if slot is None:
                if self.on_refused is not None:
                    self.on_refused(getattr(addr, "host", None), reason)
                return Refusal(self, reason)
        channel = super().buildProtocol(addr)
        channel.slot = slot
        channel.request_deadline = self.request_deadline
        return channel

    def log(self, request):
        pass


def client_address(request):
    """The client's IP; behind the local nginx, the X-Real-IP it sets."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", None) or "unknown"
    if host in LOCAL_ADDRESSES:
        forwarded = request.getHeader(b"x-real-ip")
        if forwarded:
            return forwarded.decode("latin-1").strip()[:64]
    return host


def parse_form(request):
    """The form fields (first value of each) as str, from an urlencoded body (parsed
    here: Twisted's parser splits on ';' and drops a bare `notify`) or a multipart one."""
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    fields = {}
    if ctype == b"multipart/form-data":
        pairs = [(k, v[0]) for k, v in request.args.items() if v]
    else:
        request.content.seek(0)
        body = request.content.read(C.MAX_BODY_BYTES + 1)
        pairs = []
        for item in body.split(b"&"):
            if not item:
                continue
            key, _, value = item.partition(b"=")
            pairs.append((unquote_to_bytes(key.replace(b"+", b" ")),
                          unquote_to_bytes(value.replace(b"+", b" "))))
    for key, value in pairs:
        key = key.decode("utf-8", "replace")
        if key not in fields:
            fields[key] = value
    return fields


class RecentPosts:
    """Post ids (program, id) whose log line this process wrote or is writing, newest
    last, at most `size`: a retry is not written again even while Redis is away (Redis
    keeps the ids across a restart of the server)."""

    PENDING, DONE = "pending", "done"

    def __init__(self, size=C.POST_IDS_REMEMBERED):
        self.size = size
        self.states = collections.OrderedDict()

    def get(self, key):
        return self.states.get(key)

    def set(self, key, state):
        self.states[key] = state
        self.states.move_to_end(key)
        while len(self.states) > self.size:
            self.states.popitem(last=False)

    def forget(self, key):
        self.states.pop(key, None)


class LogSite:
    """The Klein app of the logging server; state on the instance.

    `clock` schedules and measures durations (monotonic in the role: minard/clock.py);
    `wall` (default clock.seconds) stamps log lines, heartbeats and alarms.

    redis: a txredisapi connection; programs: dict name -> Program; log_files:
    RotatingLogFiles; auth: minard.auth.Authenticator (check_deferred); clock: an
    IReactorTime (seconds() is the time written in log lines and alarms); stats: Stats;
    connections: ConnectionLimits (None: no caps); request_deadline: seconds.
    """

    app = Klein()
    log = Logger()

    def __init__(self, redis, programs, log_files, auth, clock, stats=None,
                 request_rate=C.REQUEST_RATE, request_burst=C.REQUEST_BURST,
                 failure_rate=C.AUTH_FAILURE_RATE, failure_burst=C.AUTH_FAILURE_BURST,
                 connections=None, request_deadline=C.REQUEST_DEADLINE):
        self.redis = redis
        self.programs = programs
        self.log_files = log_files
        self.auth = auth
        self.clock = clock
        self.wall = None
        self.stats = stats
        self.requests = TokenBuckets(request_rate, request_burst, clock.seconds)
        self.failures = TokenBuckets(failure_rate, failure_burst, clock.seconds)
        self.complain = Complaints(clock.seconds)
        self.connections = connections
        self.request_deadline = request_deadline
        self.recent = RecentPosts()
        self.checking = {}  # client -> DeferredSemaphore of its slow password checks

    # -- plumbing ------------------------------------------------------------------


    def wall_time(self):
        return (self.wall or self.clock.seconds)()
    def site(self):
        factory = LogSiteFactory(self.app.resource(), reactor=self.clock)
        factory.on_too_large = self._too_large
        factory.on_refused = self._connection_refused
        factory.on_bad_request = self._bad_request
        factory.limits = self.connections
        factory.request_deadline = self.request_deadline
        return factory

    def _count(self, name):
        if self.stats is not None:
            self.stats.incr(name)

    def _too_large(self, request):
        self._count("rejected_413")
        self.complain("413", "body over %d bytes from %s"
                      % (C.MAX_BODY_BYTES, client_address(request)))

    def _connection_refused(self, host, reason):
        self._count("connections_refused")
        self.complain("connections", "connection refused: %s" % (reason,))

    def _bad_request(self, channel, code, reason):
        self._count("rejected_%d" % code)
        peer = getattr(channel.transport.getPeer(), "host", "unknown")
        self.complain(str(code), "%s from %s" % (reason, peer))

    def _answer(self, request, code, body, content_type=b"application/json"):
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return body

    def _fail(self, request, error):
        self._count("rejected_%d" % error.code)
        for key, value in error.headers.items():
            request.setHeader(key, value)
        if error.code in (400, 401, 413, 429):
            self.complain(str(error.code), "%s from %s" % (error.reason,
                                                          client_address(request)))
        return self._answer(request, error.code, _error_body(error.reason))

    def _handle(self, request, handler):
        """Run an inlineCallbacks handler; turn HTTPError and surprises into answers."""
        d = defer.maybeDeferred(handler, request)

        def ok(body):
            return self._answer(request, 200, body, b"text/plain; charset=utf-8")

        def failed(failure):
            if failure.check(HTTPError):
                return self._fail(request, failure.value)
            self.log.failure("log-server: unexpected error", failure)
            return self._fail(request, HTTPError(503, "server error, try again later"))

        return d.addCallbacks(ok, failed)

    @defer.inlineCallbacks
    def _admit(self, request):
        """Rate limit, body limit and authentication; raises HTTPError."""
        client = client_address(request)
        if not self.requests.take(client):
            raise HTTPError(429, "too many requests", {b"retry-after": b"1"})
        if getattr(request, "rejected", False):
            raise HTTPError(413, "request body larger than %d bytes" % C.MAX_BODY_BYTES)
        request.content.seek(0, os.SEEK_END)
        if request.content.tell() > C.MAX_BODY_BYTES:
            raise HTTPError(413, "request body larger than %d bytes" % C.MAX_BODY_BYTES)
        challenge = {b"www-authenticate": b'Basic realm="%s", charset="UTF-8"'
                     % REALM.encode()}
        try:
            credentials = basic_credentials(request)
        except BadCredentials as e:
            # a failed login like any other (a guesser must not get free tries)
            if not self.failures.take(client):
                raise HTTPError(429, "too many failed logins", {b"retry-after": b"10"})
            raise HTTPError(401, str(e), challenge)
        if credentials is None:
            raise HTTPError(401, "authentication required", challenge)
        if self.auth.cached(*credentials):
            # verified recently: the failed logins of another program on the same machine
            # (one with a wrong password) must not lock this one out
            self._authenticated(request)
            return
        # the token is taken before the slow hash (and given back when the password is
        # right): concurrent guesses cannot all pass the check before one is charged
        if not self.failures.take(client):
            raise HTTPError(429, "too many failed logins", {b"retry-after": b"10"})
        ok = yield self._slow_check(client, credentials)
        if not ok:
            raise HTTPError(401, "wrong user or password", challenge)
        self.failures.refund(client)
        self._authenticated(request)

    def _slow_check(self, client, credentials):
        """The password check, at most AUTH_CHECKS_PER_CLIENT of one client at once: the
        rest of its checks wait here instead of ahead of other clients' in the pool."""
        semaphore = self.checking.get(client)
        if semaphore is None:
            semaphore = self.checking[client] = defer.DeferredSemaphore(
                C.AUTH_CHECKS_PER_CLIENT)

        def done(result):
            if semaphore.tokens == semaphore.limit and not semaphore.waiting:
                self.checking.pop(client, None)
            return result

        return semaphore.run(self.auth.check_deferred, *credentials).addBoth(done)

    def _authenticated(self, request):
        slot = getattr(getattr(request, "channel", None), "slot", None)
        if slot is not None:
            slot.authenticated()

    def _program(self, fields):
        name = fields.get("name")
        if name is None:
            raise HTTPError(400, "must specify name")
        name = name.decode("utf-8", "replace")
        if name not in self.programs:
            raise HTTPError(400, "unknown program %s" % (json.dumps(name[:80]),))
        return self.programs[name]

    def _post_id(self, fields):
        """The post's id (a retry carries the same), or None when it has none."""
        raw = fields.get("id")
        if raw is None:
            return None
        text = raw.decode("ascii", "replace")
        if not POST_ID.match(text):
            raise HTTPError(400, "id must be 1 to %d letters, digits, '-', '_' or '.'"
                            % C.POST_ID_MAX_LENGTH)
        return text

    def _redis_failure(self, error, what):
        """The HTTPError for a Redis write that failed: 507 when Redis is full."""
        self._count("redis_errors")
        self.complain("redis", "%s: %s" % (what, error))
        return HTTPError(507 if store.is_full(error) else 503,
                         "%s: %s" % (what, redis_reason(error)))

    # -- routes --------------------------------------------------------------------

    @app.route("/heartbeat", methods=["POST"])
    def heartbeat(self, request):
        return self._handle(request, self._heartbeat)

    @defer.inlineCallbacks
    def _heartbeat(self, request):
        yield self._admit(request)
        fields = parse_form(request)
        program = self._program(fields)
        post_id = self._post_id(fields)
        if "status" not in fields:
            raise HTTPError(400, "must specify status")
        status = fields["status"].decode("utf-8", "replace")
        if len(fields["status"]) > C.MAX_MESSAGE_BYTES:
            raise HTTPError(413, "status longer than %d bytes" % C.MAX_MESSAGE_BYTES)
        try:
            fresh = yield store.post_heartbeat(self.redis, program.name, status,
                                               program.expire, self.wall_time(),
                                               post_id=post_id)
        except Exception as e:
            raise self._redis_failure(e, "heartbeat not stored")
        self._count("heartbeats" if fresh else "repeated_posts")
        return b"ok\n"

    @app.route("/log", methods=["POST"])
    def log_line(self, request):
        return self._handle(request, self._log_line)

    @defer.inlineCallbacks
    def _log_line(self, request):
        yield self._admit(request)
        fields = parse_form(request)
        program = self._program(fields)
        post_id = self._post_id(fields)
        for field in ("level", "message"):
            if field not in fields:
                raise HTTPError(400, "must specify %s" % (field,))
        level = parse_level(fields["level"])
        if len(fields["message"]) > C.MAX_MESSAGE_BYTES:
            raise HTTPError(413, "message longer than %d bytes" % C.MAX_MESSAGE_BYTES)
        message = fields["message"].decode("utf-8", "replace").strip()
        now = self.wall_time()
        line = logformat.format_line(now, program.name, level, message)
        file_error = yield self._write_line(program.name, post_id, line)
        wants_alarm = "notify" in fields or level >= C.ALARM_LEVEL
        alarm_error = None
        if wants_alarm:
            # raised whether or not the line could be written: a full disk must not
            # silence an alarm while Redis is fine
            try:
                yield store.raise_alarm(self.redis, level, "%s - %s" % (program.name, message),
                                        now, name=program.name, post_id=post_id)
                self._count("alarms")
            except Exception as e:
                alarm_error = e
        if file_error is None and alarm_error is None:
            return b"ok\n"
        raise self._log_failure(program.name, file_error, wants_alarm, alarm_error)

    @defer.inlineCallbacks
    def _write_line(self, name, post_id, line):
        """Append the line unless an earlier try of the same post did; fires None, or
        the OSError that kept it out of the file."""
        key = (name, post_id)
        if post_id is not None:
            state = self.recent.get(key)
            if state == RecentPosts.DONE:
                self._count("repeated_posts")
                return None
            if state == RecentPosts.PENDING:
                raise HTTPError(503, "an earlier try of this post (same id) is still being "
                                "stored; try again", {b"retry-after": b"1"})
            self.recent.set(key, RecentPosts.PENDING)
            try:
                d = store.line_written(self.redis, name, post_id)
                d.addTimeout(C.POST_CLAIM_TIMEOUT, self.clock)
                written = yield d
            except Exception:
                written = False  # Redis away or slow: this process's memory decides
            if written:
                self.recent.set(key, RecentPosts.DONE)
                self._count("repeated_posts")
                return None
        try:
            self.log_files.write(name, line)
        except OSError as e:
            self.recent.forget(key)
            return e
        self._count("log_lines")
        if post_id is not None:
            self.recent.set(key, RecentPosts.DONE)
            d = store.mark_line_written(self.redis, name, post_id)
            d.addErrback(lambda f: self._count("redis_errors"))  # memory still knows
        return None

    def _log_failure(self, name, file_error, wants_alarm, alarm_error):
        """The HTTPError of a /log post that was not stored whole: 507 when the disk or
        Redis is full, else 503; the reason says what was stored and what not."""
        full = False
        if file_error is not None:
            self._count("file_errors")
            self.complain("file", "cannot write the log of %s: %s" % (name, file_error))
            full = file_error.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = "log line not written: %s" % (file_error.strerror or "I/O error",)
        else:
            reason = "log line written"
        if wants_alarm and alarm_error is None:
            reason += "; alarm stored"
        elif wants_alarm:
            error = self._redis_failure(alarm_error, "alarm not stored")
            full = full or error.code == 507
            reason += ", " + error.reason if file_error is None else "; " + error.reason
        return HTTPError(507 if full else 503, reason)


class OwnLog:
    """Where the log server's own log records go (a LogForwarder's sender): straight into
    its own log file, as program `name` of programs.ini (`log`), like a posted line; a
    record at ALARM_LEVEL or above also raises its alarm, as many as a minard process's
    forwarded records could (MONITOR_FORWARD_BURST, _RATE). A failure is counted, never
    logged (the log line would come back here)."""

    def __init__(self, site, name):
        from minard.monitor import ForwardBudget

        self.site = site
        self.name = name
        self.clock = site.clock
        self.alarms = ForwardBudget(site.clock)

    def send(self, level, message):
        now = self.site.wall_time()
        try:
            self.site.log_files.write(self.name, logformat.format_line(
                now, self.name, level, message))
            self.site._count("own_log_lines")
        except (OSError, ValueError):
            self.site._count("file_errors")
        if level >= C.ALARM_LEVEL and self.alarms.take():
            d = store.raise_alarm(self.site.redis, level, "%s - %s" % (self.name, message),
                                  now)
            d.addErrback(lambda f: self.site._count("redis_errors"))
        return True


def redis_reason(error):
    """Why a Redis write failed, for the client."""
    import txredisapi

    if store.is_full(error):
        return "Redis is full (maxmemory reached)"
    if isinstance(error, txredisapi.ResponseError):
        return "Redis refused the write (%s)" % (str(error).strip()[:120],)
    return "Redis unavailable"


def parse_level(raw):
    try:
        text = raw.decode("ascii").strip()
        if not text.lstrip("-").isdigit():
            raise ValueError
        level = int(text)
    except (UnicodeDecodeError, ValueError):
        raise HTTPError(400, "level must be an integer")
    if not LEVEL_RANGE[0] <= level <= LEVEL_RANGE[1]:
        raise HTTPError(400, "level must be between %d and %d" % LEVEL_RANGE)
    return level


class BadCredentials(Exception):
    """Basic credentials that cannot be read; str() says why."""


def basic_credentials(request):
    """(user, password) from an `Authorization: Basic` header, None without one (or with
    another scheme); BadCredentials when it cannot be read (RFC 7617: UTF-8)."""
    header = request.getHeader(b"authorization")
    if not header:
        return None
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadCredentials("malformed Basic credentials (not base64)")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadCredentials("user and password must be sent UTF-8 encoded")
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise BadCredentials("malformed Basic credentials (expected user:password)")
    return user, password


def make_log_site(redis, programs, log_dir, auth, clock=None, stats=None,
                  max_connections=C.LOG_SERVER_MAX_CONNECTIONS,
                  per_address=C.CONNECTIONS_PER_ADDRESS, request_deadline=C.REQUEST_DEADLINE):
    """A LogSite with its log directory (created if needed) and its connection caps."""
    if clock is None:
        from twisted.internet import reactor as clock
    os.makedirs(log_dir, exist_ok=True)
    limits = ConnectionLimits(max_connections, per_address, clock=clock)
    return LogSite(redis, programs, RotatingLogFiles(log_dir), auth, clock, stats,
                   connections=limits, request_deadline=request_deadline)
