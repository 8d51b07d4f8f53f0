"""Reading the per-channel store (minard/store/channels.py) back in tests, and checking
finalised buckets against values computed independently (plain Python)."""
import math

import numpy as np

from minard import constants as C
from minard.store import channels, keys
from tests.test_channels import close, reference

N = C.N_CHANNELS


def final(sync, name, interval, b):
    """The decoded finalised bucket, or None if it is not finalised."""
    blob = sync.get_bytes("GET", keys.channel_final(name, interval, b))
    return None if blob is None else channels.decode_final(blob)


def parts(sync, name, interval, b):
    """(numerators, denominator) of a bucket, added over every writer's part: hits and
    events (occupancy), or sums and samples per channel (cmos, base)."""
    mode = channels.MODES[name]
    key = keys.channel_part(name, interval, b)
    num = np.zeros(N)
    den = 0.0 if mode == "ratio" else np.zeros(N, dtype=np.int64)
    for field in sync.command("HKEYS", key) or []:
        if field != "~v":
            n, d = channels.decode_part(sync.get_bytes("HGET", key, field), mode)
            num += n
            den = den + d
    return num, den


def buckets(sync, name, interval, what="chan"):
    """The buckets of an interval that are finalised ("chan") or have parts ("part")."""
    prefix = "minard:%s:%s:%d:" % (what, name, interval)
    return sorted(int(k[len(prefix):]) for k in sync.command("KEYS", prefix + "*"))


def open_buckets(sync, name, interval):
    """The buckets of an interval in minard:open:<name> (parts not yet finalised)."""
    members = sync.command("ZRANGE", keys.channel_open(name), 0, -1) or []
    return sorted(b for i, b in map(keys.parse_member, members) if i == interval)


def assert_occupancy(test, got, hits, events, msg=None):
    """A finalised occupancy bucket holds hits / events for exactly the channels with
    hits, each exactly the float32 of the quotient; `hits` is {channel: hits}."""
    test.assertIsNotNone(got, msg)
    test.assertEqual(got["denominator"], events, msg)
    values = got["values"]
    present = {int(i) for i in np.flatnonzero(~np.isnan(values))}
    test.assertEqual(present, {i for i, h in hits.items() if h > 0}, msg)
    for i, h in hits.items():
        if h > 0:
            test.assertEqual(values[i], float(np.float32(h / events)), (msg, i))
    assert_rollups(test, got, {i: h / events for i, h in hits.items() if h > 0}, msg)


def assert_means(test, got, means, msg=None):
    """A finalised cmos / base bucket holds exactly the channels of `means` ({channel:
    mean}), to float32 precision."""
    test.assertIsNotNone(got, msg)
    values = {i: v for i, v in enumerate(got["values"]) if not math.isnan(v)}
    test.assertEqual(set(values), set(means), msg)
    for i, v in means.items():
        test.assertTrue(close(values[i], v), (msg, i, values[i], v))
    assert_rollups(test, got, means, msg)


def assert_rollups(test, got, values, msg=None):
    """Card and crate averages and maxima over the channels with a value."""
    num = np.zeros(N)
    den = np.zeros(N, dtype=np.int64)
    for i, v in values.items():
        num[i], den[i] = v, 1
    _, groups = reference(num, den, "mean")
    scale = {"card": {}, "crate": {}}  # the largest |value| of each group
    for i, v in values.items():
        for level, g in (("card", i >> 5), ("crate", i >> 9)):
            scale[level][g] = max(scale[level].get(g, 0.0), abs(v))
    for level, size in (("card", C.N_CRATES * C.N_CARDS), ("crate", C.N_CRATES)):
        for g in range(size):
            if g in groups[level]:
                avg, mx = groups[level][g]
                # an average whose values cancel (base currents around 0) is compared to
                # float32 precision of its values, not of itself
                test.assertTrue(close(got[level + ":avg"][g], avg) or
                                abs(got[level + ":avg"][g] - avg) <= 2e-7 * scale[level][g],
                                (msg, level, g, got[level + ":avg"][g], avg))
                test.assertTrue(close(got[level + ":max"][g], mx), (msg, level, g))
            else:
                test.assertTrue(math.isnan(got[level + ":avg"][g]), (msg, level, g))
                test.assertTrue(math.isnan(got[level + ":max"][g]), (msg, level, g))


def hits_of(test, got):
    """{channel: hits} of a finalised occupancy bucket: value × events, which must be a
    whole number (float32 keeps it exact for fewer than ~10^6 hits)."""
    out = {}
    events = got["denominator"]
    for i in np.flatnonzero(~np.isnan(got["values"])):
        h = got["values"][i] * events
        test.assertLess(abs(h - round(h)), 1e-6 * max(1.0, h) + 0.05, (int(i), h))
        out[int(i)] = int(round(h))
    return out
