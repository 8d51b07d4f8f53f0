"""Client of the ControlHost dispatcher (SPEC §2.1): subscribe, receive the event stream,
hand every record on, and keep the link honest.

* On connecting, the client sends `Subscrib`, `Always` and `MyId` and reads frames; the
  RAWDATA and RECHDR payloads (one record each) go to the listener.
* A stream that cannot be framed (a size < 0 or > MAX_RECORD_SIZE) is counted
  (`corrupt_stream`), the connection dropped and made again.
* A stream that carries no records - zeros (frames with an empty tag), tags nobody
  subscribed to, RAWDATA/RECHDR frames too short for a record header - is a corrupt stream
  after more than `max_useless` such frames in a row (`corrupt_useless_stream`).
* No record for `idle_timeout` seconds (no bytes at all, or only frames without records)
  and the link is dropped and made again (`idle_drops`): this catches a hung dispatcher or
  a relay that stopped forwarding without closing. The timer does not run while the link
  is paused for back-pressure. TCP keepalive (minard.ingest.keepalive) catches a host
  that is gone.
* Dropping a link tells the listener at once (`link_down`), not when the socket closes.

ClientService does the reconnecting, with exponential backoff; dropped bad connections in
a row (corrupt, useless) lengthen the delay, a record resets it.
"""
from twisted.application.internet import ClientService

from minard import constants as C
from minard.ingest.keepalive import enable_keepalive
from minard.ingest.link import UpstreamFactory, UpstreamProtocol
from minard.stats import CorruptionLog
from minard.wire.controlhost import CASPUR, CorruptStream, FrameDecoder, tag_bytes, tag_text

CLIENT_ID = "minard"
SUBSCRIPTION = "w RAWDATA w RECHDR"
WANTED_TAGS = (tag_bytes("RAWDATA"), tag_bytes("RECHDR"))
#: A payload shorter than this holds no record (SPEC §2.2: the 12-byte record header).
RECORD_HEADER_SIZE = 12
#: Bytes read from the dispatcher socket per read (bigger reads, fewer Python calls).
READ_SIZE = 1 << 18
#: Idle reconnections of a quiet dispatcher (the detector stopped) are logged at most
#: this often (s); the first of a quiet spell is always logged.
QUIET_LOG_INTERVAL = 600.0
#: Reconnection delays (s): the first retry, and the most it grows to.
RETRY_INITIAL = 0.5
RETRY_MAX = 10.0


