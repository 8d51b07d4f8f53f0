"""What the upstream clients (dispatcher, data server) share: reading frames off the
socket, and the factory's bookkeeping of its one connection for a ClientService,
reported to a listener."""
from twisted.application.internet import backoffPolicy
from twisted.internet import protocol


class UpstreamProtocol(protocol.Protocol):
    """Feeds what arrives to `decoder` (a framing decoder) and the frames to
    handle_frames(frames). A corrupt stream (`corrupt_stream`, the framing's exception):
    the frames complete before it are handled, then it is counted, logged once and
    dropped_corrupt() ends the connection. Subclasses set decoder and `dropped`."""

    corrupt_stream = Exception
    dropped = False

    def dataReceived(self, data):
        if self.dropped:
            return
        f = self.factory
        f.stats.incr("bytes", len(data))
        try:
            frames = self.decoder.feed(data)
        except self.corrupt_stream as e:
            self.handle_frames(e.frames)  # complete before the corruption: received intact
            if not self.dropped:
                f.corruption.note("stream", 1, str(e))
                self.dropped_corrupt()
            return
        self.handle_frames(frames)


class UpstreamFactory(protocol.Factory):
    """Keeps `connection` (the live protocol or None), the `connected` gauge and the
    `failures` in a row (bad or corrupt connections) that lengthen the retry delay, and
    calls the listener's optional link_up(p) / link_down(p). Subclasses set `listener`
    and `stats`, then call `_init_link()`."""

    def _init_link(self):
        self.connection = None
        self.failures = 0
        self.stats.set("connected", 0)

    def link_up(self, connection):
        self.connection = connection
        self.stats.incr("connections")
        self.stats.set("connected", 1)
        self._notify("link_up", connection)

    def link_down(self, connection):
        """Once per connection: when it is dropped, or when it closes by itself."""
        if self.connection is not connection:
            return
        self.connection = None
        self.stats.set("connected", 0)
        self._link_gone()
        self._notify("link_down", connection)

    def _link_gone(self):
        """Subclasses reset their own per-connection gauges here."""

    def _notify(self, what, connection):
        method = getattr(self.listener, what, None)
        if method is not None:
            method(connection)

    def retry_policy(self, initial, maximum):
        """Backoff over failed connection attempts and bad connections in a row."""
        base = backoffPolicy(initialDelay=initial, maxDelay=maximum)
        return lambda attempt: base(attempt + self.failures)
