"""`data-producer`: data server -> ZeroMQ PUSH (SPEC §1, §2.4, §2.5).

Subscribes to CMOS and BASE records (reconnecting with backoff when the server goes away,
refuses, sends only what was not asked for, or sends no record for --idle-timeout
seconds) and pushes each record, header included, stamped with its receipt time, to the
CMOS (5557) or BASE (5558) endpoint: frame 0 = receipt time (int64 big-endian ns), frames
1..n = records. The push side follows dispatch-push's rules: a batch refused at the
high-water mark is held briefly, then dropped and counted; the reactor never blocks. The
data server link is not paused (the server drops for slow clients itself, and a paused
link would look silent).
"""
import time

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.logger import Logger

from minard import constants as C, curve, zmqlink
from minard.ingest.dataserver import DataServerClientFactory, client_service
from minard.services.common import ProcessBase
from minard.services.dispatch_push import Forwarder
from minard.wire import datastream as ds

KINDS = {C.RECORD_CMOS: "cmos", C.RECORD_BASE: "base"}


class DataProducer(Service):
    """Receives records from the data-server client and forwards them by kind."""

    #: CURVE keys of the bound links (minard/curve.py ServerKeys); None: plain text.
    link_keys = None
    log = Logger()

    def __init__(self, options, clock, stats, links=None, now_ns=time.time_ns):
        self.clock = clock
        self.stats = stats
        self.addresses = {"cmos": options["cmos-zmq"], "base": options["base-zmq"]}
        self.links = links or {}
        self.now_ns = now_ns
        self.forwarders = {}
        self.connection = None
        self.is_subscribed = False

    def startService(self):
        Service.startService(self)
        for kind, address in self.addresses.items():
            if kind not in self.links:
                self.links[kind] = zmqlink.PushLink(address, keys=self.link_keys)
            forwarder = Forwarder(self.links[kind], self.stats, self.clock, now_ns=self.now_ns)
            self.forwarders[kind] = forwarder

    def stopService(self):
        Service.stopService(self)
        for forwarder in self.forwarders.values():
            forwarder.stop()
        for link in self.links.values():
            shutdown = getattr(link, "shutdown", None)
            if shutdown is not None:
                shutdown()

    # -- DataServerClientFactory listener --------------------------------------------

    def on_records(self, frames):
        by_kind = {}
        for frame in frames:
            kind = KINDS[frame.record_id]
            by_kind.setdefault(kind, []).append(
                ds.encode_record(frame.record_id, frame.version, frame.payload))
        for kind, records in by_kind.items():
            self.stats.incr("records_" + kind, len(records))
            forwarder = self.forwarders.get(kind)
            if forwarder is None:  # not started (shutting down)
                self.stats.incr("dropped_records", len(records))
                continue
            forwarder.add(records)

    def link_up(self, connection):
        self.connection = connection
        self.log.info("connected to the data server")

    def subscribed(self, connection):
        self.is_subscribed = True

    def link_down(self, connection):
        if self.connection is connection:
            self.connection = None
            self.is_subscribed = False
            for forwarder in self.forwarders.values():
                forwarder.send_batch()
            self.log.info("lost the data server link; reconnecting")

    def status(self):
        if self.connection is None:
            return "data server link down"
        if not self.is_subscribed:
            return "waiting for the data server to accept the subscription"
        return "ok"


def make_service(options, reactor):
    base = ProcessBase(options, "data-producer", heartbeat_name="minard-data-producer")
    producer = DataProducer(options, reactor, base.stats)
    producer.link_keys = curve.link_keys(options, "server", list(producer.addresses.values()),
                                         base.stats, reactor, "data-producer")
    base.status = producer.status
    producer.setServiceParent(base.service)
    factory = DataServerClientFactory(
        producer, base.stats, reactor,
        silence_timeout=options.get("idle-timeout", C.DATA_SERVER_SILENCE))
    endpoint = endpoints.HostnameEndpoint(reactor, options["host"], options["port"], timeout=10)
    client_service(endpoint, factory, reactor).setServiceParent(base.service)
    return base.service
