"""SNO+ records (SPEC §2.2-2.3a): the record header, the PMT event record and its hits, and
the run header.

Decoding is vectorised: a whole batch of records (as they arrive in one ZeroMQ message)
becomes numpy arrays in a handful of array operations, never a Python loop per hit or per
event. All SNO+ records are big-endian; bit 0 is the least significant bit.

What an event carries besides its trigger word (SPEC §2.3a, §3):
* MTC words w0..w2 hold the clocks: 10 MHz count (53 bits, 100 ns ticks) =
  `w0 | (w1 & 0x1FFFFF) << 32`; 50 MHz count (43 bits, 20 ns ticks) =
  `(w1 >> 21) | w2 << 11`.
* MTC word w5 bit 29 (`Unused1`) marks front-end polling.
* An orphan is a record with trigger word 0 **and** gtid 0: hits without an event.
* Hits of the trigger-sum card FEC/D (crate 17, card 15: `constants.TRIGGER_SUM_CARD`) are
  not PMT hits: they are left out of nhit and charge (not out of the hit counts).
"""
import struct

import numpy as np

from minard.constants import (CLOCK10_BITS, CLOCK50_BITS, N_CHANNELS, N_CRATES,
                              POLLING_BIT, RECORD_PMT, RECORD_RHDR, TRIGGER_SUM_CARD)

HEADER_SIZE = 12
PMT_FIXED_SIZE = 44
HITS_OFFSET = HEADER_SIZE + PMT_FIXED_SIZE  # 56: hits start here in the record
HIT_SIZE = 12
GTID_MASK = 0xFFFFFF
TRIGGER_W4_MASK = 0x7FFFF
QHS_MASK = 0x7FF
CLOCK10_HIGH_MASK = 0x1FFFFF  # w1 bits 0-20: the 10 MHz count's high 21 bits
CLOCK10_MASK = (1 << CLOCK10_BITS) - 1
CLOCK50_MASK = (1 << CLOCK50_BITS) - 1

_HEADER = struct.Struct(">III")
_PMT_FIXED = struct.Struct(">HHIIHHI6I")
_HIT = struct.Struct(">III")

#: RHDR (SPEC §2.3a; SNO+ `RunRecord`, the run header of the builder on the RECHDR tag):
#: after the 12-byte record header, 18 big-endian u32 at these offsets (bytes from the
#: start of the payload): 0 Date (yyyymmdd), 4 Time (hhmmsscc, centiseconds), 8 SubFile,
#: 12 RunNumber, 16 CalibrationTrialNumber, 20 SourceMask, 24 RunMask (run type bits),
#: 28 GTCrateMask (crates in the run), 32 FirstGTID, 36 ValidGTID, 40-71 eight spares.
RHDR_FIELDS = ("date", "time", "subfile", "run", "calibration_trial", "source_mask",
               "run_mask", "crate_mask", "first_gtid", "valid_gtid")
RHDR_WORDS = 18
RHDR_SIZE = 4 * RHDR_WORDS
_RHDR = struct.Struct(">%dI" % RHDR_WORDS)

# word offsets inside a record (header included), records being 4-aligned
_W_RUN = (HEADER_SIZE + 4) // 4
_W_SUBRUN_NHIT = (HEADER_SIZE + 12) // 4   # DaqStatus << 16 | NPmtHit
_W_MTC = (HEADER_SIZE + 20) // 4           # w0; w1..w5 follow
# byte offsets inside a record (the unaligned path)
_OFF_RUN = HEADER_SIZE + 4
_OFF_SUBRUN = HEADER_SIZE + 12
_OFF_MTC = HEADER_SIZE + 20

#: Bits 16-29 of hit word 1 (channel 0-4, crate 5-9, card 10-13) of the FEC/D's channels.
FECD_BITS_FIRST = TRIGGER_SUM_CARD[1] << 10 | TRIGGER_SUM_CARD[0] << 5
FECD_BITS_LAST = FECD_BITS_FIRST + 31
#: The crates above the FEC/D's crate on the same card number have higher bits: a hit
#: whose 14 bits are >= FECD_BITS_FIRST is on card 15 of crate >= 17 (1 % of hits).


