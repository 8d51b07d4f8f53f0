"""Client of the SNO+ data server (SPEC §2.4): subscribe to CMOS and BASE records and
hand every record on, keeping the link healthy.

* On connecting, the client sends `SCmd` with the wanted record ids and waits for the
  `SRsp`. An error reply, or no reply within SUBSCRIBE_TIMEOUT, is logged and the
  connection dropped and retried with a growing delay (the original client never
  noticed a server that ignored it).
* A server that sends no CMOS or BASE record for `silence_timeout` seconds (data-producer
  --idle-timeout, default DATA_SERVER_SILENCE; its crates report about once a second) is
  treated as gone: the connection is dropped and made again. Only records reset this
  clock, not bytes: a stream of zeros or of records nobody asked for is not a live server.
* A stream that cannot be framed (a length above MAX_RECORD_SIZE) is counted
  (`corrupt_stream`), and the connection dropped and made again; so is one that carries
  more than `max_useless` records in a row that were not asked for
  (`corrupt_useless_stream`; zeros frame as records of id 0 and length 0).
* TCP keepalive (minard.ingest.keepalive) notices a host that is gone.
* Dropping a link tells the listener at once (`link_down`), not when the socket closes.
ClientService does the reconnecting, with exponential backoff; bad connections in a row
(refused, silent, corrupt) lengthen the delay.
"""
from twisted.application.internet import ClientService
from twisted.logger import Logger

from minard import constants as C
from minard.ingest.keepalive import enable_keepalive
from minard.ingest.link import UpstreamFactory, UpstreamProtocol
from minard.stats import CorruptionLog
from minard.wire import datastream as ds

WANTED = (C.RECORD_CMOS, C.RECORD_BASE)
#: Bytes read from the socket at once.
READ_SIZE = 1 << 16


class DataServerProtocol(UpstreamProtocol):
    """One connection to the data server."""

    log = Logger()

    corrupt_stream = ds.CorruptStream

    def __init__(self):
        self.decoder = ds.FrameDecoder()
        self.subscribed = False
        self.dropped = False
        self.useless = 0  # records not asked for since the last wanted one (or the reply)
        self.useless_first = None  # the id of the first of them (for the log)
        self._reply_timer = None
        self._silence_timer = None

    def connectionMade(self):
        f = self.factory
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = READ_SIZE
        enable_keepalive(self.transport)
        self.transport.write(ds.encode_subscribe(f.wanted))
        self._reply_timer = f.clock.callLater(f.subscribe_timeout, self._no_reply)
        if f.silence_timeout:
            self._silence_timer = f.clock.callLater(f.silence_timeout, self._silent)
        f.link_up(self)

    def dropped_corrupt(self):
        self.factory.failures += 1
        self.drop("corrupt stream")

    def handle_frames(self, frames):
        """Hand the wanted records on, take the reply, count the rest: once per read, not
        once per record (zeros come by the million)."""
        f = self.factory
        wanted = f.wanted
        records = []
        unexpected = 0
        first_unexpected = None
        run = self.useless  # records in a row that were not asked for
        longest = run
        for frame in frames:
            rid = frame.record_id
            if rid in wanted:
                records.append(frame)
                run = 0
                continue
            if rid == C.RECORD_SRSP:
                useful = not self.subscribed  # replies after the first show no live server
                if records:
                    self._deliver(records)
                    records = []
                if useful:
                    self._alive()
                self._reply(frame)
                if self.dropped:
                    break
                if useful:
                    run = 0
                    continue
            else:
                unexpected += 1
                if first_unexpected is None:
                    first_unexpected = rid
            if run == 0:
                self.useless_first = rid
            run += 1
            longest = max(longest, run)
        self.useless = run
        if unexpected:
            f.stats.incr("unexpected_records", unexpected)
            f.corruption.note("unexpected_record", unexpected, ds.record_name(first_unexpected))
        if records and not self.dropped:
            self._deliver(records)
        if longest > f.max_useless and not self.dropped:
            f.corruption.note("useless_stream", 1, "%d records in a row that were not asked "
                              "for (first %s)" % (longest, ds.record_name(self.useless_first)))
            f.failures += 1
            self.drop("no wanted records")

    def _deliver(self, records):
        self._alive()
        self.factory.on_records(records)

    def _alive(self):
        """A wanted record or the reply: the server is alive (bytes alone do not say so)."""
        if self._silence_timer is not None and self._silence_timer.active():
            self._silence_timer.reset(self.factory.silence_timeout)

    def _reply(self, frame):
        f = self.factory
        message = ds.decode_response(frame.payload)
        self._cancel(self._reply_timer)
        if message == "OK":
            if not self.subscribed:
                self.subscribed = True
                f.subscribed(self)
            return
        f.stats.incr("subscribe_errors")
        f.failures += 1
        f.complain("data server refused the subscription to {ids}: {message!r}; "
                   "reconnecting", ids=", ".join(ds.record_name(i) for i in f.wanted),
                   message=message)
        self.drop("subscription refused")

    def _no_reply(self):
        f = self.factory
        self._reply_timer = None
        f.stats.incr("subscribe_timeouts")
        f.failures += 1
        f.complain("data server did not answer the subscription within {t:g} s; "
                   "reconnecting", t=f.subscribe_timeout)
        self.drop("no subscription reply")

    def _silent(self):
        f = self.factory
        self._silence_timer = None
        f.stats.incr("silent_drops")
        f.failures += 1
        f.corruption.trouble("data_server_silent", "no CMOS or BASE record for %g s "
                             "(%d records not asked for); reconnecting"
                             % (f.silence_timeout, self.useless))
        self.drop("silent")

    def drop(self, why):
        """Drop the link now and say so at once (the socket closes a moment later)."""
        if not self.dropped:
            self.dropped = True
            self._cancel(self._reply_timer)
            self._cancel(self._silence_timer)
            self.factory.stats.incr("drops")
            self.factory.link_down(self)
            self.transport.abortConnection()

    @staticmethod
    def _cancel(call):
        if call is not None and call.active():
            call.cancel()

    def connectionLost(self, reason):
        self._cancel(self._reply_timer)
        self._cancel(self._silence_timer)
        self._reply_timer = self._silence_timer = None
        self.factory.link_down(self)


