"""The `[health]` section of the --config INI file: every threshold of the channel-health
service, by name, with the defaults that give no finding over a long run of the
simulator's steady detector (bench/bench_health.py records it).

    [health]
    enabled = yes
    interval = 60              ; s: the finalised per-channel buckets judged (5 or 60)
    warmup-buckets = 10        ; buckets a channel needs in its baseline before it is judged
    baseline-buckets = 30      ; EWMA span of the baseline (alpha = 1 / this)
    noisy-buckets = 5          ; EWMA span of the recent noise (noisy)
    min-hits = 20              ; hits a verdict on occupancy needs: "no hits" only where
                               ; the baseline expected at least this many, "hot" only
                               ; with at least this many above it
    cmos-min-rate = 10         ; Hz: "no CMOS counts" only for a baseline rate above this
    dead-buckets = 2           ; consecutive buckets a single channel must be dead
    dark-fraction = 0.9        ; share of a card's (crate's) channels (cards) without data
    dark-min-channels = 4      ; a card with fewer judged channels is not judged as a card
    hot-factor = 5             ; hot: value > hot-factor × baseline ...
    hot-card-factor = 3        ; ... and > hot-card-factor × its card's median ...
    hot-sigma = 6              ; ... and value − baseline > hot-sigma standard deviations
    noisy-factor = 4           ; noisy: recent bucket-to-bucket jumps this many times
                               ; the usual ones (a step or a steady drift is not noise)
    base-band = 8              ; ADC counts: base current out of range if further than
    base-sigma = 6             ; max(base-band, base-sigma standard deviations) from baseline
    release = 0.5              ; an open finding ends only below release × its thresholds
    catch-up-buckets = 15      ; after an outage at most this many missed buckets are judged
    max-alarms = 10            ; alarms raised for one bucket at most (then one summary)

Parsed strictly, like `[watchdog]`: an unknown key or a bad value is a usage error naming
the key and its range.
"""
import dataclasses

from minard import constants as C

#: Intervals the service can judge: the finalised per-channel buckets of 5 s and 60 s
#: (5 s is for a quick look and the tests; the daily bucket is too coarse to alarm on).
INTERVALS = tuple(h for h in C.HASH_INTERVALS if h <= 60)

SECTION = "health"


@dataclasses.dataclass(frozen=True)
class HealthConfig:
    enabled: bool = True
    interval: int = 60
    warmup_buckets: int = 10
    baseline_buckets: int = 30
    noisy_buckets: int = 5
    min_hits: float = 20.0
    cmos_min_rate: float = 10.0
    dead_buckets: int = 2
    dark_fraction: float = 0.9
    dark_min_channels: int = 4
    hot_factor: float = 5.0
    hot_card_factor: float = 3.0
    hot_sigma: float = 6.0
    noisy_factor: float = 4.0
    base_band: float = 8.0
    base_sigma: float = 6.0
    release: float = 0.5
    catch_up_buckets: int = 15
    max_alarms: int = 10

    def as_dict(self):
        """{INI key: value} (what the page shows as the thresholds in force)."""
        return {f.name.replace("_", "-"): getattr(self, f.name)
                for f in dataclasses.fields(self)}


#: INI key -> (kind, low, high): the range each value must be in.
RANGES = {
    "interval": (int, None, None),
    "warmup-buckets": (int, 2, 1000),
    "baseline-buckets": (int, 2, 10000),
    "noisy-buckets": (int, 2, 1000),
    "min-hits": (float, 1, 1e9),
    "cmos-min-rate": (float, 0.01, 1e9),
    "dead-buckets": (int, 1, 100),
    "dark-fraction": (float, 0.1, 1.0),
    "dark-min-channels": (int, 1, C.N_CHANNELS_PER_CARD),
    "hot-factor": (float, 1.5, 1e6),
    "hot-card-factor": (float, 1.0, 1e6),
    "hot-sigma": (float, 1.0, 1000),
    "noisy-factor": (float, 1.5, 1000),
    "base-band": (float, 0.5, 255),
    "base-sigma": (float, 1.0, 1000),
    "release": (float, 0.1, 1.0),
    "catch-up-buckets": (int, 1, 1440),
    "max-alarms": (int, 1, 1000),
}
KEYS = {"enabled"} | set(RANGES)


def parse_section(section):
    """A HealthConfig from a [health] section ({key: text}, None for none); raises
    ValueError with the reason (the key, and what it must be)."""
    section = section or {}
    unknown = set(section) - KEYS
    if unknown:
        raise ValueError("[health] unknown key %r (known: %s)"
                         % (sorted(unknown)[0], ", ".join(sorted(KEYS))))
    values = {}
    enabled_text = str(section.get("enabled", "yes")).strip().lower()
    if enabled_text in ("yes", "true", "on", "1"):
        values["enabled"] = True
    elif enabled_text in ("no", "false", "off", "0"):
        values["enabled"] = False
    else:
        raise ValueError("[health] enabled must be yes or no, not %r" % (enabled_text,))
    for key, (kind, low, high) in RANGES.items():
        if key not in section:
            continue
        text = str(section[key]).strip()
        try:
            value = kind(text)
        except ValueError:
            raise ValueError("[health] %s must be %s, not %r"
                             % (key, "a whole number" if kind is int else "a number", text))
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("[health] %s must be a finite number" % (key,))
        if key == "interval":
            if value not in INTERVALS:
                raise ValueError("[health] interval must be one of %s (s: the finalised "
                                 "per-channel buckets)" % ", ".join(map(str, INTERVALS)))
        elif not low <= value <= high:
            raise ValueError("[health] %s must be between %g and %g" % (key, low, high))
        values[key.replace("-", "_")] = value
    return HealthConfig(**values)