# -- building records (tests, simulator) ---------------------------------------------

def record_header(record_id, length, version=0):
    return _HEADER.pack(record_id, length, version)


def mtc_words(gtid, trigger_word, clock10=0, clock50=0, polling=False):
    """The 6 MTC words carrying a gtid, a 27-bit trigger word, both clocks (SPEC §2.3a)
    and the polling flag (w5 bit 29)."""
    clock10 &= CLOCK10_MASK
    clock50 &= CLOCK50_MASK
    w0 = clock10 & 0xFFFFFFFF
    w1 = (clock10 >> 32) & CLOCK10_HIGH_MASK | (clock50 & 0x7FF) << 21
    w2 = clock50 >> 11
    w3 = (gtid & GTID_MASK) | (trigger_word & 0xFF) << 24
    w4 = (trigger_word >> 8) & TRIGGER_W4_MASK
    w5 = (1 << POLLING_BIT) if polling else 0
    return (w0, w1, w2, w3, w4, w5)


def hit_words(crate, card, channel, qhs=0, gtid=0, qlx=0, qhl=0, tac=0, cell=0):
    """One PMT hit as its three big-endian words (SPEC §2.3)."""
    w1 = (gtid & 0xFFFF) | (channel & 0x1F) << 16 | (crate & 0x1F) << 21 | (card & 0xF) << 26
    w2 = (qlx & 0x7FF) | (cell & 0xF) << 12 | (qhs & QHS_MASK) << 16
    w3 = (qhl & 0x7FF) | ((gtid >> 16) & 0xF) << 12 | (tac & 0x7FF) << 16 | ((gtid >> 20) & 0xF) << 28
    return w1, w2, w3


def pmt_record(run, gtid, trigger_word, hits=(), subrun=0, event_number=0, extra=b"",
               clock10=0, clock50=0, polling=False):
    """A complete 'PMT ' record. hits: iterable of (crate, card, channel, qhs)."""
    hits = list(hits)
    body = [_PMT_FIXED.pack(0, 0, run, event_number, subrun, len(hits), 0,
                            *mtc_words(gtid, trigger_word, clock10, clock50, polling))]
    for crate, card, channel, qhs in hits:
        body.append(_HIT.pack(*hit_words(crate, card, channel, qhs, gtid=gtid)))
    body.append(extra)
    payload = b"".join(body)
    return record_header(RECORD_PMT, len(payload)) + payload


def rhdr_record(run, date=0, time=0, subfile=0, calibration_trial=0, source_mask=0,
                run_mask=0, crate_mask=0, first_gtid=0, valid_gtid=0):
    """A complete 'RHDR' run header record (SPEC §2.3a; spares zero)."""
    payload = _RHDR.pack(date, time, subfile, run, calibration_trial, source_mask, run_mask,
                         crate_mask, first_gtid, valid_gtid, *([0] * 8))
    return record_header(RECORD_RHDR, len(payload)) + payload


