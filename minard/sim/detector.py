"""A synthetic SNO+ detector: event records with a realistic trigger mix and nhit
distribution, a few hot and dead channels, and run/subrun/gtid advancing.

Everything the later SNO+ monitoring derived from the stream shows up (issue 13): hits of
the trigger-sum card FEC/D (crate 17, card 15) with the triggers whose sums it carries;
orphans (trigger word 0 and gtid 0) and events with trigger word 0 and a gtid; front-end
polling (MTC word 5 bit 29) in short periods; the 10 MHz and 50 MHz clocks advancing with
the events' time and, now and then, a clock jump (the 50 MHz clock steps); and a new run
every RUN_SECONDS of simulated time, announced by a run header (RHDR, `take_headers`).

The same object feeds the simulated dispatcher (events) and the simulated data server
(CMOS counts, base currents), so hot and dead channels agree between the two streams.
"""
import time

import numpy as np

from minard.constants import (CLOCK10_NS, CLOCK50_NS, N_CARDS, N_CHANNELS_PER_CARD,
                              TRIGGER_BIT, TRIGGER_SUM_CARD)
from minard.wire import sno

PRESENT_CRATES = list(range(19))
N_HOT = 6
N_DEAD = 25
GTID_MODULO = 1 << 24
#: A new subrun every this many events.
SUBRUN_EVENTS = 200_000
#: A new run every this many seconds of simulated time (each with a run header).
RUN_SECONDS = 600
#: The run header is sent again every this many seconds (a dispatcher may repeat it: a
#: monitor started in the middle of a run learns its type).
HEADER_REPEAT = 60
#: The run type bits (RHDR RunMask) of successive runs: mostly Physics, sometimes others.
RUN_MASKS = (1 << 2, 1 << 2, 1 << 2, 1 << 5, 1 << 2, 1 << 11)
#: The first clock jump (the 50 MHz clock steps by CLOCK_JUMP_TICKS) this many s after the
#: start (a fresh local system shows no alarm for its first 10 minutes, issue 11), then
#: one about every CLOCK_JUMP_SECONDS (± a quarter).
FIRST_CLOCK_JUMP = 1200
CLOCK_JUMP_SECONDS = 3600
CLOCK_JUMP_TICKS = 123_457
#: Front-end polling: POLLING_SECONDS out of every POLLING_EVERY s, this share of the
#: events carry the polling flag.
POLLING_EVERY = 60
POLLING_SECONDS = 3
POLLING_SHARE = 0.2
#: The FEC/D channel whose trigger sum fires with each trigger (constants.FECD_CHANNELS),
#: and the share of events with an N16 (channel 4) hit.
FECD_OF_TRIGGER = (("100L", 28), ("100M", 29), ("100H", 31), ("20", 19), ("20LB", 17))
N16_SHARE = 0.01
#: Events per second of simulated time when events(n) is not told how long n took.
NOMINAL_RATE = 1000


def _bits(*names):
    word = 0
    for name in names:
        word |= 1 << TRIGGER_BIT[name]
    return word


#: (probability, trigger word, nhit mean, nhit spread) of each kind of event.
EVENT_KINDS = [
    (0.600, _bits("100L", "20"), 25, 8),           # low-energy physics / noise
    (0.200, _bits("20", "20LB"), 15, 5),
    (0.080, _bits("100L", "100M", "20", "ESUML"), 60, 20),
    (0.050, _bits("PULGT"), 12, 4),                # pulse GT: noise sampling
    (0.030, _bits("PED"), 30, 10),                 # pedestals
    (0.015, _bits("PRESCL", "100L", "20"), 25, 8),
    (0.006, 0, 10, 3),                             # orphans: trigger word 0, gtid 0
    (0.004, 0, 10, 3),                             # trigger word 0 with a gtid (NONE)
    (0.008, _bits("ESUMH", "100L", "100M", "100H", "20"), 300, 80),
    (0.005, _bits("OWLN", "100L"), 20, 6),
    (0.002, _bits("100L", "100M", "100H", "20", "ESUML", "ESUMH", "OWLN"), 3000, 800),  # muons
]


