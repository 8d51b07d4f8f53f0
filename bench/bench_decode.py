"""Parse + aggregate alone: events/s through decode_batch and SecondAccumulator.

    .venv/bin/python bench/bench_decode.py [--batch 4000] [--seconds 5]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minard.aggregate.events import SecondAccumulator  # noqa: E402
from minard.wire.sno import decode_batch, pmt_records_fast  # noqa: E402


def make_batch(n, mean_nhit, rng):
    nhit = rng.poisson(mean_nhit, n)
    total = int(nhit.sum())
    channels = rng.integers(0, 19 * 512, total)
    qhs = rng.integers(0, 2048, total)
    trig = rng.integers(0, 1 << 27, n) & rng.choice([0x9, 0x400, 0x1000, 0x49], n)
    return pmt_records_fast(1234, 5, np.arange(n), trig, channels, qhs, nhit)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4000)
    parser.add_argument("--nhit", type=float, default=30)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    batches = [make_batch(args.batch, args.nhit, rng) for _ in range(8)]
    acc = SecondAccumulator(0)
    events = 0
    start = time.perf_counter()
    cpu0 = time.process_time()
    i = 0
    while time.perf_counter() - start < args.seconds:
        b = decode_batch(batches[i % 8])
        acc.add(b, i)
        events += b.n_events
        i += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    print("command: %s" % " ".join([os.path.basename(sys.executable)] + sys.argv))
    print("batch %d records, mean nhit %.0f" % (args.batch, args.nhit))
    print("parse+aggregate: %.0f events/s (%.2f us CPU per event)"
          % (events / elapsed, cpu / events * 1e6))


if __name__ == "__main__":
    main()
