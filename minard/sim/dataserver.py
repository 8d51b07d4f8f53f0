"""A simulated SNO+ data server (SPEC §2.4) fed by the synthetic detector.

It answers `SCmd` subscriptions like the real one (`OK`, or an error text with version 0
for an unknown record type or command) and sends each subscribed client CMOS and BASE
records for every present crate about once a second: two CMOS records per crate (slots
0-7 and 8-15; a record carries counts for at most 8 slots) and one BASE record. The hot
and dead channels are the detector's, so the data stream agrees with the event stream:
a hot channel has a high CMOS rate (and a high occupancy), a dead one counts nothing; so
do the faults put in on purpose (the detector's `faults`, minard/sim/faults.py).
Counts increase by Poisson draws of each channel's rate, wrap at 2^31 (a few channels
start close to it), and now and then carry the invalid bit. Like the real server it never
blocks on a slow client: records for a client whose socket is full are dropped.
"""
import numpy as np
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints, protocol, task
from twisted.logger import Logger

from minard import constants as C
from minard.sim.clients import DroppingClient
from minard.wire import datastream as ds

#: Record types this server knows (others are refused with "unknown record type").
KNOWN_RECORDS = (C.RECORD_CMOS, C.RECORD_BASE, C.RECORD_PMT, C.RECORD_RHDR,
                 C.RECORD_TRIG, C.RECORD_EPED)
MAX_SUBSCRIPTIONS = 16
#: Each crate reports once per this many seconds.
REPORT_PERIOD = 1.0
#: CMOS rates (Hz): ordinary channels, hot channels.
NOISE_RATE = (100.0, 1500.0)
HOT_RATE = (20000.0, 60000.0)
COUNT_MODULO = 1 << 31
#: Fraction of channels whose counter starts less than WRAP_SOON seconds from wrapping.
WRAPPING_FRACTION = 0.01
WRAP_SOON = 60.0
#: Probability that one reported count is marked invalid.
INVALID_PROBABILITY = 0.001
#: Fraction of channels masked out in the crates' channel masks.
MASKED_FRACTION = 0.005


class DataServerConnection(DroppingClient):
    """One client of the simulated data server."""

    log = Logger()

    def __init__(self):
        self.decoder = ds.FrameDecoder()
        self.subscription = frozenset()

    def dataReceived(self, data):
        try:
            frames = self.decoder.feed(data)
        except ds.CorruptStream:
            self.transport.abortConnection()
            return
        for frame in frames:
            if frame.record_id == C.RECORD_SCMD:
                self.subscribe(frame)

    def subscribe(self, frame):
        f = self.factory
        if f.answer is False:
            return  # like the old test server: never answers
        if f.refuse is not None:
            self.transport.write(ds.encode_response(f.refuse, 0))
            return
        if frame.version != ds.SUBSCRIBE_VERSION:
            self.transport.write(ds.encode_response("unknown command type", 0))
            return
        try:
            ids = ds.decode_subscribe(frame.payload)
        except ds.CorruptRecord:
            self.transport.write(ds.encode_response("unknown record type", 0))
            return
        if any(i not in KNOWN_RECORDS for i in ids):
            self.transport.write(ds.encode_response("unknown record type", 0))
            return
        if len(ids) > MAX_SUBSCRIPTIONS:
            self.transport.write(ds.encode_response("too many subscriptions"))
            return
        self.subscription = frozenset(ids)  # a new subscription replaces the old one
        self.transport.write(ds.encode_response("OK"))

    def send(self, record_id, message):
        if record_id not in self.subscription:
            return
        if self.paused:
            self.factory.missed += 1
            return
        self.transport.write(message)


class DataServerFactory(protocol.Factory):
    """`answer=False` makes a server that ignores subscriptions; `refuse="text"` one that
    answers every subscription with that error."""

    protocol = DataServerConnection

    def __init__(self, answer=True, refuse=None):
        self.clients = set()
        self.answer = answer
        self.refuse = refuse
        self.missed = 0

    def broadcast(self, record_id, message):
        for client in list(self.clients):
            client.send(record_id, message)


