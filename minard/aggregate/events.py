"""Per-second accumulation of decoded events (SPEC §3; issue 13). Pure: no I/O, no reactor.

A pull worker keeps one SecondAccumulator per open wall-clock second (the push side's
receipt second) and turns it into a flush payload when the second ends. Partial sums from
several workers add up in Redis to the same totals as one worker.

What a second holds, per event type (the 27 trigger bits, `polling`: MTC word 5 bit 29,
and `NONE`: trigger word 0 with a gtid; an event counts in every type it has, and in
TOTAL): events, Σ nhit, Σ charge, the exact nhit histogram; overall: the hits per channel
(occupancy; orphans' hits are not in it: an orphan is not an event), the hits of the
FEC/D's channels (`trig:fecd`, orphans' included), the orphans' hits (DISPATCH_ORPHANS),
per run the same sums and its receipt-time span (run history), per followed run the hits
per channel and type (aggregate/runs.py), and the clock jumps with the batch's loose ends
(aggregate/clockjumps.py).

How it stays cheap (bench/README.md, "parse+aggregate"): batches wait until a chunk of
CHUNK_EVENTS events (or the end of the second), so that the fixed cost of the array
operations is paid per chunk, not per ZeroMQ message; a chunk's events are grouped by
(run, trigger word, polling) — a handful of groups — and every per-type sum is a sum over
groups; each hit is tagged with its group's row (row << 14 | its 14 channel bits) into a
reusable buffer, counted with one bincount when it is full, and split by type only when
the second closes. A stream with too many distinct groups (random trigger words) takes a
direct path per type instead: slower, as exact.
"""
import ctypes
import json

import numpy as np

from minard.aggregate import clockjumps
from minard.aggregate.runs import N_TYPES, RunFollower
from minard.constants import (CLOCK_JUMP_DETAILS, CLOCK_PAIR_WINDOW, EVENT_TYPES,
                              FECD_CHANNELS, N_CHANNELS, N_TRIGGER_BITS, NHIT_SAMPLES,
                              RUNS_PER_SECOND)
from minard.wire.sno import FECD_BITS_FIRST, counts_by_channel

#: Indices of the per-type arrays: 0-26 the trigger bits, then polling, NONE and TOTAL.
POLLING_T = N_TRIGGER_BITS
NONE_T = N_TRIGGER_BITS + 1
TOTAL = N_TYPES
#: The field of each index in the trig / trig:nhit / trig:charge hashes (SPEC §4, §3).
FIELDS = [str(i) for i in range(N_TRIGGER_BITS)] + [EVENT_TYPES[POLLING_T],
                                                    EVENT_TYPES[NONE_T], "TOTAL"]
#: An event's group word: its trigger word, bit 27 polling; bit 28 marks the orphans.
EW_POLLING = 1 << 27
EW_ORPHAN = 1 << 28
TRIGGER_MASK = (1 << N_TRIGGER_BITS) - 1
BITS = 1 << 14                # the 14 channel bits of a hit (channel, crate, card)
#: nhit values below this are histogrammed per batch in one bincount; above, one by one.
HIST_DENSE = 512
#: Rows of hits (run, group word) one second holds at most, and groups one batch may
#: bring, before the direct path.
MAX_ROWS = 256
MAX_BATCH_GROUPS = 64
#: Events summed at once (batches wait until they are this many, or the second closes).
CHUNK_EVENTS = 16384
#: Tagged hits a second's accumulator buffers before counting them (int64: 16 MB).
KEY_BUFFER = 1 << 21
#: Row kinds: a group of events (counts in totals and in each of its types), one type of
#: the direct path (counts in that type only), all hits of the direct path (totals only).
GROUP, ONE_TYPE, ALL_HITS = 0, 1, 2
_FECD = [(name, FECD_BITS_FIRST + channel) for name, channel in FECD_CHANNELS]
_U32_POLLING_SHIFT = np.uint32(27)


#: glibc malloc (mallopt): chunks below MMAP_THRESHOLD come from the heap, and the heap
#: is given back to the kernel only when TRIM_THRESHOLD of it is free at its top.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
_malloc_tuned = []


