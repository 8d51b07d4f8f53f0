"""Clock jumps: the MTC's two clocks must advance together (issue 13, SPEC §2.3a). Pure.

Between two events adjacent in the dispatcher stream, with gtids g -> g' and clocks
(c10, c50) -> (c10', c50'):

* d10 = c10' − c10 (10 MHz ticks of 100 ns, modulo 2^53), d50 = c50' − c50 (50 MHz ticks of
  20 ns, modulo 2^43: the 50 MHz count rolls over every 48.9 hours, which is no jump; the
  upper half of the modulus reads as a step back, which holds for events less than 24 h
  apart — compared events are at most CLOCK_PAIR_WINDOW s apart);
* it is a **clock jump** when the gtid does not advance by exactly one (g' ≠ g + 1 modulo
  2^24: a "gtid jump"), when a clock goes backwards (d10 ≥ 2^52 or d50 ≥ 2^42: the upper
  half of the modulus is a negative step), or when the two clocks disagree:
  |100·d10 − 20·d50| ns > tolerance_ns + tolerance_ppm · 10^-6 · 100·d10 ns (the 50 MHz
  oscillator is free-running: over a long pause between events it drifts by ppm).

Which events are adjacent: inside one batch (one ZeroMQ message of the push, records in
stream order) every consecutive pair, wherever the batch went. Across batches — batches of
one second are spread over the pull workers — each batch's first event (its "head") and
last event (its "tail") are loose ends: a worker pairs its own tail with the head of its
next batch when the gtids are consecutive; all other loose ends go to Redis
(store/analyses.py), where they are put in the push's order (its receipt stamps, which
grow batch after batch) and each tail is paired with the head that follows it once every
worker has passed that time. So every adjacent pair of the stream is compared exactly
once, however the batches were split or spread. Two events more than
`CLOCK_PAIR_WINDOW` s apart in receipt time are not compared (the stream paused: the
detector stopped, minard restarted).
"""
import numpy as np

from minard.constants import (CLOCK10_BITS, CLOCK10_NS, CLOCK50_BITS, CLOCK50_NS,
                              CLOCK_JUMP_TOLERANCE_NS, CLOCK_JUMP_TOLERANCE_PPM, GTID_BITS)

GTID_MASK = (1 << GTID_BITS) - 1
MOD10 = 1 << CLOCK10_BITS
MOD50 = 1 << CLOCK50_BITS
HALF10 = MOD10 >> 1
HALF50 = MOD50 >> 1

#: What kind of jump a pair is (the first that applies).
GTID_JUMP = "gtid"
BACKWARDS_10 = "10MHz backwards"
BACKWARDS_50 = "50MHz backwards"
DISAGREE = "clocks disagree"


class Tolerance:
    """How far the clocks may disagree: `ns` + `ppm` of the elapsed 10 MHz time."""

    __slots__ = ("ns", "ppm")

    def __init__(self, ns=CLOCK_JUMP_TOLERANCE_NS, ppm=CLOCK_JUMP_TOLERANCE_PPM):
        self.ns = float(ns)
        self.ppm = float(ppm)

    def __eq__(self, other):
        return isinstance(other, Tolerance) and (self.ns, self.ppm) == (other.ns, other.ppm)

    def __repr__(self):
        return "Tolerance(ns=%g, ppm=%g)" % (self.ns, self.ppm)


TOLERANCE_KEYS = {"tolerance-ns", "tolerance-ppm"}


def parse_section(section):
    """Tolerance from the `[clock-jumps]` section of the pull workers' INI file
    (`tolerance-ns`, default CLOCK_JUMP_TOLERANCE_NS; `tolerance-ppm`, default
    CLOCK_JUMP_TOLERANCE_PPM); raises ValueError with a one-line reason."""
    section = section or {}
    unknown = set(section) - TOLERANCE_KEYS
    if unknown:
        raise ValueError("[clock-jumps] unknown key %r (known: %s)"
                         % (sorted(unknown)[0], ", ".join(sorted(TOLERANCE_KEYS))))
    values = {}
    for key, default, top in (("tolerance-ns", CLOCK_JUMP_TOLERANCE_NS, 1e12),
                              ("tolerance-ppm", CLOCK_JUMP_TOLERANCE_PPM, 1e6)):
        text = str(section.get(key, default)).strip()
        try:
            value = float(text)
        except ValueError:
            raise ValueError("[clock-jumps] %s must be a number, not %r" % (key, text))
        if not 0 <= value <= top:  # also refuses nan and inf
            raise ValueError("[clock-jumps] %s must be between 0 and %g" % (key, top))
        values[key] = value
    return Tolerance(values["tolerance-ns"], values["tolerance-ppm"])