class DispatcherProtocol(UpstreamProtocol):
    """One connection to a ControlHost dispatcher."""

    corrupt_stream = CorruptStream

    def __init__(self):
        self.decoder = None
        self.dropped = False
        self.corrupt = False   # dropped for corrupt input: the buffered rest is garbage
        self.idle_dropped = False  # dropped by the idle timeout
        self.paused = False
        self.useless = 0       # frames without a record since the last record
        self.useless_tag = None  # the tag of the first of them (for the log)
        self._idle_timer = None

    # -- the link -------------------------------------------------------------------------

    def connectionMade(self):
        f = self.factory
        self.decoder = FrameDecoder(f.dialect)
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = READ_SIZE
        enable_keepalive(self.transport)
        self.transport.write(f.dialect.client_handshake(f.subscription, f.client_id))
        self._arm()
        f.link_up(self)

    def dropped_corrupt(self):
        self.factory.stats.incr("corrupt_streams_dropped")
        self.drop_corrupt()

    def handle_frames(self, frames):
        if not frames:
            return
        f = self.factory
        stats = f.stats
        stats.incr("frames", len(frames))
        records = [payload for tag, payload in frames if tag in WANTED_TAGS]
        ignored = len(frames) - len(records)
        if ignored:
            stats.incr("ignored_frames", ignored)
        f.on_frames(frames, records)
        if not ignored and min(map(len, records)) >= RECORD_HEADER_SIZE:
            self.useless = 0  # the usual case: every frame a record
            self._record_seen()
            return
        longest, useful = self._count_useless(frames)
        if useful:
            self._record_seen()
        if longest > f.max_useless and not self.dropped:
            f.corruption.note("useless_stream", 1, "%d frames in a row without a record "
                              "(first tag %r)" % (longest, self.useless_tag))
            self.drop_corrupt()

    def _count_useless(self, frames):
        """Longest run of frames without a record (carried over from earlier reads), and
        whether any frame held a record; leaves the trailing run in self.useless."""
        run = self.useless
        longest = 0
        useful = False
        for tag, payload in frames:
            if tag in WANTED_TAGS and len(payload) >= RECORD_HEADER_SIZE:
                useful = True
                longest = max(longest, run)
                run = 0
            else:
                if run == 0:
                    self.useless_tag = tag_text(tag)
                run += 1
        self.useless = run
        return max(longest, run), useful

    def _record_seen(self):
        self.factory.record_seen()
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.factory.idle_timeout)

    # -- the idle timeout (paused while back-pressure holds the socket) ---------------------

    def _arm(self):
        self._cancel_idle()
        timeout = self.factory.idle_timeout
        if timeout and not self.paused and not self.dropped:
            self._idle_timer = self.factory.clock.callLater(timeout, self._idle)

    def _cancel_idle(self):
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _idle(self):
        self._idle_timer = None
        f = self.factory
        f.stats.incr("idle_drops")
        f.quiet_log.trouble("dispatcher_idle", "no record from the dispatcher for %g s "
                            "(%d frames without one); reconnecting. A stopped detector "
                            "sends nothing; a hung dispatcher or a dead link looks the "
                            "same" % (f.idle_timeout, self.useless))
        self.idle_dropped = True
        self.drop()

    def pauseProducing(self):
        """Back-pressure: stop reading the socket (and the idle clock with it)."""
        self.paused = True
        self._cancel_idle()
        if not self.dropped:
            self.transport.pauseProducing()

    def resumeProducing(self):
        self.paused = False
        if not self.dropped:
            self.transport.resumeProducing()
            self._arm()

    # -- dropping ---------------------------------------------------------------------------

    def drop_corrupt(self):
        """A corrupt stream: drop it, and wait longer before each such connection in a row."""
        self.corrupt = True
        self.factory.failures += 1
        self.drop()

    def drop(self):
        """Drop the link now and say so at once (the socket closes a moment later)."""
        if self.dropped:
            return
        self.dropped = True
        self._cancel_idle()
        self.factory.stats.incr("drops")
        self.factory.link_down(self)
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._cancel_idle()
        if self.decoder is not None and self.decoder.buffered and not self.decoder.corrupt \
                and not self.corrupt:
            # the link went away in the middle of a frame: that record never came
            self.factory.stats.incr("partial_frames_dropped")
        self.factory.link_down(self)


class DispatcherClientFactory(UpstreamFactory):
    """Builds connections for a ClientService and reports to `listener`:
    listener.on_records(payloads); optionally on_frames(frames) (every frame, as
    (raw tag, payload)), link_up(connection), link_down(connection).

    The connection is an IPushProducer: the listener pauses it for back-pressure."""

    protocol = DispatcherProtocol
    noisy = False  # no "Starting factory" line per connection (one a minute when quiet)

    def __init__(self, listener, stats, clock, dialect=CASPUR, subscription=SUBSCRIPTION,
                 client_id=CLIENT_ID, idle_timeout=C.DISPATCHER_IDLE_TIMEOUT,
                 max_useless=C.MAX_USELESS_FRAMES):
        self.listener = listener
        self.stats = stats
        self.clock = clock
        self.dialect = dialect
        self.subscription = subscription
        self.client_id = client_id
        self.idle_timeout = idle_timeout
        self.max_useless = max_useless
        self.corruption = CorruptionLog(stats, clock=clock.seconds)
        self.quiet_log = CorruptionLog(stats, interval=QUIET_LOG_INTERVAL, clock=clock.seconds)
        self._init_link()

    def on_frames(self, frames, records):
        frames_method = getattr(self.listener, "on_frames", None)
        if frames_method is not None:
            frames_method(frames)
        self.stats.incr("records", len(records))
        self.listener.on_records(records)

    def record_seen(self):
        self.failures = 0

    def retry_policy(self, initial=RETRY_INITIAL, maximum=RETRY_MAX):
        return UpstreamFactory.retry_policy(self, initial, maximum)


def client_service(endpoint, factory, clock, initial=RETRY_INITIAL, maximum=RETRY_MAX):
    """A ClientService keeping one connection to the dispatcher."""
    return ClientService(endpoint, factory, retryPolicy=factory.retry_policy(initial, maximum),
                         clock=clock)
