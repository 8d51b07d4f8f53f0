"""SNO+ records (SPEC §2.2-2.3): the record header, the PMT event record and its hits.

Decoding is vectorised: a whole batch of records (as they arrive in one ZeroMQ message)
becomes numpy arrays in a handful of array operations, never a Python loop per hit.
All SNO+ records are big-endian; bit 0 is the least significant bit.
"""
import struct

import numpy as np

from minard.constants import N_CHANNELS, N_CRATES, RECORD_PMT

HEADER_SIZE = 12
PMT_FIXED_SIZE = 44
HITS_OFFSET = HEADER_SIZE + PMT_FIXED_SIZE  # 56: hits start here in the record
HIT_SIZE = 12
GTID_MASK = 0xFFFFFF
TRIGGER_W4_MASK = 0x7FFFF
QHS_MASK = 0x7FF

_HEADER = struct.Struct(">III")
_PMT_FIXED = struct.Struct(">HHIIHHI6I")
_HIT = struct.Struct(">III")

# byte offsets inside a record (header included)
_OFF_RUN = HEADER_SIZE + 4
_OFF_SUBRUN = HEADER_SIZE + 12   # DaqStatus
_OFF_NHIT = HEADER_SIZE + 14     # NPmtHit (low half of the word at _OFF_SUBRUN)
_OFF_W3 = HEADER_SIZE + 20 + 12
_OFF_W4 = HEADER_SIZE + 20 + 16


# -- building records (tests, simulator) ---------------------------------------------

def record_header(record_id, length, version=0):
    return _HEADER.pack(record_id, length, version)


def mtc_words(gtid, trigger_word, clock=0):
    """The 6 MTC words carrying a gtid and a 27-bit trigger word."""
    w3 = (gtid & GTID_MASK) | (trigger_word & 0xFF) << 24
    w4 = (trigger_word >> 8) & TRIGGER_W4_MASK
    return (clock & 0xFFFFFFFF, 0, 0, w3, w4, 0)


def hit_words(crate, card, channel, qhs=0, gtid=0, qlx=0, qhl=0, tac=0, cell=0):
    """One PMT hit as its three big-endian words (SPEC §2.3)."""
    w1 = (gtid & 0xFFFF) | (channel & 0x1F) << 16 | (crate & 0x1F) << 21 | (card & 0xF) << 26
    w2 = (qlx & 0x7FF) | (cell & 0xF) << 12 | (qhs & QHS_MASK) << 16
    w3 = (qhl & 0x7FF) | ((gtid >> 16) & 0xF) << 12 | (tac & 0x7FF) << 16 | ((gtid >> 20) & 0xF) << 28
    return w1, w2, w3


def pmt_record(run, gtid, trigger_word, hits=(), subrun=0, event_number=0, extra=b""):
    """A complete 'PMT ' record. hits: iterable of (crate, card, channel, qhs)."""
    hits = list(hits)
    body = [_PMT_FIXED.pack(0, 0, run, event_number, subrun, len(hits), 0,
                            *mtc_words(gtid, trigger_word))]
    for crate, card, channel, qhs in hits:
        body.append(_HIT.pack(*hit_words(crate, card, channel, qhs, gtid=gtid)))
    body.append(extra)
    payload = b"".join(body)
    return record_header(RECORD_PMT, len(payload)) + payload


