"""Connecting to Redis from a redis:// URL, without blocking the reactor.

Every command has a deadline (SPEC §5.1: Redis away is a prompt 503, not a hung
request). txredisapi makes a command issued while the connection is down wait for the
reconnection without limit (a known txredisapi behaviour); here it fails with
`RedisUnavailable` when no connection is up within CONNECT_WAIT s, and is then never
sent. A sent command waits for its reply at most the reply timeout (txredisapi's
TimeoutError).
"""
import os
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.internet import defer, endpoints, reactor
from twisted.logger import Logger

#: A reply slower than this is an error: the caller keeps its data and retries.
REPLY_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
#: A command issued while the connection is down waits this long for it (s), then fails.
CONNECT_WAIT = 1.0
#: Longest wait between two reconnection attempts (s).
MAX_RECONNECT_DELAY = 5.0


class RedisUnavailable(txredisapi.ConnectionError):
    """No connection to Redis within CONNECT_WAIT s."""


class DeadlineHandler(txredisapi.ConnectionHandler):
    """txredisapi's handler with a bounded wait for a connection (module docstring). The
    reply itself is bounded by txredisapi's replyTimeout."""

    clock = reactor
    connect_wait = CONNECT_WAIT

    def __getattr__(self, method):
        call = txredisapi.ConnectionHandler.__getattr__(self, method)

        def bounded(*args, **kwargs):
            if any(c.connected for c in self._factory.connectionQueue.pending):
                return call(*args, **kwargs)
            # not connected: wait for a connection (peek: it stays in the pool), at most
            # connect_wait s; a command is sent only once there is one, so a command
            # that failed here was never sent
            waiting = self._factory.getConnection(peek=True)

            def unavailable(result, timeout):
                raise RedisUnavailable("Redis unavailable: no connection within %g s"
                                       % timeout)

            waiting.addTimeout(self.connect_wait, self.clock, onTimeoutCancel=unavailable)
            waiting.addCallback(lambda connection: call(*args, **kwargs))
            return waiting

        return bounded


#: The query parameters of a rediss:// URL: files of the CA that signed the server's
#: certificate, and of this client's certificate and key (when Redis asks for one).
TLS_PARAMETERS = ("ca", "cert", "key")


class RedisURLError(ValueError):
    """A Redis URL minard cannot use; str() is the one-line reason."""


def parse_redis_url(url):
    """A Redis URL -> dict of host, port, db, username, password, tls, ca, cert, key.

    `redis://[[user]:password@]host[:port][/db]` is plain TCP; `rediss://...` is TLS,
    with `?ca=FILE` (the CA that signed Redis's certificate; default: the system's
    trusted roots) and, when Redis requires client certificates, `&cert=FILE&key=FILE`.
    The server's certificate must name the host of the URL. A user name selects a
    Redis ACL user (AUTH user password), none the default user. Raises RedisURLError.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise RedisURLError("must be a URL like redis://:password@127.0.0.1:6379/0 "
                            "(rediss:// for TLS)")
    try:
        port = parts.port
    except ValueError:
        raise RedisURLError("has a bad port")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise RedisURLError("database must be a number, e.g. redis://127.0.0.1:6379/0")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    tls = parts.scheme == "rediss"
    for name, values in query.items():
        if not tls:
            raise RedisURLError("has parameters (%s): only a rediss:// (TLS) URL takes "
                                "ca, cert and key" % name)
        if name not in TLS_PARAMETERS or len(values) != 1 or not values[0]:
            raise RedisURLError("parameter %r: a rediss:// URL takes ca=FILE, cert=FILE, "
                                "key=FILE" % name)
    files = {name: query[name][0] if name in query else None for name in TLS_PARAMETERS}
    if (files["cert"] is None) != (files["key"] is None):
        raise RedisURLError("cert and key go together")
    for name, path in files.items():
        if path is not None and not os.path.isfile(path):
            raise RedisURLError("%s: no such file: %s" % (name, path))
    return dict({
        "host": parts.hostname or "127.0.0.1",
        "port": port or 6379,
        "db": int(db) if db else 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "tls": tls,
    }, **files)


def tls_options(p):
    """Twisted client TLS options of a parsed rediss:// URL: the server's certificate is
    checked against the CA file (else the system's roots) and must name p["host"]."""
    from twisted.internet import ssl

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    trust = ssl.Certificate.loadPEM(read(p["ca"])) if p["ca"] else None
    client = None
    if p["cert"]:
        client = ssl.PrivateCertificate.loadPEM(read(p["cert"]) + b"\n" + read(p["key"]))
    return ssl.optionsForClientTLS(p["host"], trustRoot=trust, clientCertificate=client)


def redis_endpoint(p, reactor=reactor):
    """The client endpoint of a parsed Redis URL: TCP, wrapped in TLS for rediss://."""
    tcp = endpoints.HostnameEndpoint(reactor, p["host"], p["port"], timeout=CONNECT_TIMEOUT)
    if not p["tls"]:
        return tcp
    return endpoints.wrapClientTLS(tls_options(p), tcp)


#: Words of Redis's answers to a refused AUTH (a wrong password or user, Redis 6+).
AUTH_REFUSED = ("WRONGPASS", "NOAUTH", "invalid password", "invalid username")


class KeepTryingFactory(txredisapi.RedisFactory):
    """txredisapi gives up reconnecting for good when AUTH or SELECT fails on a fresh
    connection, and leaves the failure unhandled. A restarting Redis does exactly that
    (it answers LOADING while it reads its snapshot, or drops the connection mid-way):
    minard must come back by itself (SPEC §7), so keep trying, with backoff, and log."""

    log = Logger()
    maxDelay = MAX_RECONNECT_DELAY

    def __init__(self, *args, **kwargs):
        txredisapi.RedisFactory.__init__(self, *args, **kwargs)
        self.deferred.addErrback(lambda f: None)  # nobody waits on it for a lazy handler

    def stopTrying(self):
        if self.disconnectCalled:
            return txredisapi.RedisFactory.stopTrying(self)
        return defer.succeed(None)

    #: minard.stats.Stats of the process (or None): refused connections are counted
    stats = None

    def connectionError(self, why):
        text = str(why)
        if self.stats is not None:
            self.stats.incr("redis_connect_errors")
            if any(word in text for word in AUTH_REFUSED):
                self.stats.incr("redis_auth_refused")
        self.log.warn("Redis {uuid}: {why}; retrying", uuid=self.uuid, why=why)


def connect(url, reply_timeout=REPLY_TIMEOUT, connect_wait=CONNECT_WAIT, stats=None):
    """A lazy, self-reconnecting txredisapi connection (the handler).

    A command waits at most `connect_wait` s for a connection and `reply_timeout` s for
    its reply, then fails (RedisUnavailable, TimeoutError): callers keep their data and
    retry. reply_timeout=None: the command waits for its reply as long as Redis takes
    (for scripts that must not be retried blindly), but never for a connection longer
    than connect_wait. stats: the process's Stats, which count `redis_connect_errors`
    and, among them, `redis_auth_refused` (a wrong user or password).
    """
    p = parse_redis_url(url)

    class Handler(DeadlineHandler):
        pass

    Handler.connect_wait = connect_wait
    factory = KeepTryingFactory(
        "%s:%d" % (p["host"], p["port"]), p["db"] or None, 1, isLazy=True,
        handler=Handler, charset="utf-8", password=p["password"], username=p["username"],
        replyTimeout=reply_timeout, convertNumbers=False)
    factory.reconnect = True
    factory.stats = stats
    factory.startConnecting(redis_endpoint(p))
    return factory.handler