def keep_freed_memory():
    """Keep the memory numpy frees in the process (glibc only; once per process).

    Decoding and summing a chunk allocates and frees megabytes of arrays; glibc's default
    (a moving mmap threshold, the heap trimmed when 128 KiB+ is free at its top) hands
    them back to the kernel and takes a page fault per 4 KiB when they are used again —
    microseconds each on a VM: 100,000 faults per 3.2 M events, a third of the time, in
    bench_decode's loop. With fixed thresholds the freed chunks are simply reused (the
    process keeps its high-water mark)."""
    if _malloc_tuned:
        return _malloc_tuned[0]
    ok = False
    try:
        mallopt = ctypes.CDLL(None).mallopt
        ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
            bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc: its own policy stands
        ok = False
    _malloc_tuned.append(ok)
    return ok


class KeyBuffers:
    """Reusable buffers of tagged hits: an open second takes one, a closed one gives it
    back (a worker has one or two seconds open at a time), so that the megabytes are not
    allocated — and paged in — afresh every second."""

    def __init__(self, size=KEY_BUFFER, kept=4):
        self.size = size
        self.kept = kept
        self.free = []

    def take(self):
        return self.free.pop() if self.free else np.empty(self.size, dtype=np.int64)

    def give(self, buffer):
        if len(buffer) == self.size and len(self.free) < self.kept:
            self.free.append(buffer)


_BUFFERS = KeyBuffers()


def trigger_bits(trig):
    """(n, 27) uint8 matrix of the trigger bits of each event."""
    as_bytes = trig.astype("<u4").view(np.uint8).reshape(-1, 4)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :N_TRIGGER_BITS]


def type_matrix(words):
    """(n, 29) bool: the event types of each group word (trigger bits, polling, NONE)."""
    words = np.asarray(words, dtype=np.uint32)
    as_bytes = words.astype("<u4").view(np.uint8).reshape(-1, 4)
    out = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :N_TYPES].astype(bool)
    out[:, NONE_T] = (words & TRIGGER_MASK) == 0
    out[(words & EW_ORPHAN) != 0] = False
    return out


class RunSecond:
    """What one second holds of one run (its record, store/runs.py)."""

    __slots__ = ("counts", "nhit", "first", "last")

    def __init__(self):
        self.counts = np.zeros(N_TYPES + 1, dtype=np.int64)
        self.nhit = np.zeros(N_TYPES + 1, dtype=np.int64)
        self.first = None   # receipt times (µs) of its first and last batch
        self.last = None