class CrateReadout:
    """The CMOS counters and base currents of the detector's present crates."""

    def __init__(self, detector):
        rng = self.rng = detector.rng
        self.detector = detector  # its .faults (minard/sim/faults.py) apply here too
        self.crates = list(detector.present_crates)
        n = C.N_CHANNELS
        self.rate = rng.uniform(*NOISE_RATE, n)
        hot = np.array(sorted(detector.hot_channels), dtype=np.int64)
        dead = np.array(sorted(detector.dead_channels), dtype=np.int64)
        if len(hot):
            self.rate[hot] = rng.uniform(*HOT_RATE, len(hot))
        if len(dead):
            self.rate[dead] = 0.0
        self.count = rng.integers(0, COUNT_MODULO, n, dtype=np.int64)
        wrapping = rng.random(n) < WRAPPING_FRACTION
        self.count[wrapping] = (COUNT_MODULO
                                - (self.rate[wrapping] * rng.uniform(1, WRAP_SOON,
                                                                     wrapping.sum())
                                   ).astype(np.int64) - 1)
        masked_in = rng.random(n) >= MASKED_FRACTION
        bits = (masked_in.reshape(C.N_CRATES, C.N_CARDS, 32).astype(np.uint64)
                << np.arange(32, dtype=np.uint64))
        self.channel_masks = bits.sum(axis=2).astype(np.uint32)  # [crate, slot]
        # base currents: a steady offset per channel, noisier on hot channels
        self.current = rng.normal(0.0, 2.0, n)
        if len(hot):
            self.current[hot] += rng.uniform(5, 20, len(hot))
        if len(dead):
            self.current[dead] = rng.uniform(-30, -10, len(dead))
        self.last_read = {}

    def read(self, crate, now):
        """The records of one crate at time `now`: (record id, full message) pairs.

        With faults (minard/sim/faults.py): a dead card's slot is left out of the slot
        masks (no counts, no currents; its counter stands still), a hot or noisy channel
        counts at its fault's rate, a drifting base current moves."""
        rng = self.rng
        faults = getattr(self.detector, "faults", None)  # (a stand-in may have none)
        lo, hi = crate << 9, (crate + 1) << 9
        slots = (1 << C.N_CARDS) - 1 if faults is None else faults.present_slots(crate)
        last = self.last_read.get(crate)
        self.last_read[crate] = now
        if last is not None and now > last:
            rates = self.rate[lo:hi]
            if faults is not None:
                rates = faults.cmos_rates(crate, rates, rng)
            added = rng.poisson(rates * (now - last))
            added[np.repeat([(slots >> s) & 1 == 0 for s in range(C.N_CARDS)], 32)] = 0
            self.count[lo:hi] = (self.count[lo:hi] + added) % COUNT_MODULO
        counts = self.count[lo:hi].astype(np.uint32)
        invalid = rng.random(512) < INVALID_PROBABILITY
        counts[invalid] |= np.uint32(C.CMOS_INVALID_BIT)
        masks = self.channel_masks[crate]
        out = []
        for first in (0, 8):
            mask = slots & (0xFF << first)
            # counts of the slots in the mask, ascending, 32 each (SPEC §2.4)
            present = [s for s in range(first, first + 8) if mask >> s & 1]
            packed = (np.concatenate([counts[s * 32:(s + 1) * 32] for s in present])
                      if present else np.zeros(0, dtype=np.uint32))
            payload = ds.encode_cmos(crate, mask, masks, packed)
            out.append((C.RECORD_CMOS, ds.encode_record(C.RECORD_CMOS, 0, payload)))
        current = self.current[lo:hi]
        if faults is not None:
            current = current + faults.base_offsets(crate, now)
        raw = np.clip(np.rint(C.BASE_CURRENT_OFFSET + current
                              + rng.normal(0, 0.7, 512)), 0, 255).astype(np.uint8)
        payload = ds.encode_base(crate, slots, masks, raw)
        out.append((C.RECORD_BASE, ds.encode_record(C.RECORD_BASE, 0, payload)))
        return out


class ReadoutService(Service):
    """Reads one crate at a time, spread over the report period."""

    log = Logger()

    def __init__(self, factory, readout, clock, period=REPORT_PERIOD):
        self.factory = factory
        self.readout = readout
        self.clock = clock
        self.period = period
        self._next = 0
        self._loop = None

    def startService(self):
        Service.startService(self)
        self._loop = task.LoopingCall(self.step)
        self._loop.clock = self.clock
        step = self.period / max(1, len(self.readout.crates))
        self._loop.start(step, now=False).addErrback(
            lambda f: self.log.failure("data server simulation stopped", f))

    def stopService(self):
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def step(self):
        try:
            crates = self.readout.crates
            if not crates:
                return
            crate = crates[self._next % len(crates)]
            self._next += 1
            for record_id, message in self.readout.read(crate, self.clock.seconds()):
                self.factory.broadcast(record_id, message)
        except Exception:
            self.log.failure("simulated crate readout failed")


def data_server_service(endpoint_string, detector, reactor, factory=None):
    """The simulated data server: a listener on `endpoint_string` and the crate readout."""
    service = MultiService()
    factory = factory or DataServerFactory()
    StreamServerEndpointService(endpoints.serverFromString(reactor, endpoint_string),
                                factory).setServiceParent(service)
    ReadoutService(factory, CrateReadout(detector), reactor).setServiceParent(service)
    service.factory = factory
    return service
