"""Connecting to Redis from a redis:// URL, without blocking the reactor."""
from urllib.parse import unquote, urlsplit

import txredisapi

#: A reply slower than this is an error: the caller keeps its data and retries.
REPLY_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0


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


def connect(url, reply_timeout=REPLY_TIMEOUT):
    """A lazy, self-reconnecting txredisapi connection.

    Commands issued while Redis is away wait for the reconnection; callers that must
    bound what they hold (the pull workers) track their own in-flight work.
    """
    p = parse_redis_url(url)
    return txredisapi.lazyConnection(
        host=p["host"], port=p["port"], dbid=p["db"], password=p["password"],
        reconnect=True, connectTimeout=CONNECT_TIMEOUT, replyTimeout=reply_timeout,
        convertNumbers=False)