class SecondAccumulator:
    """Everything one worker has seen of one second.

    follower: the worker's RunFollower (per-run occupancy by type; a private one if None);
    tolerance: the clock-jump tolerance (clockjumps.Tolerance)."""

    def __init__(self, second, follower=None, tolerance=None):
        keep_freed_memory()
        self.second = second
        self.follower = follower if follower is not None else RunFollower()
        self.tolerance = tolerance or clockjumps.Tolerance()
        self.orphans = 0            # orphan records ...
        self.orphan_hits = 0        # ... and their hits (without the FEC/D's)
        self.counts = np.zeros(N_TYPES + 1, dtype=np.int64)
        self.nhit_sums = np.zeros(N_TYPES + 1, dtype=np.int64)
        self.charge_sums = np.zeros(N_TYPES + 1, dtype=np.int64)
        self.hist = np.zeros((N_TYPES + 1, 1), dtype=np.int64)  # [type or TOTAL, nhit]
        self.hist_high = {}         # (type or TOTAL, nhit) -> events, nhit >= HIST_DENSE
        self.runs = {}              # run -> RunSecond
        self.unfiled = 0            # events of runs beyond RUNS_PER_SECOND
        self.headers = []           # [(receipt µs, {RHDR field: value})]
        self.jumps = 0
        self.jump_details = []
        self.ends = []              # loose ends for the clock sweep (store/analyses.py)
        self._tail = None
        self.rows = {}              # (run or None, word or type, kind) -> row
        self.row_keys = []
        self.row_events = []
        self._row_bits = np.zeros((0, BITS), dtype=np.int64)
        self._nhit_parts = []
        self._keys = None           # tagged hits not counted yet (a buffer of _BUFFERS)
        self._nkeys = 0
        self._folded = None
        self._pending = []
        self._pending_events = 0
        self._events = 0
        self._last = None
        self.last_order = 0

    # -- adding a batch ------------------------------------------------------------------

    def add(self, batch, order):
        """Add an EventBatch received at `order` (receipt time in µs: 'last seen', run
        spans, clock-jump times). Batches are summed a chunk at a time (CHUNK_EVENTS
        events, or what the second has when it closes): the fixed cost of the array
        operations is then paid per chunk, not per ZeroMQ message."""
        for header in batch.run_headers:
            self.headers.append((order, header))
        if batch.n_events == 0:
            return
        if self._folded is not None:
            raise RuntimeError("second %d is closed: no more batches" % self.second)
        self._pending.append((batch, order))
        self._pending_events += batch.n_events
        if self._pending_events >= CHUNK_EVENTS:
            self._process()

    @property
    def events(self):
        """Events of this second (orphans are not events)."""
        self._process()
        return self._events

    @property
    def last(self):
        """(run, subrun, gtid) of the last event received (by receipt time), or None."""
        self._process()
        return self._last

    def _process(self):
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_events = 0
        for b, order in pending:
            if b.last is not None and order >= self.last_order:
                self._last = b.last
                self.last_order = order
        batches = [b for b, _ in pending]
        if len(pending) == 1:
            batch = batches[0]
            sizes = None
            trig, gtid, run, polling, c10, c50, nhit, charge, orphan = (
                batch.trig, batch.gtid, batch.run, batch.polling, batch.clock10,
                batch.clock50, batch.nhit, batch.charge, batch.orphan)
        else:
            sizes = np.array([b.n_events for b in batches], dtype=np.int64)
            trig, gtid, run, polling, c10, c50, nhit, charge, orphan = (
                np.concatenate([getattr(b, name) for b in batches]) for name in (
                    "trig", "gtid", "run", "polling", "clock10", "clock50", "nhit",
                    "charge", "orphan"))
        orders = [order for _, order in pending]
        n = len(trig)
        n_orphans = sum(b.n_orphans for b, _ in pending)
        words = trig | (polling.astype(np.uint32) << _U32_POLLING_SHIFT)
        if n_orphans:
            words[orphan] = EW_ORPHAN
        run0 = run[0]
        if run[-1] == run0 and not (run != run0).any():
            group_runs, group_inv = np.array([run0], dtype=np.uint32), None
            keys = words
        else:
            group_runs, group_inv = np.unique(run, return_inverse=True)
            keys = group_inv.astype(np.uint64) << np.uint64(32) | words
        gk, inv = np.unique(keys, return_inverse=True)
        k = len(gk)
        g_words = (gk & 0xFFFFFFFF).astype(np.uint32)
        g_runs = group_runs[(gk >> 32).astype(np.int64)] if group_inv is not None else \
            np.full(k, run0, dtype=np.uint32)
        g_events = np.bincount(inv, minlength=k)
        g_nhit = np.rint(np.bincount(inv, weights=nhit, minlength=k)).astype(np.int64)
        g_charge = np.rint(np.bincount(inv, weights=charge, minlength=k)).astype(np.int64)
        g_types = type_matrix(g_words)
        g_orphan = g_words == EW_ORPHAN
        events = n - n_orphans
        self._events += events
        if n_orphans:
            self.orphans += n_orphans
            self.orphan_hits += int(g_nhit[g_orphan].sum())
        # integer products: exact, and numpy's own loops (a float product would go to
        # BLAS, whose threads spin for every tiny call)
        t_i = g_types.T.astype(np.int64)
        self.counts[:TOTAL] += t_i @ g_events
        self.counts[TOTAL] += events
        self.nhit_sums[:TOTAL] += t_i @ g_nhit
        self.nhit_sums[TOTAL] += int(g_nhit[~g_orphan].sum())
        self.charge_sums[:TOTAL] += t_i @ g_charge
        self.charge_sums[TOTAL] += int(g_charge[~g_orphan].sum())
        if sizes is None or len(set(orders)) == 1:
            stamps = None
        else:
            stamps = np.repeat(np.array(orders, dtype=np.int64), sizes)
        self._add_runs(g_runs, g_types, g_orphan, g_events, g_nhit, run, orphan, stamps,
                       orders)
        if k <= MAX_BATCH_GROUPS:
            self._hist_by_group(inv, k, nhit, g_types, g_orphan)
        else:
            self._hist_by_type(type_matrix(words), nhit, ~orphan if n_orphans else None)
        self._add_hits(words, inv, g_words, g_runs, g_events, run, batches, orphan, n_orphans)
        if events:
            self._clocks(gtid, c10, c50, run, orphan if n_orphans else None, sizes, orders)
            self._nhit_parts.append(nhit[~orphan] if n_orphans else nhit)

    def _add_runs(self, g_runs, g_types, g_orphan, g_events, g_nhit, run, orphan, stamps,
                  orders):
        """Each run's counts and receipt-time span (stamps: per event, None when the
        chunk's events share one batch time or come from one batch)."""
        for r in np.unique(g_runs[~g_orphan]).tolist():
            rs = self.runs.get(r)
            sel = (g_runs == r) & ~g_orphan
            if rs is None:
                if len(self.runs) >= RUNS_PER_SECOND:
                    self.unfiled += int(g_events[sel].sum())
                    continue
                rs = self.runs[r] = RunSecond()
            types = g_types[sel].T.astype(np.int64)
            rs.counts[:TOTAL] += types @ g_events[sel]
            rs.counts[TOTAL] += int(g_events[sel].sum())
            rs.nhit[:TOTAL] += types @ g_nhit[sel]
            rs.nhit[TOTAL] += int(g_nhit[sel].sum())
            if stamps is None:
                first, last = min(orders), max(orders)
            else:
                mine = stamps[(run == r) & ~orphan] if len(g_runs) > 1 or orphan.any() \
                    else stamps
                first, last = int(mine.min()), int(mine.max())
            rs.first = first if rs.first is None else min(rs.first, first)
            rs.last = last if rs.last is None else max(rs.last, last)

    # -- nhit histograms -----------------------------------------------------------------

    def _grow_hist(self, length):
        if length > self.hist.shape[1]:
            grown = np.zeros((N_TYPES + 1, max(length, 2 * self.hist.shape[1])),
                             dtype=np.int64)
            grown[:, :self.hist.shape[1]] = self.hist
            self.hist = grown

    def _hist_by_group(self, inv, k, nhit, g_types, g_orphan):
        dense = nhit < HIST_DENSE
        high = None if dense.all() else ~dense
        if high is not None:
            inv_d, nhit_d = inv[dense], nhit[dense]
        else:
            inv_d, nhit_d = inv, nhit
        if len(nhit_d):
            width = int(nhit_d.max()) + 1
            per_group = np.bincount(inv_d * width + nhit_d, minlength=k * width)
            per_group = per_group.reshape(k, width)
            self._grow_hist(width)
            self.hist[:TOTAL, :width] += g_types.T.astype(np.int64) @ per_group
            self.hist[TOTAL, :width] += per_group[~g_orphan].sum(axis=0)
        if high is not None:
            for g, value in zip(inv[high].tolist(), nhit[high].tolist()):
                if g_orphan[g]:
                    continue
                for t in np.flatnonzero(g_types[g]).tolist() + [TOTAL]:
                    self.hist_high[t, value] = self.hist_high.get((t, value), 0) + 1

    def _hist_by_type(self, types, nhit, events_mask):
        """The direct path: one histogram per type present (many distinct groups)."""
        width = int(nhit.max()) + 1
        self._grow_hist(width)
        for t in np.flatnonzero(types.any(axis=0)).tolist():
            self.hist[t, :width] += np.bincount(nhit[types[:, t]], minlength=width)
        chosen = nhit if events_mask is None else nhit[events_mask]
        self.hist[TOTAL, :width] += np.bincount(chosen, minlength=width)

    # -- hits ------------------------------------------------------------------------------

    def _row(self, key):
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = len(self.row_keys)
            self.row_keys.append(key)
            self.row_events.append(0)
        return row

    def _add_hits(self, words, inv, g_words, g_runs, g_events, run, batches, orphan,
                  n_orphans):
        follower, second = self.follower, self.second
        followed = {}
        for w, r in zip(g_words.tolist(), g_runs.tolist()):
            if r not in followed and w != EW_ORPHAN:  # an orphan's run number is no run
                followed[r] = r if follower.follow(r, second) else None
        k = len(g_words)
        row_keys = [(None if w == EW_ORPHAN else followed.get(r), w, GROUP)
                    for w, r in zip(g_words.tolist(), g_runs.tolist())]
        new_rows = sum(1 for key in row_keys if key not in self.rows)
        if k > MAX_BATCH_GROUPS or len(self.rows) + new_rows > MAX_ROWS:
            hits, bits = batches[0].hits, batches[0].hit_bits
            if len(batches) > 1:
                hits = np.concatenate([b.hits for b in batches])
                bits = np.concatenate([b.hit_bits for b in batches])
            self._add_hits_directly(words, followed, run, hits, bits, orphan, n_orphans)
            return
        row_of_group = np.empty(k, dtype=np.uint8)  # rows < MAX_ROWS = 256
        for g, (key, e) in enumerate(zip(row_keys, g_events.tolist())):
            row = self._row(key)
            self.row_events[row] += e
            row_of_group[g] = row
        # tag each hit with its row, into the second's key buffer: row << 14 | 14 bits.
        # Batch by batch, with narrow temporaries: megabytes of fresh numpy memory per
        # chunk cost page faults (microseconds each on a VM) more than the arithmetic.
        first = 0
        for b in batches:
            last = first + b.n_events
            total = len(b.hit_bits)
            if total:
                if self._keys is None or self._nkeys + total > len(self._keys):
                    self._count_keys()
                    if self._keys is None:
                        self._keys = _BUFFERS.take()
                    if total > len(self._keys):
                        _BUFFERS.give(self._keys)
                        self._keys = np.empty(total, dtype=np.int64)
                out = self._keys[self._nkeys:self._nkeys + total]
                rows = np.repeat(row_of_group[inv[first:last]], b.hits)
                np.left_shift(rows, 14, out=out, dtype=np.int64)
                np.bitwise_or(out, b.hit_bits, out=out)
                self._nkeys += total
            first = last

    def _count_keys(self):
        """Count the buffered tagged hits into the rows (one bincount)."""
        if not self._nkeys:
            return
        rows = len(self.row_keys)
        self._grow_rows(rows)
        counted = np.bincount(self._keys[:self._nkeys], minlength=rows * BITS)
        self._row_bits[:rows] += counted.reshape(rows, BITS)
        self._nkeys = 0

    def _add_hits_directly(self, words, followed, runs, hits, bits, orphan, n_orphans):
        """Hits per type without grouping: for streams with many distinct groups."""
        types = type_matrix(words)
        events = ~orphan if n_orphans else np.ones(len(hits), dtype=bool)
        for run in sorted(r for r in followed.values() if r is not None):
            in_run = (runs == run) & events
            for t in np.flatnonzero(types[in_run].any(axis=0)).tolist():
                chosen = in_run & types[:, t]
                row = self._row((run, t, ONE_TYPE))
                self.row_events[row] += int(chosen.sum())
                if len(bits):
                    self._add_row_bits(row, np.bincount(bits[np.repeat(chosen, hits)],
                                                        minlength=BITS))
        row = self._row((None, 0, ALL_HITS))
        self.row_events[row] += int(events.sum())
        if len(bits):
            self._add_row_bits(row, np.bincount(bits[np.repeat(events, hits)],
                                                minlength=BITS))
        if n_orphans:
            row = self._row((None, EW_ORPHAN, GROUP))
            self.row_events[row] += n_orphans
            if len(bits):
                self._add_row_bits(row, np.bincount(bits[np.repeat(orphan, hits)],
                                                    minlength=BITS))

    def _add_row_bits(self, row, counts):
        self._grow_rows(row + 1)
        self._row_bits[row] += counts

    def _grow_rows(self, rows):
        if rows > len(self._row_bits):
            grown = np.zeros((max(rows, 2 * len(self._row_bits), 4), BITS), dtype=np.int64)
            grown[:len(self._row_bits)] = self._row_bits
            self._row_bits = grown

    # -- clocks ----------------------------------------------------------------------------

    def _clocks(self, gtid, c10, c50, run, orphans, sizes, orders):
        """Clock jumps between adjacent events of each batch, and each batch's loose ends
        (sizes: events per batch of the chunk, None for one batch)."""
        if sizes is not None:
            batch_of = np.repeat(np.arange(len(sizes)), sizes)
        if orphans is not None:
            keep = ~orphans
            gtid, c10, c50, run = gtid[keep], c10[keep], c50[keep], run[keep]
            if sizes is not None:
                batch_of = batch_of[keep]
        at = clockjumps.jumps_in(gtid, c10, c50, self.tolerance)
        if sizes is not None and len(at):
            at = at[batch_of[at] == batch_of[at + 1]]  # pairs inside one batch only
        if len(at):
            stamp = orders[0] if sizes is None else None
            self.jumps += len(at)
            for i in at[:max(0, CLOCK_JUMP_DETAILS - len(self.jump_details))].tolist():
                self._detail(stamp if stamp is not None else orders[batch_of[i]],
                             int(gtid[i]), int(c10[i]), int(c50[i]), int(gtid[i + 1]),
                             int(c10[i + 1]), int(c50[i + 1]), int(run[i + 1]))
        if sizes is None:
            firsts, lasts, stamps = [0], [len(gtid) - 1], [orders[0]]
        else:
            edges = np.flatnonzero(np.diff(batch_of)) + 1
            firsts = [0] + edges.tolist()
            lasts = (edges - 1).tolist() + [len(gtid) - 1]
            stamps = [orders[b] for b in batch_of[firsts].tolist()]
        for first, last, order in zip(firsts, lasts, stamps):
            head = (order, int(gtid[first]), int(c10[first]), int(c50[first]), int(run[first]))
            tail = self._tail
            if tail is not None and 0 <= order - tail[0] <= CLOCK_PAIR_WINDOW * 1_000_000 and \
                    head[1] == (tail[1] + 1) & clockjumps.GTID_MASK:
                # consecutive gtids: compared here
                if self._detail(order, *tail[1:4], *head[1:5]):
                    self.jumps += 1
            else:
                if tail is not None:
                    self.ends.append(["T"] + list(tail))
                self.ends.append(["H"] + list(head))
            self._tail = (order, int(gtid[last]), int(c10[last]), int(c50[last]),
                          int(run[last]))

    def _detail(self, order, gtid, c10, c50, next_gtid, next_c10, next_c50, run):
        """List a jump (while there is room); True if the pair is one."""
        kind, d10, d50 = clockjumps.pair_kind(gtid, c10, c50, next_gtid, next_c10, next_c50,
                                              self.tolerance)
        if kind is None:
            return False
        if len(self.jump_details) < CLOCK_JUMP_DETAILS:
            self.jump_details.append({"time": order / 1e6, "gtid": next_gtid,
                                      "previous_gtid": gtid, "d10": d10, "d50": d50,
                                      "kind": kind, "run": run})
        return True

    # -- closing the second ------------------------------------------------------------------

    def fold(self):
        """Count the tagged hits and split them: (occupancy per channel of the events,
        {FEC/D field: hits}, hits with a bad crate). Feeds the follower the hits and
        events of each followed run and type, once."""
        if self._folded is not None:
            return self._folded
        self._process()
        self._count_keys()
        if self._keys is not None:
            _BUFFERS.give(self._keys)
            self._keys = None
        rows = len(self.row_keys)
        self._grow_rows(rows)
        bits = self._row_bits[:rows]
        kinds = np.array([key[2] for key in self.row_keys], dtype=np.int64)
        codes = np.array([key[1] for key in self.row_keys], dtype=np.int64)
        orphan_rows = (kinds == GROUP) & (codes == EW_ORPHAN)
        event_rows = ((kinds == GROUP) & ~orphan_rows) | (kinds == ALL_HITS)
        events_bits = bits[event_rows].sum(axis=0)
        all_bits = events_bits + bits[orphan_rows].sum(axis=0)
        occupancy, _ = counts_by_channel(events_bits) if rows else \
            (np.zeros(N_CHANNELS, dtype=np.int64), 0)
        bad = int(all_bits.sum() - counts_by_channel(all_bits)[0].sum()) if rows else 0
        fecd = {name: int(all_bits[at]) for name, at in _FECD if rows and all_bits[at]}
        by_run = {}
        for row, (run, code, kind) in enumerate(self.row_keys):
            if run is not None and kind != ALL_HITS:
                by_run.setdefault(run, []).append(row)
        for run, run_rows in by_run.items():
            group_rows = [r for r in run_rows if self.row_keys[r][2] == GROUP]
            if group_rows:
                types = type_matrix([self.row_keys[r][1] for r in group_rows])
                events = np.array([self.row_events[r] for r in group_rows], dtype=np.int64)
                rows_bits = bits[group_rows]
                for t in np.flatnonzero(types.any(axis=0)).tolist():
                    with_t = types[:, t]
                    hits, _ = counts_by_channel(rows_bits[with_t].sum(axis=0))
                    self.follower.add(run, t, hits, int(events[with_t].sum()))
            for r in run_rows:
                _, t, kind = self.row_keys[r]
                if kind == ONE_TYPE:
                    self.follower.add(run, t, counts_by_channel(bits[r])[0],
                                      self.row_events[r])
        self._folded = (occupancy, fecd, bad)
        self._row_bits = self._row_bits[:0]  # fed to the follower: the second is closed
        return self._folded

    @property
    def occupancy(self):
        """Hits per channel index of this second's events (not the orphans')."""
        return self.fold()[0]

    def nhit_sample(self, rng, size=NHIT_SAMPLES):
        """Up to `size` nhit values of this second, sampled without replacement."""
        if not self._nhit_parts:
            return []
        values = np.concatenate(self._nhit_parts)
        if len(values) > size:
            values = rng.choice(values, size=size, replace=False)
        return values.tolist()

    def type_hist(self, t):
        """[nhit, events, nhit, events, ...] of type t (or TOTAL), ascending nhit."""
        row = self.hist[t]
        nz = np.flatnonzero(row)
        pairs = dict(zip(nz.tolist(), row[nz].tolist()))
        for (tt, value), count in self.hist_high.items():
            if tt == t:
                pairs[value] = pairs.get(value, 0) + count
        return [x for value in sorted(pairs) for x in (value, pairs[value])]

    def payload(self, flush_id, rng, writer=None):
        """The JSON document the flush scripts apply (store/events.py, store/analyses.py).
        Occupancy is not in it: it goes to the per-channel store (store/channels.py)."""
        occupancy, fecd, bad = self.fold()
        doc = {"id": flush_id, "t": int(self.second), "events": int(self.events)}
        if self.events:
            present = np.flatnonzero(self.counts)
            doc["trig"] = {FIELDS[i]: int(self.counts[i]) for i in present}
            doc["nhit"] = {FIELDS[i]: int(self.nhit_sums[i]) for i in present}
            doc["charge"] = {FIELDS[i]: int(self.charge_sums[i]) for i in present}
            doc["last"] = list(self.last)
            doc["order"] = int(self.last_order)
            doc["hist"] = self.type_hist(TOTAL)
            doc["samples"] = self.nhit_sample(rng)
        extra = {}
        if writer is not None:
            extra["w"] = writer
        if self.orphans:
            extra["orphans"] = int(self.orphan_hits)
        if fecd:
            extra["fecd"] = fecd
        if self.events:
            extra["types"] = {FIELDS[t]: self.type_hist(t)
                              for t in np.flatnonzero(self.counts[:TOTAL]).tolist()}
        if self.runs:
            extra["runs"] = [
                [run, r.first, r.last,
                 {FIELDS[i]: int(r.counts[i]) for i in np.flatnonzero(r.counts).tolist()},
                 {FIELDS[i]: int(r.nhit[i]) for i in np.flatnonzero(r.counts).tolist()}]
                for run, r in sorted(self.runs.items())]
        if self.headers:
            extra["headers"] = [[order, header] for order, header in self.headers]
        if self.jumps:
            extra["jumps"] = self.jumps
            extra["jump_details"] = self.jump_details
        ends = list(self.ends)
        if self._tail is not None:
            ends.append(["T"] + list(self._tail))
        if ends:
            extra["ends"] = ends
        if extra:
            doc["x"] = extra
        return json.dumps(doc, separators=(",", ":"))

    def corrupt_hits(self):
        """Hits with a crate above 19 (counted when the hits are counted)."""
        return self.fold()[2]
