"""A real logging server for tests: LogSite on a free loopback port, a real Redis, a
temporary log directory and auth file (user `snoplus`, password `pw`).

Clients of other machines are played by sockets bound to other loopback addresses
(127.0.0.2 ...): their traffic still goes to 127.0.0.1, but the server sees them as
remote peers (only 127.0.0.1 and ::1 are local to it)."""
import base64
import os
import socket
import tempfile
import threading

import treq
from twisted.internet import defer, reactor, threads
from twisted.protocols.policies import WrappingFactory

from minard import auth
from minard.programs import load_programs
from minard.store.connection import connect
from minard.web.logsite import make_log_site
from tests.support import RedisTestMixin

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS_INI = os.path.join(os.path.dirname(HERE), "etc", "programs.ini")
USER, PASSWORD = "snoplus", "pw"
_HASH = []


def password_hash():
    """One scrypt hash for the whole run (each costs tens of ms)."""
    if not _HASH:
        _HASH.append(auth.hash_password(PASSWORD))
    return _HASH[0]


def write_users(directory):
    path = os.path.join(directory, "users")
    auth.write_auth_file(path, {USER: password_hash()})
    return path


def basic(user=USER, password=PASSWORD):
    return b"Basic " + base64.b64encode(("%s:%s" % (user, password)).encode())


class LogServerMixin(RedisTestMixin):
    """setUp starts a LogSite: self.url, self.log_dir, self.logsite, self.sync (Redis)."""

    site_clock = None
    #: extra keyword arguments of make_log_site (connection caps, request deadline)
    site_options = {}

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.tmp = tempfile.mkdtemp(prefix="minard-logsite-")
        self.log_dir = os.path.join(self.tmp, "logs")
        self.auth_file = write_users(self.tmp)
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)
        self.programs = load_programs(PROGRAMS_INI)
        self.logsite = make_log_site(self.redis, self.programs, self.log_dir,
                                     auth.Authenticator(self.auth_file),
                                     clock=self.site_clock or reactor,
                                     **self.site_options)
        # WrappingFactory tracks the server's connections, so a test can kill the server
        self.factory = WrappingFactory(self.logsite.site())
        self.listener = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.stop_server)
        self.port = self.listener.getHost().port
        self.url = "http://127.0.0.1:%d" % self.port

    def stop_server(self):
        """Stop listening and drop every connection, as if the process died."""
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()
        listener, self.listener = self.listener, None
        if listener is not None:
            return listener.stopListening()

    def start_server(self):
        """Listen again on the same port."""
        self.listener = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")

    def post(self, path, data, authorization=None, headers=None):
        """POST; fires (code, headers, body bytes). data: dict or bytes."""
        hdrs = {b"authorization": [authorization or basic()]}
        if authorization is False:
            hdrs = {}
        if isinstance(data, bytes):
            hdrs[b"content-type"] = [b"application/x-www-form-urlencoded"]
        hdrs.update(headers or {})
        d = treq.post(self.url + path, data=data, headers=hdrs, persistent=False)

        def read(response):
            return treq.content(response).addCallback(
                lambda body: (response.code, response.headers, body))

        return d.addCallback(read)

    def raw(self, request_bytes, body_chunks=(), timeout=10):
        """Send raw bytes from a thread (blocking socket); fires with the response bytes."""

        def talk():
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                s.sendall(request_bytes)
                try:
                    for chunk in body_chunks:
                        s.sendall(chunk)
                except OSError:
                    pass  # the server may close once it has answered
                return read_all(s)

        return threads.deferToThread(talk)

    def log_files(self):
        return sorted(os.listdir(self.log_dir)) if os.path.isdir(self.log_dir) else []

    def log_lines(self, name):
        with open(os.path.join(self.log_dir, name + ".log"), encoding="ascii") as f:
            return f.read().splitlines()


def in_thread(function, *args):
    """Run a blocking function in a thread of its own (not the reactor's pool, which the
    server needs for its password checks); a Deferred of its result."""
    d = defer.Deferred()

    def run():
        try:
            result = function(*args)
        except BaseException as e:  # handed to the Deferred in the reactor thread
            reactor.callFromThread(d.errback, e)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, daemon=True).start()
    return d


def connect_from(source, port, timeout=10.0):
    """A blocking socket to 127.0.0.1:port from the loopback address `source`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_all(s, limit=1 << 20):
    """What the server sends until it closes (or the socket times out)."""
    out = b""
    while len(out) < limit:
        try:
            data = s.recv(65536)
        except OSError:
            break
        if not data:
            break
        out += data
    return out


def request_bytes(path, body, authorization=None, extra=b""):
    authorization = basic() if authorization is None else authorization
    auth_line = b"Authorization: %s\r\n" % authorization if authorization else b""
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s"
            b"Content-Type: application/x-www-form-urlencoded\r\n%s"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (path.encode(), auth_line, extra, len(body), body))


def parse_answer(raw):
    """(status, body) of one HTTP answer; (None, raw) when there is none."""
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return None, raw
    return int(parts[1]), body


def post_from(source, port, path, body, authorization=None, extra=b"", timeout=10.0):
    """Blocking: one POST from loopback address `source`; (status, body), status None
    when the connection ended without an answer."""
    try:
        with connect_from(source, port, timeout) as s:
            s.sendall(request_bytes(path, body, authorization, extra))
            return parse_answer(read_all(s))
    except OSError as e:
        return None, repr(e).encode()
