"""Connecting to Redis from a redis:// URL, without blocking the reactor.

Every command has a deadline (SPEC §5.1: Redis away is a prompt 503, not a hung
request). txredisapi makes a command issued while the connection is down wait for the
reconnection without limit (a known txredisapi behaviour); here it fails with
`RedisUnavailable` when no connection is up within CONNECT_WAIT s, and is then never
sent. A sent command waits for its reply at most the reply timeout (txredisapi's
TimeoutError).
"""
from urllib.parse import unquote, urlsplit

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


def parse_redis_url(url):
    """redis://[:password@]host[:port][/db] -> dict of host, port, db, password."""
    parts = urlsplit(url)
    db = parts.path.lstrip("/")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": int(db) if db else 0,
        "password": unquote(parts.password) if parts.password else None,
    }


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

    def connectionError(self, why):
        self.log.warn("Redis {uuid}: {why}; retrying", uuid=self.uuid, why=why)


def connect(url, reply_timeout=REPLY_TIMEOUT, connect_wait=CONNECT_WAIT):
    """A lazy, self-reconnecting txredisapi connection (the handler).

    A command waits at most `connect_wait` s for a connection and `reply_timeout` s for
    its reply, then fails (RedisUnavailable, TimeoutError): callers keep their data and
    retry. reply_timeout=None: the command waits for its reply as long as Redis takes
    (for scripts that must not be retried blindly), but never for a connection longer
    than connect_wait.
    """
    p = parse_redis_url(url)

    class Handler(DeadlineHandler):
        pass

    Handler.connect_wait = connect_wait
    factory = KeepTryingFactory(
        "%s:%d" % (p["host"], p["port"]), p["db"] or None, 1, isLazy=True,
        handler=Handler, charset="utf-8", password=p["password"],
        replyTimeout=reply_timeout, convertNumbers=False)
    factory.reconnect = True
    factory.startConnecting(endpoints.HostnameEndpoint(
        reactor, p["host"], p["port"], timeout=CONNECT_TIMEOUT))
    return factory.handler
