"""A synthetic SNO+ detector: event records with a realistic trigger mix and nhit
distribution, a few hot and dead channels, and run/subrun/gtid advancing.

The same object feeds the simulated dispatcher (events) and the simulated data server
(CMOS counts, base currents), so hot and dead channels agree between the two streams.
"""
import numpy as np

from minard.constants import N_CARDS, N_CHANNELS_PER_CARD, TRIGGER_BIT
from minard.wire import sno

PRESENT_CRATES = list(range(19))
N_HOT = 6
N_DEAD = 25
GTID_MODULO = 1 << 24
#: A new subrun every this many events.
SUBRUN_EVENTS = 200_000


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
    (0.010, 0, 10, 3),                             # orphans: trigger word 0
    (0.008, _bits("ESUMH", "100L", "100M", "100H", "20"), 300, 80),
    (0.005, _bits("OWLN", "100L"), 20, 6),
    (0.002, _bits("100L", "100M", "100H", "20", "ESUML", "ESUMH", "OWLN"), 3000, 800),  # muons
]


class SyntheticDetector:
    def __init__(self, seed=None, run=100000):
        self.rng = np.random.default_rng(seed)
        self.present_crates = list(PRESENT_CRATES)
        all_channels = np.array([c << 9 | card << 5 | ch for c in self.present_crates
                                 for card in range(N_CARDS) for ch in range(N_CHANNELS_PER_CARD)])
        chosen = self.rng.choice(all_channels, size=N_HOT + N_DEAD, replace=False)
        self.hot_channels = set(int(c) for c in chosen[:N_HOT])
        self.dead_channels = set(int(c) for c in chosen[N_HOT:])
        dead = np.array(sorted(self.dead_channels))
        self.live_channels = np.setdiff1d(all_channels, dead)
        self.hot_array = np.array(sorted(self.hot_channels))
        self.run = run
        self.subrun = 0
        self.gtid = int(self.rng.integers(0, GTID_MODULO))
        self.events_in_subrun = 0
        probabilities = np.array([k[0] for k in EVENT_KINDS])
        self._cumulative = np.cumsum(probabilities / probabilities.sum())
        self._words = np.array([k[1] for k in EVENT_KINDS], dtype=np.uint32)
        self._means = np.array([k[2] for k in EVENT_KINDS], dtype=np.float64)
        self._spreads = np.array([k[3] for k in EVENT_KINDS], dtype=np.float64)

    def events(self, n):
        """n event records (list of bytes), advancing gtid and subrun."""
        rng = self.rng
        kind = np.searchsorted(self._cumulative, rng.random(n))
        kind = np.minimum(kind, len(EVENT_KINDS) - 1)
        trig = self._words[kind]
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
        qhs = np.clip(rng.normal(600, 120, total), 0, 2047).astype(np.int64)
        gtids = (self.gtid + 1 + np.arange(n)) % GTID_MODULO
        self.gtid = int(gtids[-1])
        records = sno.pmt_records_fast(self.run, self.subrun, gtids, trig, channels, qhs, nhit)
        self.events_in_subrun += n
        if self.events_in_subrun >= SUBRUN_EVENTS:
            self.events_in_subrun = 0
            self.subrun += 1
        return records