def pmt_records_fast(run, subrun, gtids, trigger_words, channels, qhs, nhits):
    """Many 'PMT ' records at once, vectorised (the simulator's hot path).

    channels and qhs are flat arrays of all hits; nhits says how many belong to each event.
    Returns a list of record bytes.
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
    words[w + 4] = run
    words[w + 6] = (np.asarray(subrun, dtype=np.uint32) << 16) | nhits.astype(np.uint32)
    gtids = np.asarray(gtids, dtype=np.uint32)
    trig = np.asarray(trigger_words, dtype=np.uint32)
    words[w + 11] = (gtids & GTID_MASK) | (trig & 0xFF) << 24
    words[w + 12] = (trig >> 8) & TRIGGER_W4_MASK
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


def channel_of(w1):
    """Channel index crate << 9 | card << 5 | channel from hit word 1."""
    crate = (w1 >> 21) & 0x1F
    card = (w1 >> 26) & 0xF
    channel = (w1 >> 16) & 0x1F
    return crate << 9 | card << 5 | channel


# -- decoding a batch -----------------------------------------------------------------

class EventBatch:
    """The decoded contents of a batch of records.

    Per valid 'PMT ' event (arrays of length n_events): trig, nhit, charge, and for the last
    event run/subrun/gtid. Over all hits: hit_counts, hits per channel index (N_CHANNELS
    long; hits with a crate above 19 are not in it but in corrupt["hit_bad_crate"]).
    corrupt: dict kind -> number of records (or hits) skipped for that reason.
    """

    __slots__ = ("n_records", "n_events", "n_other", "trig", "nhit", "charge",
                 "hit_counts", "last", "corrupt")

    def __init__(self):
        self.n_records = 0
        self.n_events = 0
        self.n_other = 0
        self.trig = _EMPTY_U32
        self.nhit = _EMPTY_I64
        self.charge = _EMPTY_I64
        self.hit_counts = None
        self.last = None
        self.corrupt = {}

    @property
    def channels(self):
        """The channel index of every good hit, in ascending order (for tests and tools)."""
        if self.hit_counts is None:
            return _EMPTY_I64
        return np.repeat(np.arange(N_CHANNELS, dtype=np.int64), self.hit_counts)


_EMPTY_U32 = np.zeros(0, dtype=np.uint32)


def _channel_table():
    """Bits 16-29 of hit word 1 (channel, crate, card) -> channel index, for the values
    with a crate below 20: (the bit values, their channel indices)."""
    bits = np.arange(1 << 14, dtype=np.int64)
    channel, crate, card = bits & 0x1F, (bits >> 5) & 0x1F, (bits >> 10) & 0xF
    good = crate < N_CRATES
    return bits[good], (crate << 9 | card << 5 | channel)[good]


_GOOD_BITS, _CHANNEL_OF_GOOD_BITS = _channel_table()
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_BYTE4 = np.arange(4, dtype=np.int64)


def _u32_at(arr, positions):
    """Big-endian u32 at each byte position of a uint8 array."""
    b = arr[positions[:, None] + _BYTE4].astype(np.uint32)
    return b[:, 0] << 24 | b[:, 1] << 16 | b[:, 2] << 8 | b[:, 3]


def decode_batch(records):
    """Decode a list of complete records (header included) into an EventBatch.

    Records that are not 'PMT ' are counted in n_other. A record too short for its header,
    or whose length cannot hold 44 + 12·NPmtHit bytes, is corrupt: counted and skipped.
    The RecordLength field is not trusted (the dispatcher stream does not need it).
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
    if len(buf) % 4 == 0 and not (lengths % 4).any():
        # every record starts on a word boundary: index the buffer as 32-bit words
        words = np.frombuffer(buf, dtype="<u4")

        def u32(positions):
            return words[positions >> 2].byteswap()
    else:
        words = None

        def u32(positions):
            return _u32_at(arr, positions)

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
    batch.n_other = int(len(ids) - is_pmt.sum())
    pmt_starts = hdr_starts[is_pmt]
    pmt_lengths = hdr_lengths[is_pmt]

    big_enough = pmt_lengths >= HITS_OFFSET
    if not big_enough.all():
        batch.corrupt["pmt_short"] = int((~big_enough).sum())
        pmt_starts = pmt_starts[big_enough]
        pmt_lengths = pmt_lengths[big_enough]
    nhit = (u32(pmt_starts + _OFF_SUBRUN) & 0xFFFF).astype(np.int64)
    fits = pmt_lengths >= HITS_OFFSET + HIT_SIZE * nhit
    if not fits.all():
        batch.corrupt["pmt_truncated"] = int((~fits).sum())
        pmt_starts = pmt_starts[fits]
        nhit = nhit[fits]
    n_events = len(pmt_starts)
    batch.n_events = n_events
    if n_events == 0:
        return batch

    w3 = u32(pmt_starts + _OFF_W3)
    w4 = u32(pmt_starts + _OFF_W4)
    batch.trig = (w3 >> 24) & 0xFF | (w4 & TRIGGER_W4_MASK) << 8
    batch.nhit = nhit
    last = pmt_starts[-1:]
    batch.last = (int(u32(last + _OFF_RUN)[0]),
                  int(u32(last + _OFF_SUBRUN)[0] >> 16),
                  int(w3[-1] & GTID_MASK))

    total_hits = int(nhit.sum())
    if total_hits == 0:
        batch.charge = np.zeros(n_events, dtype=np.int64)
        return batch
    ends = np.cumsum(nhit)
    before = ends - nhit
    # Only the high halves of hit words 1 and 2 are used: bits 16-29 of word 1 are
    # channel, crate and card; bits 16-26 of word 2 are Qhs.
    if words is not None:
        halves = np.frombuffer(buf, dtype=">u2")
        hi = np.repeat((pmt_starts + HITS_OFFSET) // 2 - 6 * before, nhit)
        hi += np.arange(0, 6 * total_hits, 6, dtype=np.int64)
        high1 = halves[hi]
        high2 = halves[hi + 2]
    else:
        hit_start = np.repeat(pmt_starts + HITS_OFFSET - HIT_SIZE * before, nhit)
        hit_start += np.arange(0, HIT_SIZE * total_hits, HIT_SIZE, dtype=np.int64)
        high1 = _u32_at(arr, hit_start) >> 16
        high2 = _u32_at(arr, hit_start + 4) >> 16

    qhs = high2 & QHS_MASK
    with_hits = nhit > 0
    charge = np.zeros(n_events, dtype=np.int64)
    charge[with_hits] = np.add.reduceat(qhs, before[with_hits], dtype=np.int64)
    batch.charge = charge

    by_bits = np.bincount(high1 & 0x3FFF, minlength=1 << 14)
    hit_counts = np.zeros(N_CHANNELS, dtype=np.int64)
    hit_counts[_CHANNEL_OF_GOOD_BITS] = by_bits[_GOOD_BITS]
    bad = total_hits - int(hit_counts.sum())
    if bad:
        batch.corrupt["hit_bad_crate"] = bad
    batch.hit_counts = hit_counts
    return batch