#: The index in EVENT_KINDS of the orphans (gtid 0, not events).
ORPHAN_KIND = 6
_FECD_FIRST = TRIGGER_SUM_CARD[0] << 9 | TRIGGER_SUM_CARD[1] << 5


class SyntheticDetector:
    def __init__(self, seed=None, run=100000, wall=time.time):
        self.rng = np.random.default_rng(seed)
        self.present_crates = list(PRESENT_CRATES)
        all_channels = np.array([c << 9 | card << 5 | ch for c in self.present_crates
                                 for card in range(N_CARDS) for ch in range(N_CHANNELS_PER_CARD)])
        chosen = self.rng.choice(all_channels, size=N_HOT + N_DEAD, replace=False)
        self.hot_channels = set(int(c) for c in chosen[:N_HOT])
        self.dead_channels = set(int(c) for c in chosen[N_HOT:])
        dead = np.array(sorted(self.dead_channels))
        # the FEC/D carries trigger sums, not PMTs: its hits come with the triggers
        fecd = np.arange(_FECD_FIRST, _FECD_FIRST + N_CHANNELS_PER_CARD)
        self.hot_channels -= set(fecd.tolist())
        self.live_channels = np.setdiff1d(np.setdiff1d(all_channels, dead), fecd)
        self.hot_array = np.array(sorted(self.hot_channels))
        self.faults = None  # minard.sim.faults.Faults: breakage put in on purpose
        self.run = run
        self.subrun = 0
        self.gtid = int(self.rng.integers(0, GTID_MODULO))
        self.events_in_subrun = 0
        # simulated time (s since the start), the clocks' origins, runs and jumps
        self.wall = wall
        self.time = 0.0
        self.clock10_origin = int(self.rng.integers(0, 1 << 48))
        self.clock50_origin = int(self.rng.integers(0, 1 << 41))
        self.clock50_offset = 0
        self.next_jump = float(FIRST_CLOCK_JUMP)
        self.jumps = 0
        self.run_start = 0.0
        self.runs = 0
        self.headers = [self.run_header()]
        self.header_at = 0.0
        probabilities = np.array([k[0] for k in EVENT_KINDS])
        self._cumulative = np.cumsum(probabilities / probabilities.sum())
        self._words = np.array([k[1] for k in EVENT_KINDS], dtype=np.uint32)
        self._means = np.array([k[2] for k in EVENT_KINDS], dtype=np.float64)
        self._spreads = np.array([k[3] for k in EVENT_KINDS], dtype=np.float64)

    def run_header(self):
        """The RHDR record of the current run (SPEC §2.3a), dated by the wall clock."""
        now = time.gmtime(self.wall())
        return sno.rhdr_record(
            self.run, date=now.tm_year * 10000 + now.tm_mon * 100 + now.tm_mday,
            time=(now.tm_hour * 10000 + now.tm_min * 100 + now.tm_sec) * 100,
            run_mask=RUN_MASKS[self.runs % len(RUN_MASKS)],
            crate_mask=sum(1 << c for c in self.present_crates),
            first_gtid=(self.gtid + 1) % GTID_MODULO, valid_gtid=(self.gtid + 1) % GTID_MODULO)

    def take_headers(self):
        """The run headers not sent yet (RHDR records, for the RECHDR tag)."""
        out, self.headers = self.headers, []
        return out

    def events(self, n, seconds=None):
        """n event records (list of bytes) spread over `seconds` of simulated time
        (n / NOMINAL_RATE when not given), advancing gtid, subrun, run and clocks."""
        rng = self.rng
        if seconds is None:
            seconds = n / NOMINAL_RATE
        if self.time - self.run_start >= RUN_SECONDS:
            self.run += 1
            self.runs += 1
            self.subrun = 0
            self.events_in_subrun = 0
            self.run_start = self.time
            self.headers.append(self.run_header())
            self.header_at = self.time
        elif self.time - self.header_at >= HEADER_REPEAT:
            self.headers.append(self.run_header())
            self.header_at = self.time
        kind = np.searchsorted(self._cumulative, rng.random(n))
        kind = np.minimum(kind, len(EVENT_KINDS) - 1)
        trig = self._words[kind]
        orphan = kind == ORPHAN_KIND
        nhit = np.rint(rng.normal(self._means[kind], self._spreads[kind]))
        nhit = np.clip(nhit, 1, 9000).astype(np.int64)
        # a hot channel fires in about half of all events, on top of the others
        hot = rng.random(n) < 0.5
        total = int(nhit.sum())
        channels = self.live_channels[rng.integers(0, len(self.live_channels), total)]
        if hot.any() and len(self.hot_array):
            first_hit = np.cumsum(nhit) - nhit
            channels[first_hit[hot]] = self.hot_array[rng.integers(0, len(self.hot_array),
                                                                   int(hot.sum()))]
        if self.faults is not None:  # a dead card, a hot channel (minard/sim/faults.py)
            self.faults.adjust_hits(self, channels, nhit)
        qhs = np.clip(rng.normal(600, 120, total), 0, 2047).astype(np.int64)
        channels, qhs, hits = self._with_fecd(trig, orphan, channels, qhs, nhit)
        gtids = np.zeros(n, dtype=np.int64)
        events = int((~orphan).sum())
        gtids[~orphan] = (self.gtid + 1 + np.arange(events)) % GTID_MODULO
        if events:
            self.gtid = int(gtids[~orphan][-1])
        # the events' times, their clocks, polling periods and now and then a jump
        at = self.time + seconds * (np.arange(1, n + 1) / n)
        offset = np.full(n, self.clock50_offset, dtype=np.int64)
        if at[-1] >= self.next_jump:
            jump = int(np.searchsorted(at, self.next_jump))
            self.clock50_offset += CLOCK_JUMP_TICKS
            offset[jump:] += CLOCK_JUMP_TICKS
            self.jumps += 1
            self.next_jump += CLOCK_JUMP_SECONDS * float(rng.uniform(0.75, 1.25))
        clock10 = self.clock10_origin + np.rint(at * (1e9 / CLOCK10_NS)).astype(np.int64)
        clock50 = self.clock50_origin + np.rint(at * (1e9 / CLOCK50_NS)).astype(np.int64) + offset
        clock10[orphan] = 0
        clock50[orphan] = 0
        polling = ((at % POLLING_EVERY) < POLLING_SECONDS) & (rng.random(n) < POLLING_SHARE)
        polling &= ~orphan
        self.time += seconds
        records = sno.pmt_records_fast(self.run, self.subrun, gtids, trig, channels, qhs, hits,
                                       clock10=clock10, clock50=clock50, polling=polling)
        self.events_in_subrun += n
        if self.events_in_subrun >= SUBRUN_EVENTS:
            self.events_in_subrun = 0
            self.subrun += 1
        return records

    def _with_fecd(self, trig, orphan, channels, qhs, nhit):
        """The PMT hits of each event followed by its FEC/D hits: one per trigger sum
        that fired (FECD_OF_TRIGGER) and an N16 hit in N16_SHARE of the events. Returns
        (channels, qhs, hits per event)."""
        rng = self.rng
        n = len(trig)
        extra = [((trig >> TRIGGER_BIT[name]) & 1).astype(bool) & ~orphan
                 for name, _ in FECD_OF_TRIGGER]
        extra.append((rng.random(n) < N16_SHARE) & ~orphan)
        fired = np.stack(extra, axis=1)                     # (n, 6)
        fecd_channel = np.array([ch for _, ch in FECD_OF_TRIGGER] + [4]) + _FECD_FIRST
        per_event = fired.sum(axis=1)
        hits = nhit + per_event
        out_channels = np.empty(int(hits.sum()), dtype=np.int64)
        out_qhs = np.empty(len(out_channels), dtype=np.int64)
        start = np.cumsum(hits) - hits
        pmt_at = np.repeat(start - (np.cumsum(nhit) - nhit), nhit) + np.arange(len(channels))
        out_channels[pmt_at] = channels
        out_qhs[pmt_at] = qhs
        ev, which = np.nonzero(fired)
        fecd_at = start[ev] + nhit[ev] + (np.cumsum(fired, axis=1)[ev, which] - 1)
        out_channels[fecd_at] = fecd_channel[which]
        out_qhs[fecd_at] = rng.integers(200, 1800, len(ev))
        return out_channels, out_qhs, hits
