"""Per-second accumulation against sums computed independently in plain Python."""
import json
import random

import numpy as np
from twisted.trial import unittest

from minard.aggregate.events import SecondAccumulator
from minard.wire import sno
from tests.test_wire_sno import hand_built


def random_events(rng, n):
    events = []
    for _ in range(n):
        trig = rng.choice([0, 1, 1 << 10, (1 << 27) - 1, rng.randrange(1 << 27)])
        hits = [(rng.randrange(20), rng.randrange(16), rng.randrange(32), rng.randrange(2048))
                for _ in range(rng.choice([0, 1, 5, 40]))]
        events.append((rng.randrange(1000), rng.randrange(100), rng.randrange(1 << 24), trig, hits))
    return events


def pmt_hits(hits):
    """The hits that count in nhit and charge (SPEC §3): not the FEC/D's (crate 17,
    card 15)."""
    return [h for h in hits if (h[0], h[1]) != (17, 15)]


def is_orphan(gtid, word):
    """SPEC §3: trigger word 0 and gtid 0 is an orphan, not an event."""
    return word == 0 and gtid == 0


def expected_sums(events):
    trig, nhit, charge, occ, hist = {}, {}, {}, {}, {}
    for run, subrun, gtid, word, hits in events:
        if is_orphan(gtid, word):
            continue
        pmt = pmt_hits(hits)
        q = sum(h[3] for h in pmt)
        fields = ["TOTAL"] + [str(b) for b in range(27) if word >> b & 1]
        if word == 0:
            fields.append("NONE")
        for f in fields:
            trig[f] = trig.get(f, 0) + 1
            nhit[f] = nhit.get(f, 0) + len(pmt)
            charge[f] = charge.get(f, 0) + q
        for c, d, e, _ in hits:  # occupancy counts the FEC/D's hits too
            i = c << 9 | d << 5 | e
            occ[i] = occ.get(i, 0) + 1
        hist[len(pmt)] = hist.get(len(pmt), 0) + 1
    return trig, nhit, charge, occ, hist


class AccumulatorTests(unittest.TestCase):
    def test_sums_match_independent_computation(self):
        rng = random.Random(4)
        events = random_events(rng, 300)
        acc = SecondAccumulator(1000)
        for start in range(0, 300, 37):  # several batches
            chunk = events[start:start + 37]
            acc.add(sno.decode_batch([hand_built(r, s, g, t, h) for r, s, g, t, h in chunk]),
                    order=start)
        doc = json.loads(acc.payload("x", np.random.default_rng(0)))
        trig, nhit, charge, occ, hist = expected_sums(events)
        self.assertEqual(doc["trig"], trig)
        self.assertEqual(doc["nhit"], nhit)
        self.assertEqual(doc["charge"], charge)
        # occupancy is not in the payload: it goes to the per-channel store
        self.assertNotIn("occ", doc)
        hit = np.flatnonzero(acc.occupancy)
        self.assertEqual({int(i): int(acc.occupancy[i]) for i in hit}, occ)
        self.assertEqual(dict(zip(doc["hist"][::2], doc["hist"][1::2])), hist)
        self.assertEqual(doc["last"], list(events[-1][:3]))
        self.assertEqual(doc["events"], 300)
        self.assertEqual(len(doc["samples"]), 100)
        self.assertTrue(set(doc["samples"]) <= {len(pmt_hits(e[4])) for e in events})

    def test_last_follows_receipt_order(self):
        acc = SecondAccumulator(5)
        acc.add(sno.decode_batch([hand_built(2, 2, 2, 1, [])]), order=20)
        acc.add(sno.decode_batch([hand_built(1, 1, 1, 1, [])]), order=10)
        self.assertEqual(acc.last, (2, 2, 2))

    def test_idle_second_payload(self):
        doc = json.loads(SecondAccumulator(7).payload("id", np.random.default_rng()))
        self.assertEqual(doc, {"id": "id", "t": 7, "events": 0})
