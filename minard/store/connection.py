"""Connecting to Redis from a redis:// URL, without blocking the reactor."""
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet import defer, endpoints, reactor
from twisted.logger import Logger

#: A reply slower than this is an error: the caller keeps its data and retries.
REPLY_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
#: Longest wait between two reconnection attempts (s).
MAX_RECONNECT_DELAY = 5.0


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


def connect(url, reply_timeout=REPLY_TIMEOUT):
    """A lazy, self-reconnecting txredisapi connection (the handler).

    Commands issued while Redis is away wait for the reconnection; callers that must
    bound what they hold (the pull workers) track their own in-flight work.
    """
    p = parse_redis_url(url)
    factory = KeepTryingFactory(
        "%s:%d" % (p["host"], p["port"]), p["db"] or None, 1, isLazy=True,
        handler=txredisapi.ConnectionHandler, charset="utf-8", password=p["password"],
        replyTimeout=reply_timeout, convertNumbers=False)
    factory.reconnect = True
    factory.startConnecting(endpoints.HostnameEndpoint(
        reactor, p["host"], p["port"], timeout=CONNECT_TIMEOUT))
    return factory.handler
