"""Per-second accumulation of decoded events (SPEC §3). Pure: no I/O, no reactor.

A pull worker keeps one SecondAccumulator per open wall-clock second (the push side's
receipt second) and turns it into a flush payload when the second ends. Partial sums from
several workers add up in Redis to the same totals as one worker.
"""
import json

import numpy as np

from minard.constants import N_CHANNELS, N_TRIGGER_BITS, NHIT_SAMPLES

#: Index of the TOTAL column in the per-trigger arrays (after the 27 trigger bits).
TOTAL = N_TRIGGER_BITS
FIELDS = [str(i) for i in range(N_TRIGGER_BITS)] + ["TOTAL"]


def trigger_bits(trig):
    """(n, 27) uint8 matrix of the trigger bits of each event."""
    as_bytes = trig.astype("<u4").view(np.uint8).reshape(-1, 4)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :N_TRIGGER_BITS]


class SecondAccumulator:
    """Everything one worker has seen of one second."""

    def __init__(self, second):
        self.second = second
        self.events = 0
        self.counts = np.zeros(N_TRIGGER_BITS + 1, dtype=np.int64)
        self.nhit_sums = np.zeros(N_TRIGGER_BITS + 1, dtype=np.int64)
        self.charge_sums = np.zeros(N_TRIGGER_BITS + 1, dtype=np.int64)
        self.occupancy = np.zeros(N_CHANNELS, dtype=np.int64)
        self.nhit_hist = np.zeros(0, dtype=np.int64)
        self._nhit_parts = []
        self.last = None
        self.last_order = 0

    def add(self, batch, order):
        """Add an EventBatch received at `order` (receipt time in µs, for 'last seen')."""
        n = batch.n_events
        if n == 0:
            return
        self.events += n
        bits = trigger_bits(batch.trig).astype(np.int64)
        nhit = batch.nhit
        charge = batch.charge
        self.counts[:TOTAL] += bits.sum(axis=0)
        self.counts[TOTAL] += n
        self.nhit_sums[:TOTAL] += nhit @ bits
        self.nhit_sums[TOTAL] += int(nhit.sum())
        self.charge_sums[:TOTAL] += charge @ bits
        self.charge_sums[TOTAL] += int(charge.sum())
        if batch.hit_counts is not None:
            self.occupancy += batch.hit_counts
        hist = np.bincount(nhit)
        if len(hist) > len(self.nhit_hist):
            hist[:len(self.nhit_hist)] += self.nhit_hist
            self.nhit_hist = hist
        else:
            self.nhit_hist[:len(hist)] += hist
        self._nhit_parts.append(nhit)
        if order >= self.last_order:
            self.last = batch.last
            self.last_order = order

    def nhit_sample(self, rng, size=NHIT_SAMPLES):
        """Up to `size` nhit values of this second, sampled without replacement."""
        if not self._nhit_parts:
            return []
        values = np.concatenate(self._nhit_parts)
        if len(values) > size:
            values = rng.choice(values, size=size, replace=False)
        return values.tolist()

    def payload(self, flush_id, rng):
        """The JSON document the flush script applies (store/events.py). Occupancy is not
        in it: it goes to the per-channel store (store/channels.py)."""
        doc = {"id": flush_id, "t": int(self.second), "events": int(self.events)}
        if self.events:
            present = np.flatnonzero(self.counts)
            doc["trig"] = {FIELDS[i]: int(self.counts[i]) for i in present}
            doc["nhit"] = {FIELDS[i]: int(self.nhit_sums[i]) for i in present}
            doc["charge"] = {FIELDS[i]: int(self.charge_sums[i]) for i in present}
            doc["last"] = list(self.last)
            doc["order"] = int(self.last_order)
            nh = np.flatnonzero(self.nhit_hist)
            doc["hist"] = np.column_stack((nh, self.nhit_hist[nh])).ravel().tolist()
            doc["samples"] = self.nhit_sample(rng)
        return json.dumps(doc, separators=(",", ":"))
