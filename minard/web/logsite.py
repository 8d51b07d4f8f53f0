"""The logging server (`log-server` role, SPEC §5.2): heartbeats, log lines and alarms
posted by the DAQ programs.

    curl --data "name=builder&status=ok" -u snoplus:PASS http://host:8081/heartbeat
    curl --data "name=builder&level=40&message=..." -u snoplus:PASS http://host:8081/log

Every request passes, in order: the per-client request-rate limit (429), the body-size
limit (413, enforced by LimitedRequest before the body is read), HTTP Basic
authentication against the auth file (401; repeated failures from one client -> 429),
then the form checks (400). Messages are stored as text: the log line escapes them
(minard.logformat) so that no message can forge a line, and the pages show them with
textContent.
"""
import json
import os
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server

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
        path = self.path(name)
        data = line.encode("ascii") + b"\n"
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            self.rotate(path)
        # O_NOFOLLOW: a symlink planted in the log directory cannot redirect the write
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, data)
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


class LogSiteFactory(server.Site):
    """The HTTP factory of the log server: LimitedRequest, no per-request access log
    (heartbeats would flood it; rejected requests are logged by Complaints)."""

    requestFactory = LimitedRequest
    on_too_large = None

    def log(self, request):
        pass


def client_address(request):
    """The client's IP; behind the local nginx, the X-Real-IP it sets."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", None) or "unknown"
    if host in ("127.0.0.1", "::1"):
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


class LogSite:
    """The Klein app of the logging server; state on the instance.

    redis: a txredisapi connection; programs: dict name -> Program; log_files:
    RotatingLogFiles; auth: minard.auth.Authenticator (check_deferred); clock: an
    IReactorTime (seconds() is the time written in log lines and alarms); stats: Stats.
    """

    app = Klein()
    log = Logger()

    def __init__(self, redis, programs, log_files, auth, clock, stats=None,
                 request_rate=C.REQUEST_RATE, request_burst=C.REQUEST_BURST,
                 failure_rate=C.AUTH_FAILURE_RATE, failure_burst=C.AUTH_FAILURE_BURST):
        self.redis = redis
        self.programs = programs
        self.log_files = log_files
        self.auth = auth
        self.clock = clock
        self.stats = stats
        self.requests = TokenBuckets(request_rate, request_burst, clock.seconds)
        self.failures = TokenBuckets(failure_rate, failure_burst, clock.seconds)
        self.complain = Complaints(clock.seconds)

    # -- plumbing ------------------------------------------------------------------

    def site(self):
        factory = LogSiteFactory(self.app.resource(), reactor=self.clock)
        factory.on_too_large = self._too_large
        return factory

    def _count(self, name):
        if self.stats is not None:
            self.stats.incr(name)

    def _too_large(self, request):
        self._count("rejected_413")
        self.complain("413", "body over %d bytes from %s"
                      % (C.MAX_BODY_BYTES, client_address(request)))

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
        credentials = basic_credentials(request)
        if credentials is None:
            raise HTTPError(401, "authentication required", challenge)
        if self.auth.cached(*credentials):
            # verified recently: the failed logins of another program on the same machine
            # (one with a wrong password) must not lock this one out
            return
        if not self.failures.available(client):
            raise HTTPError(429, "too many failed logins", {b"retry-after": b"10"})
        ok = yield self.auth.check_deferred(*credentials)
        if not ok:
            self.failures.take(client)
            raise HTTPError(401, "wrong user or password", challenge)

    def _program(self, fields):
        name = fields.get("name")
        if name is None:
            raise HTTPError(400, "must specify name")
        name = name.decode("utf-8", "replace")
        if name not in self.programs:
            raise HTTPError(400, "unknown program %s" % (json.dumps(name[:80]),))
        return self.programs[name]

    # -- routes --------------------------------------------------------------------

    @app.route("/heartbeat", methods=["POST"])
    def heartbeat(self, request):
        return self._handle(request, self._heartbeat)

    @defer.inlineCallbacks
    def _heartbeat(self, request):
        yield self._admit(request)
        fields = parse_form(request)
        program = self._program(fields)
        if "status" not in fields:
            raise HTTPError(400, "must specify status")
        status = fields["status"].decode("utf-8", "replace")
        if len(fields["status"]) > C.MAX_MESSAGE_BYTES:
            raise HTTPError(413, "status longer than %d bytes" % C.MAX_MESSAGE_BYTES)
        try:
            yield store.post_heartbeat(self.redis, program.name, status, program.expire,
                                       self.clock.seconds())
        except Exception as e:
            self._count("redis_errors")
            self.complain("redis", "heartbeat not stored: %s" % (e,))
            raise HTTPError(503, "heartbeat not stored: Redis unavailable")
        self._count("heartbeats")
        return b"ok\n"

    @app.route("/log", methods=["POST"])
    def log_line(self, request):
        return self._handle(request, self._log_line)

    @defer.inlineCallbacks
    def _log_line(self, request):
        yield self._admit(request)
        fields = parse_form(request)
        program = self._program(fields)
        for field in ("level", "message"):
            if field not in fields:
                raise HTTPError(400, "must specify %s" % (field,))
        level = parse_level(fields["level"])
        if len(fields["message"]) > C.MAX_MESSAGE_BYTES:
            raise HTTPError(413, "message longer than %d bytes" % C.MAX_MESSAGE_BYTES)
        message = fields["message"].decode("utf-8", "replace").strip()
        now = self.clock.seconds()
        line = logformat.format_line(now, program.name, level, message)
        try:
            self.log_files.write(program.name, line)
        except OSError as e:
            self._count("file_errors")
            self.complain("file", "cannot write the log of %s: %s" % (program.name, e))
            raise HTTPError(503, "log line not written: %s" % (e.strerror or "I/O error",))
        self._count("log_lines")
        if "notify" in fields or level >= C.ALARM_LEVEL:
            try:
                yield store.raise_alarm(self.redis, level,
                                        "%s - %s" % (program.name, message), now)
            except Exception as e:
                self._count("redis_errors")
                self.complain("redis", "alarm not stored: %s" % (e,))
                raise HTTPError(503, "log line written, alarm not stored: Redis unavailable")
            self._count("alarms")
        return b"ok\n"


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


def basic_credentials(request):
    """(user, password) from an `Authorization: Basic` header, or None."""
    import base64
    import binascii

    header = request.getHeader(b"authorization")
    if not header:
        return None
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password


def make_log_site(redis, programs, log_dir, auth, clock=None, stats=None):
    """A LogSite with its log directory (created if needed)."""
    if clock is None:
        from twisted.internet import reactor as clock
    os.makedirs(log_dir, exist_ok=True)
    return LogSite(redis, programs, RotatingLogFiles(log_dir), auth, clock, stats)