class DataServerClientFactory(UpstreamFactory):
    """Builds connections for a ClientService and reports to `listener`:
    listener.on_records(frames), and optionally link_up(p), subscribed(p), link_down(p)."""

    protocol = DataServerProtocol
    log = Logger()

    def __init__(self, listener, stats, clock, wanted=WANTED,
                 subscribe_timeout=C.SUBSCRIBE_TIMEOUT, silence_timeout=C.DATA_SERVER_SILENCE,
                 max_useless=C.MAX_USELESS_FRAMES):
        self.listener = listener
        self.stats = stats
        self.clock = clock
        self.wanted = tuple(wanted)
        self.subscribe_timeout = subscribe_timeout
        self.silence_timeout = silence_timeout
        self.max_useless = max_useless
        self.corruption = CorruptionLog(stats, clock=clock.seconds)
        self._init_link()
        self.complained = False  # an error was logged since the last good subscription
        self.stats.set("subscribed", 0)

    def on_records(self, frames):
        self.failures = 0
        self.stats.incr("records", len(frames))
        self.listener.on_records(frames)

    def complain(self, text, **kw):
        """A failed subscription: an error the first time since the last good one (with a
        [monitor] section, an error becomes one alarm), a warning on every retry after
        (a wedged data server must not raise an alarm every 30 s)."""
        (self.log.warn if self.complained else self.log.error)(text, **kw)
        self.complained = True

    def subscribed(self, connection):
        self.failures = 0
        self.complained = False
        self.stats.set("subscribed", 1)
        self.log.info("subscribed to {ids} on the data server",
                      ids=", ".join(ds.record_name(i) for i in self.wanted))
        self._notify("subscribed", connection)

    def _link_gone(self):
        self.stats.set("subscribed", 0)


#: Reconnection delays (s): the first retry, and the most it grows to.
RETRY_INITIAL = 1.0
RETRY_MAX = 30.0


def client_service(endpoint, factory, clock, initial=RETRY_INITIAL, maximum=RETRY_MAX):
    """A ClientService keeping one connection to the data server."""
    return ClientService(endpoint, factory, retryPolicy=factory.retry_policy(initial, maximum),
                         clock=clock)