def pmt_records_fast(run, subrun, gtids, trigger_words, channels, qhs, nhits,
                     clock10=None, clock50=None, polling=None):
    """Many 'PMT ' records at once, vectorised (the simulator's hot path).

    channels and qhs are flat arrays of all hits; nhits says how many belong to each event.
    run may be one number or one per event; clock10, clock50 (counts) and polling (bools)
    are per event, or None for 0. Returns a list of record bytes.
    """
    n = len(gtids)
    nhits = np.asarray(nhits, dtype=np.int64)
    lengths = HITS_OFFSET + HIT_SIZE * nhits
    total = int(lengths.sum())
    words = np.zeros(total // 4, dtype=">u4")
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    w = starts // 4
    words[w] = RECORD_PMT
    words[w + 1] = lengths - HEADER_SIZE
    words[w + 4] = np.asarray(run, dtype=np.uint32)
    words[w + 6] = (np.asarray(subrun, dtype=np.uint32) << 16) | nhits.astype(np.uint32)
    gtids = np.asarray(gtids, dtype=np.uint32)
    trig = np.asarray(trigger_words, dtype=np.uint32)
    if clock10 is not None:
        c10 = np.asarray(clock10, dtype=np.uint64) & np.uint64(CLOCK10_MASK)
        words[w + _W_MTC] = (c10 & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        words[w + _W_MTC + 1] = ((c10 >> np.uint64(32)).astype(np.uint32) & CLOCK10_HIGH_MASK)
    if clock50 is not None:
        c50 = np.asarray(clock50, dtype=np.uint64) & np.uint64(CLOCK50_MASK)
        words[w + _W_MTC + 1] |= (c50 & np.uint64(0x7FF)).astype(np.uint32) << 21
        words[w + _W_MTC + 2] = (c50 >> np.uint64(11)).astype(np.uint32)
    words[w + _W_MTC + 3] = (gtids & GTID_MASK) | (trig & 0xFF) << 24
    words[w + _W_MTC + 4] = (trig >> 8) & TRIGGER_W4_MASK
    if polling is not None:
        words[w + _W_MTC + 5] = np.asarray(polling, dtype=np.uint32) << POLLING_BIT
    if len(channels):
        channels = np.asarray(channels, dtype=np.uint32)
        crate, card, ch = channels >> 9, (channels >> 5) & 0xF, channels & 0x1F
        first = np.repeat(w + HITS_OFFSET // 4, nhits)
        k = np.arange(len(channels)) - np.repeat(np.cumsum(nhits) - nhits, nhits)
        hw = first + 3 * k
        hit_gtid = np.repeat(gtids, nhits)
        words[hw] = (hit_gtid & 0xFFFF) | ch << 16 | crate << 21 | card << 26
        words[hw + 1] = (np.asarray(qhs, dtype=np.uint32) & QHS_MASK) << 16
        words[hw + 2] = ((hit_gtid >> 16) & 0xF) << 12 | ((hit_gtid >> 20) & 0xF) << 28
    raw = words.tobytes()
    ends = starts + lengths
    return [raw[s:e] for s, e in zip(starts.tolist(), ends.tolist())]


def trigger_word(w3, w4):
    """The 27-bit trigger word from MTC words 3 and 4."""
    return (w3 >> 24) & 0xFF | (w4 & TRIGGER_W4_MASK) << 8


def clocks(w0, w1, w2):
    """(10 MHz count, 50 MHz count) from MTC words 0-2 (SPEC §2.3a)."""
    return w0 | (w1 & CLOCK10_HIGH_MASK) << 32, (w1 >> 21) | w2 << 11


def channel_of(w1):
    """Channel index crate << 9 | card << 5 | channel from hit word 1."""
    crate = (w1 >> 21) & 0x1F
    card = (w1 >> 26) & 0xF
    channel = (w1 >> 16) & 0x1F
    return crate << 9 | card << 5 | channel


def decode_rhdr(record):
    """{field: value} of an RHDR record (RHDR_FIELDS), or None when it is too short for
    its 18 words (SPEC §2.3a: corrupt)."""
    if len(record) < HEADER_SIZE + RHDR_SIZE:
        return None
    words = _RHDR.unpack_from(record, HEADER_SIZE)
    return dict(zip(RHDR_FIELDS, words))


# -- decoding a batch -----------------------------------------------------------------

class EventBatch:
    """The decoded contents of a batch of records.

    Per decoded 'PMT ' record, in stream order (arrays of length n_events; orphans
    included, marked by `orphan`): trig (u32 trigger word), gtid (u32), run and subrun
    (u32), polling (bool), clock10 and clock50 (u64 counts), hits (NPmtHit), nhit and charge
    (int64: the hits and Σ Qhs without the FEC/D's), orphan (bool: trigger word 0 and
    gtid 0). `last`: (run, subrun, gtid) of the last record that is not an orphan, or None.

    Over all hits (orphans' too): `hit_bits`, bits 16-29 of each hit word 1 (u16:
    channel bits 0-4, crate 5-9, card 10-13), grouped by record in stream order;
    `hit_counts`, hits per channel index (N_CHANNELS long), counted on first use (the pull
    worker counts its hits per second instead, aggregate/events.py), and then the hits
    with a crate above 19 are in corrupt["hit_bad_crate"], not in it; `fecd_hits`, the
    positions in hit_bits of the FEC/D's hits.

    n_events counts the decoded 'PMT ' records, orphans included (n_orphans of them;
    n_pmt_events are the events of SPEC §3). run_headers: [{field: value} of each RHDR
    (RHDR_FIELDS)]. n_other: records that are neither. corrupt: dict kind -> number of
    records (or hits) skipped for that reason.
    """

    __slots__ = ("n_records", "n_events", "n_orphans", "n_other", "trig", "gtid", "run",
                 "subrun", "polling", "clock10", "clock50", "hits", "nhit", "charge", "orphan",
                 "hit_bits", "fecd_hits", "last", "corrupt", "run_headers", "_hit_counts",
                 "_counted")

    def __init__(self):
        self.n_records = 0
        self.n_events = 0
        self.n_orphans = 0
        self.n_other = 0
        self.trig = self.gtid = self.run = self.subrun = _EMPTY_U32
        self.polling = self.orphan = _EMPTY_BOOL
        self.clock10 = self.clock50 = _EMPTY_U64
        self.hits = self.nhit = self.charge = _EMPTY_I64
        self.hit_bits = _EMPTY_U16
        self.fecd_hits = _EMPTY_I64
        self.last = None
        self.corrupt = {}
        self.run_headers = []
        self._hit_counts = None
        self._counted = False

    @property
    def hit_counts(self):
        """Hits per channel index (orphans' included), None when there are no hits."""
        if self._hit_counts is None and len(self.hit_bits):
            self._hit_counts, bad = counts_by_channel(
                np.bincount(self.hit_bits, minlength=1 << 14))
            if bad and not self._counted:
                self.corrupt["hit_bad_crate"] = bad
            self._counted = True
        return self._hit_counts

    @property
    def channels(self):
        """The channel index of every good hit, in ascending order (for tests and tools)."""
        counts = self.hit_counts
        if counts is None:
            return _EMPTY_I64
        return np.repeat(np.arange(N_CHANNELS, dtype=np.int64), counts)

    @property
    def n_pmt_events(self):
        """Events (SPEC §3): the decoded records that are not orphans."""
        return self.n_events - self.n_orphans


_EMPTY_U32 = np.zeros(0, dtype=np.uint32)
_EMPTY_U16 = np.zeros(0, dtype=np.uint16)
_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
_EMPTY_BOOL = np.zeros(0, dtype=bool)


def _channel_table():
    """Bits 16-29 of hit word 1 (channel, crate, card) -> channel index, for the values
    with a crate below 20: (the bit values, their channel indices)."""
    bits = np.arange(1 << 14, dtype=np.int64)
    channel, crate, card = bits & 0x1F, (bits >> 5) & 0x1F, (bits >> 10) & 0xF
    good = crate < N_CRATES
    return bits[good], (crate << 9 | card << 5 | channel)[good]


_GOOD_BITS, _CHANNEL_OF_GOOD_BITS = _channel_table()
#: Channel index -> its 14-bit value (the inverse of the table above).
CHANNEL_BITS = np.zeros(N_CHANNELS, dtype=np.int64)
CHANNEL_BITS[_CHANNEL_OF_GOOD_BITS] = _GOOD_BITS
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_BYTE4 = np.arange(4, dtype=np.int64)
#: 0, 6, 12, ...: the half-word step of consecutive hits (sliced, never rebuilt)
_HIT_STEPS = np.arange(0, 6 * (1 << 20), 6, dtype=np.int64)


def counts_by_channel(by_bits):
    """(hits per channel index, hits with a crate above 19) from counts per 14-bit value
    (or from the last axis of a stack of them)."""
    by_bits = np.asarray(by_bits)
    counts = np.zeros(by_bits.shape[:-1] + (N_CHANNELS,), dtype=np.int64)
    counts[..., _CHANNEL_OF_GOOD_BITS] = by_bits[..., _GOOD_BITS]
    bad = int(by_bits.sum() - counts.sum())
    return counts, bad


def _u32_at(arr, positions):
    """Big-endian u32 at each byte position of a uint8 array."""
    b = arr[positions[:, None] + _BYTE4].astype(np.uint32)
    return b[:, 0] << 24 | b[:, 1] << 16 | b[:, 2] << 8 | b[:, 3]


def _hit_steps(total):
    if total <= len(_HIT_STEPS):
        return _HIT_STEPS[:total]
    return np.arange(0, 6 * total, 6, dtype=np.int64)


def decode_batch(records):
    """Decode a list of complete records (header included) into an EventBatch.

    'RHDR' records become run_headers; other records are counted in n_other. A record
    too short for its header, a 'PMT ' record whose length cannot hold 44 + 12·NPmtHit
    bytes, or an 'RHDR' too short for its 18 words is corrupt: counted and skipped. The
    RecordLength field is not trusted (the dispatcher stream does not need it).
    """
    batch = EventBatch()
    n = len(records)
    batch.n_records = n
    if n == 0:
        return batch
    lengths = np.fromiter(map(len, records), dtype=np.int64, count=n)
    buf = b"".join(records)
    arr = np.frombuffer(buf, dtype=np.uint8)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    aligned = len(buf) % 4 == 0 and not (lengths % 4).any()
    if aligned:
        # every record starts on a word boundary: index the buffer as 32-bit words
        words = np.frombuffer(buf, dtype="<u4")

        def u32(positions):
            return words[positions >> 2].byteswap()

        def field(wstarts, word):
            return words[word:][wstarts].byteswap()
    else:
        words = None

        def u32(positions):
            return _u32_at(arr, positions)

        def field(bstarts, word):
            return _u32_at(arr, bstarts + 4 * word)

    has_header = lengths >= HEADER_SIZE
    n_short = n - int(has_header.sum())
    if n_short:
        batch.corrupt["short_header"] = n_short
        hdr_starts = starts[has_header]
        hdr_lengths = lengths[has_header]
    else:
        hdr_starts, hdr_lengths = starts, lengths
    ids = u32(hdr_starts)
    is_pmt = ids == RECORD_PMT
    n_pmt = int(is_pmt.sum())
    if n_pmt < len(ids):
        _run_headers(batch, ids, hdr_starts, hdr_lengths, buf)
        pmt_starts = hdr_starts[is_pmt]
        pmt_lengths = hdr_lengths[is_pmt]
    else:
        pmt_starts, pmt_lengths = hdr_starts, hdr_lengths

    big_enough = pmt_lengths >= HITS_OFFSET
    if not big_enough.all():
        batch.corrupt["pmt_short"] = int((~big_enough).sum())
        pmt_starts = pmt_starts[big_enough]
        pmt_lengths = pmt_lengths[big_enough]
    at = pmt_starts >> 2 if aligned else pmt_starts
    subrun_nhit = field(at, _W_SUBRUN_NHIT)
    hits = (subrun_nhit & 0xFFFF).astype(np.int64)
    fits = pmt_lengths >= HITS_OFFSET + HIT_SIZE * hits
    if not fits.all():
        batch.corrupt["pmt_truncated"] = int((~fits).sum())
        pmt_starts = pmt_starts[fits]
        at = at[fits]
        hits = hits[fits]
        subrun_nhit = subrun_nhit[fits]
    n_events = len(pmt_starts)
    batch.n_events = n_events
    if n_events == 0:
        return batch

    w3 = field(at, _W_MTC + 3)
    w4 = field(at, _W_MTC + 4)
    w1 = field(at, _W_MTC + 1)
    trig = (w3 >> 24) & 0xFF | (w4 & TRIGGER_W4_MASK) << 8
    gtid = w3 & GTID_MASK
    batch.trig = trig
    batch.gtid = gtid
    batch.run = run = field(at, _W_RUN)
    batch.subrun = subrun_nhit >> 16
    batch.polling = (field(at, _W_MTC + 5) >> POLLING_BIT & 1).astype(bool)
    batch.clock10 = (field(at, _W_MTC).astype(np.uint64)
                     | (w1 & CLOCK10_HIGH_MASK).astype(np.uint64) << np.uint64(32))
    batch.clock50 = ((w1 >> 21).astype(np.uint64)
                     | field(at, _W_MTC + 2).astype(np.uint64) << np.uint64(11))
    orphan = (trig == 0) & (gtid == 0)
    n_orphans = int(orphan.sum())
    batch.orphan = orphan
    batch.n_orphans = n_orphans
    batch.hits = hits
    if n_orphans < n_events:
        last = n_events - 1
        if n_orphans:
            last = int(np.flatnonzero(~orphan)[-1])
        batch.last = (int(run[last]), int(subrun_nhit[last] >> 16), int(gtid[last]))

    total_hits = int(hits.sum())
    if total_hits == 0:
        batch.nhit = hits
        batch.charge = np.zeros(n_events, dtype=np.int64)
        return batch
    ends = np.cumsum(hits)
    before = ends - hits
    # Only the high halves of hit words 1 and 2 are used: bits 16-29 of word 1 are
    # channel, crate and card; bits 16-26 of word 2 are Qhs.
    if words is not None:
        halves = np.frombuffer(buf, dtype=">u2")
        hi = np.repeat((pmt_starts + HITS_OFFSET) // 2 - 6 * before, hits)
        hi += _hit_steps(total_hits)
        high1 = halves[hi]
        high2 = halves[2:][hi]
    else:
        hit_start = np.repeat(pmt_starts + HITS_OFFSET - HIT_SIZE * before, hits)
        hit_start += np.arange(0, HIT_SIZE * total_hits, HIT_SIZE, dtype=np.int64)
        high1 = (_u32_at(arr, hit_start) >> 16).astype(np.uint16)
        high2 = (_u32_at(arr, hit_start + 4) >> 16).astype(np.uint16)
    qhs = high2 & QHS_MASK
    with_hits = hits > 0
    charge = np.zeros(n_events, dtype=np.int64)
    charge[with_hits] = np.add.reduceat(qhs, before[with_hits], dtype=np.int64)
    # FEC/D hits: card 15 of crate >= 17 first (a cheap comparison), then crate 17 exactly
    low = high1 & 0x3FFF
    batch.hit_bits = low
    candidates = np.flatnonzero(low >= FECD_BITS_FIRST)
    fecd = candidates[low[candidates] <= FECD_BITS_LAST]
    batch.fecd_hits = fecd
    nhit = hits
    if len(fecd):
        event_of = np.searchsorted(ends, fecd, side="right")
        nhit = hits - np.bincount(event_of, minlength=n_events)
        charge -= np.bincount(event_of, weights=qhs[fecd], minlength=n_events).astype(np.int64)
    batch.nhit = nhit
    batch.charge = charge
    return batch


def _run_headers(batch, ids, starts, lengths, buf):
    """Decode the RHDR records of a batch into batch.run_headers (rare: one per run)."""
    is_rhdr = ids == RECORD_RHDR
    batch.n_other = int(len(ids) - (ids == RECORD_PMT).sum() - is_rhdr.sum())
    for start, length in zip(starts[is_rhdr].tolist(), lengths[is_rhdr].tolist()):
        header = decode_rhdr(buf[start:start + length])
        if header is None:
            batch.corrupt["rhdr_short"] = batch.corrupt.get("rhdr_short", 0) + 1
        else:
            batch.run_headers.append(header)