def signed(delta, modulus):
    """A difference modulo `modulus` as a signed number (the upper half is negative)."""
    return delta - modulus if delta >= modulus >> 1 else delta


def pair_kind(gtid, clock10, clock50, next_gtid, next_clock10, next_clock50, tolerance):
    """(kind or None, d10, d50) of one adjacent pair, d10 and d50 signed ticks.
    The scalar twin of `jumps_in` (store/clock_sweep.lua does the same)."""
    d10 = (next_clock10 - clock10) % MOD10
    d50 = (next_clock50 - clock50) % MOD50
    if (next_gtid - gtid) & GTID_MASK != 1:
        kind = GTID_JUMP
    elif d10 >= HALF10:
        kind = BACKWARDS_10
    elif d50 >= HALF50:
        kind = BACKWARDS_50
    elif abs(CLOCK10_NS * d10 - CLOCK50_NS * d50) > (
            tolerance.ns + tolerance.ppm * 1e-6 * CLOCK10_NS * d10):
        kind = DISAGREE
    else:
        kind = None
    return kind, signed(d10, MOD10), signed(d50, MOD50)


_U64_MOD10 = np.uint64(MOD10 - 1)
_U64_MOD50 = np.uint64(MOD50 - 1)
_U64_HALF10 = np.uint64(HALF10)
_U64_HALF50 = np.uint64(HALF50)
_FIVE = np.uint64(CLOCK10_NS // CLOCK50_NS)


def jumps_in(gtid, clock10, clock50, tolerance):
    """The positions i (into the arrays, stream order) where the pair (i, i + 1) is a
    clock jump, vectorised: gtid u32, clocks u64 arrays of the same length.

    A cheap pass finds the candidates — the clocks' phase 5·c10 − c50 (in 20 ns ticks)
    moving by more than the fixed tolerance, a clock count going down, the gtid not
    advancing by one — and only those are judged exactly (a 50 MHz roll-over or a gtid
    wrap at 2^24 is a candidate, and no jump)."""
    if len(gtid) < 2:
        return np.zeros(0, dtype=np.int64)
    phase = (clock10 * _FIVE - clock50).view(np.int64)
    moved = np.diff(phase)
    np.abs(moved, out=moved)
    suspect = moved > tolerance.ns / CLOCK50_NS
    suspect |= clock10[1:] < clock10[:-1]
    suspect |= clock50[1:] < clock50[:-1]
    suspect |= np.diff(gtid) != 1
    at = np.flatnonzero(suspect)
    if not len(at):
        return at
    g0, g1 = gtid[at], gtid[at + 1]
    d10 = (clock10[at + 1] - clock10[at]) & _U64_MOD10
    d50 = (clock50[at + 1] - clock50[at]) & _U64_MOD50
    bad = (g1 - g0) & GTID_MASK != 1
    bad |= d10 >= _U64_HALF10
    bad |= d50 >= _U64_HALF50
    # the clocks' disagreement in ns (exact in int64: 100 · 2^52 < 2^63)
    gap = np.abs(d10.astype(np.int64) * CLOCK10_NS - d50.astype(np.int64) * CLOCK50_NS)
    allowed = tolerance.ns + tolerance.ppm * 1e-6 * CLOCK10_NS * d10.astype(np.float64)
    bad |= gap > allowed
    return at[bad]


def describe(kind, gtid, next_gtid, d10, d50):
    """One line for a shifter."""
    if kind == GTID_JUMP:
        return "gtid %d -> %d" % (gtid, next_gtid)
    return "%s at gtid %d: 10 MHz %+d ticks (%+.0f ns), 50 MHz %+d ticks (%+.0f ns)" % (
        kind, next_gtid, d10, d10 * CLOCK10_NS, d50, d50 * CLOCK50_NS)
