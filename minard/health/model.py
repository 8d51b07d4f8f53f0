"""Rolling baselines per channel and the findings judged against them (pure numpy, no I/O).

For each quantity (occupancy, CMOS rate, base current) every channel has a baseline, an
exponentially weighted mean and variance of its value in the finalised buckets (alpha =
1 / baseline-buckets; the first buckets are a plain average, so a young baseline is the
mean of what it has seen), and a "noise" figure: a faster EWMA (1 / noisy-buckets) of the
squared second difference of its last three values, x(b) − 2 x(b−1) + x(b−2), over the
6 σ² it has for a channel behaving as usual (about 1 then). Second differences: a level
that shifts once or drifts steadily is not noise (a drift is the base-current finding's,
a shift the hot or dead one's); a value that jumps up and down is.

The standard deviation a deviation is measured in is the larger of the baseline's and
the counting statistics of this bucket (occupancy: Poisson, (λ + 1) / events², λ the
expected hits; CMOS: rate × H counts, and CMOS_SD_FLOOR_RELATIVE of the rate for the
receipt-time jitter; base current: BASE_SD_FLOOR), so a young baseline or a quiet
bucket cannot make a fluctuation look significant. Occupancy and CMOS values
are compared after dividing by the bucket's global ratio to the baselines (the median
over channels; base current: after subtracting the median shift): a change of run
conditions moves every channel together and is not a channel finding.

Findings (one per location and kind; quantities merged):
* `dark` card or crate: a card whose channels lost their data (occupancy: its hits fell
  below (1 − dark-fraction) of those its baselines expect, at least min-hits; CMOS rate,
  base current: dark-fraction of its channels with a baseline have no value), or a
  crate with dark-fraction of its judged cards dark. ONE finding per card or crate; its
  channels are not reported one by one.
* `dead` channel: no hits (min-hits expected) or no CMOS counts (baseline above
  cmos-min-rate), dead-buckets buckets in a row, on a card that is not dark.
* `hot` channel (occupancy, CMOS): > hot-factor × its baseline, > hot-card-factor × its
  card's median, and hot-sigma standard deviations (occupancy: and min-hits hits) above.
* `noisy` channel: its recent noise > noisy-factor² (its recent bucket-to-bucket jumps
  noisy-factor times its usual ones); each term counts at most noise_clip(), so that
  one jump (a step: two terms) never makes a channel noisy, three in a row do.
* `base` channel: base current further than max(base-band, base-sigma σ) from baseline.
A finding opens on the first bucket its condition holds (dead: the dead-buckets-th), and
ends in the first bucket where it is judged and its condition no longer holds at
`release` × the thresholds (a bucket without data for it decides nothing). Channels of
crates that are not installed, of the trigger-sum card, and masked ones are never judged.
The baselines learn only from values that are not anomalous (a hot channel does not
become its own normal), with deviations winsorised at WINSOR σ around the global shift.
"""
import dataclasses
import time
import warnings

import numpy as np

from minard import constants as C

NAMES = ("occupancy", "cmos", "base")
LABELS = {"occupancy": "occupancy", "cmos": "CMOS rate", "base": "base current"}
N = C.N_CHANNELS
PER_CARD = C.N_CHANNELS_PER_CARD
PER_CRATE = C.N_CARDS * PER_CARD
N_CARDS_ALL = C.N_CRATES * C.N_CARDS

#: Standard deviation (ADC counts) below which a base-current bucket mean is not
#: resolved (the ADC's 1-count step).
BASE_SD_FLOOR = 0.5
#: A CMOS rate is counts over the time between two receipts of the crate's records
#: (SPEC §3), which the hosts' load moves by tens of ms a second: its standard deviation
#: is at least this share of the rate (a busy machine does not make channels noisy).
CMOS_SD_FLOOR_RELATIVE = 0.05
#: Deviations beyond this many σ (around the bucket's global shift) teach a baseline only
#: this far.
WINSOR = 4.0
#: A global ratio / shift needs this many channels with a baseline and a value.
GLOBAL_MIN_CHANNELS = 50
#: Open findings kept at most (a mass failure beyond this is one summary alarm).
MAX_OPEN = 512
COUNT_MAX = np.iinfo(np.uint16).max
STREAK_MAX = np.iinfo(np.uint8).max

#: The byte format of a stored baseline (little-endian): header, then float32 mean[N],
#: var[N], noise[N], last[N], before[N] (the last two values, normalised by their
#: bucket's global ratio or shift; NaN = none), uint16 count[N], uint8 streak[N].
#: 235,536 bytes.
BASELINE_MAGIC = b"MHB1"
BASELINE_HEADER = np.dtype([("magic", "S4"), ("channels", "<u4"), ("interval", "<u4"),
                            ("reserved", "<u4")])
FLOATS = ("mean", "var", "noise", "last", "before")
BASELINE_SIZE = BASELINE_HEADER.itemsize + N * (4 * len(FLOATS) + 2 + 1)

KINDS = ("dark", "hot", "base", "noisy", "dead")  # in the order alarms are raised
KIND_QUANTITIES = {"dark": NAMES, "dead": ("occupancy", "cmos"), "hot": ("occupancy", "cmos"),
                   "noisy": NAMES, "base": ("base",)}
KIND_LABELS = {"dead": "dead", "hot": "hot", "noisy": "noisy",
               "base": "base current out of range"}
#: Alarm levels (SPEC §5.2): a dark card or crate is DANGER, a channel WARNING; "cleared"
#: is SUCCESS, as the watchdog's.
ALARM_LEVEL_GROUP = C.ALARM_LEVEL
ALARM_LEVEL_CHANNEL = 30
ALARM_LEVEL_CLEARED = 21
ALARM_NAME = "channel-health"


def judged_channels():
    """bool[N]: PMT channels of the installed crates (not the trigger-sum card)."""
    ok = np.zeros(N, dtype=bool)
    for crate in C.INSTALLED_CRATES:
        ok[crate * PER_CRATE:(crate + 1) * PER_CRATE] = True
    first = C.channel_index(C.TRIGGER_SUM_CARD[0], C.TRIGGER_SUM_CARD[1], 0)
    ok[first:first + PER_CARD] = False
    return ok


class Baseline:
    """One quantity's rolling baseline per channel (float64 in memory, rounded to the
    float32 it is stored as after every update, so a restart resumes exactly)."""

    __slots__ = FLOATS + ("count", "streak")

    def __init__(self, mean=None, var=None, noise=None, last=None, before=None, count=None,
                 streak=None):
        self.mean = np.zeros(N) if mean is None else mean
        self.var = np.zeros(N) if var is None else var
        self.noise = np.ones(N) if noise is None else noise
        self.last = np.full(N, np.nan) if last is None else last
        self.before = np.full(N, np.nan) if before is None else before
        self.count = np.zeros(N, dtype=np.int64) if count is None else count
        self.streak = np.zeros(N, dtype=np.int64) if streak is None else streak

    def copy(self):
        return Baseline(*(getattr(self, s).copy() for s in self.__slots__))

    def round(self):
        for name in FLOATS:
            setattr(self, name, getattr(self, name).astype("<f4").astype(np.float64))

    def to_bytes(self, interval):
        header = np.zeros(1, BASELINE_HEADER)
        header["magic"] = BASELINE_MAGIC
        header["channels"] = N
        header["interval"] = interval
        return b"".join([header.tobytes()]
                        + [getattr(self, name).astype("<f4").tobytes() for name in FLOATS]
                        + [np.minimum(self.count, COUNT_MAX).astype("<u2").tobytes(),
                         np.minimum(self.streak, STREAK_MAX).astype("u1").tobytes()])

    @classmethod
    def from_bytes(cls, blob, interval):
        """A Baseline from its bytes; ValueError if they are not a baseline of `interval`."""
        if len(blob) != BASELINE_SIZE or blob[:4] != BASELINE_MAGIC:
            raise ValueError("not a channel-health baseline (%d bytes)" % len(blob))
        header = np.frombuffer(blob, BASELINE_HEADER, count=1)[0]
        if int(header["channels"]) != N or int(header["interval"]) != interval:
            raise ValueError("a baseline of %d-s buckets, not %d-s"
                             % (int(header["interval"]), interval))
        at = BASELINE_HEADER.itemsize
        arrays = []
        for dtype in ("<f4",) * len(FLOATS) + ("<u2", "u1"):
            size = np.dtype(dtype).itemsize * N
            arrays.append(np.frombuffer(blob, dtype, count=N, offset=at).astype(
                np.float64 if dtype == "<f4" else np.int64))
            at += size
        return cls(*arrays)


# -- formatting (alarms and the page say the same) ----------------------------------------

def fmt_value(name, v):
    if v is None or v != v:
        return "no data"
    if name == "cmos":
        a = abs(v)
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if a >= scale:
                return "%.3g %sHz" % (v / scale, suffix)
        return "%.3g Hz" % v
    if name == "base":
        return "%.1f" % (0.0 if abs(v) < 0.05 else v)  # not "-0.0"
    return "%.3g" % v


def fmt_time(t):
    return time.strftime("%H:%M:%S", time.gmtime(t))


def fmt_duration(seconds):
    seconds = int(max(0, seconds))
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    if seconds < 172800:
        return "%.1f h" % (seconds / 3600)
    return "%.1f days" % (seconds / 86400)


def where_text(f):
    text = "crate %d" % f["crate"]
    if f["card"] is not None:
        text += " card %d" % f["card"]
    if f["channel"] is not None:
        text += " channel %d (%d)" % (f["channel"], f["index"])
    return text


def kind_text(f):
    if f["kind"] == "dark":
        return "%s dark" % f["level"]
    return KIND_LABELS[f["kind"]]


def _num(x):
    """A float for JSON (None for NaN), 7 significant digits."""
    if x is None:
        return None
    x = float(x)
    return None if x != x else float("%.7g" % x)


# -- one quantity of one bucket -----------------------------------------------------------

@dataclasses.dataclass
class Judged:
    """What one quantity of one bucket says (arrays over channels, cards, crates)."""
    name: str
    x: np.ndarray              # values (NaN = none)
    present: np.ndarray
    ready: np.ndarray          # judged, with a baseline of warmup buckets
    sd: np.ndarray
    expects: np.ndarray        # a value was due (for missing / dead / dark)
    eligible: np.ndarray       # not masked: hot, noisy, out count as findings here
    card_judged: np.ndarray
    card_dark: np.ndarray
    crate_judged: np.ndarray
    crate_dark: np.ndarray
    dead: np.ndarray           # no value where due, not covered by a dark card or crate
    hot: np.ndarray
    noisy: np.ndarray
    out: np.ndarray            # base current out of range
    noise: np.ndarray          # the noise after this bucket
    level: np.ndarray          # the values normalised (global ratio or shift): history
    events: float
    card_value: np.ndarray
    card_baseline: np.ndarray
    card_missing: np.ndarray
    crate_value: np.ndarray
    crate_baseline: np.ndarray
    crate_cards_dark: np.ndarray
    crate_cards_judged: np.ndarray


def noise_clip(config):
    """The most one bucket's term adds to the noise: two such terms in a row (one jump,
    as a step makes) stay 10 % below noisy-factor², starting from the usual 1."""
    keep = (1.0 - 1.0 / config.noisy_buckets) ** 2
    return 0.9 * (config.noisy_factor ** 2 - keep) / (1.0 - keep)


def group_median(values, size):
    """The median of each group of `size` consecutive values, NaN left out (NaN for a
    group without values); np.nanmedian is ~10 times slower."""
    v = np.sort(values.reshape(-1, size), axis=1)  # NaN sort last
    n = (~np.isnan(v)).sum(axis=1)
    lo = np.take_along_axis(v, np.maximum(n - 1, 0)[:, None] // 2, axis=1)[:, 0]
    hi = np.take_along_axis(v, (n // 2)[:, None].clip(0, size - 1), axis=1)[:, 0]
    return np.where(n > 0, (lo + hi) / 2, np.nan)


def group_mean(values, size):
    """The mean of each group of `size` consecutive values, NaN left out."""
    v = values.reshape(-1, size)
    ok = ~np.isnan(v)
    n = ok.sum(axis=1)
    total = np.where(ok, v, 0.0).sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def has_data(name, blob):
    """Whether a decoded finalised bucket (or None) holds data to judge."""
    if blob is None:
        return False
    if name == "occupancy" and not blob["denominator"] > 0:
        return False
    return bool(np.any(~np.isnan(blob["values"])))


class Holds:
    """Which locations have an open finding of each kind (their thresholds are
    relaxed by `release` until they end)."""

    def __init__(self, findings):
        self.channel = {k: np.zeros(N, dtype=bool) for k in KINDS}
        self.card = np.zeros(N_CARDS_ALL, dtype=bool)
        self.crate = np.zeros(C.N_CRATES, dtype=bool)
        self.not_noisy = np.zeros(N, dtype=bool)  # covered by an open finding, not noisy
        for f in findings:
            if f["level"] == "channel":
                self.channel[f["kind"]][f["index"]] = True
                where = slice(f["index"], f["index"] + 1)
            elif f["level"] == "card":
                self.card[f["crate"] * C.N_CARDS + f["card"]] = True
                first = C.channel_index(f["crate"], f["card"], 0)
                where = slice(first, first + PER_CARD)
            else:
                self.crate[f["crate"]] = True
                where = slice(f["crate"] * PER_CRATE, (f["crate"] + 1) * PER_CRATE)
            if f["kind"] != "noisy":
                self.not_noisy[where] = True


def judge(config, name, blob, baseline, installed, eligible, holds):
    """(Judged, (ratio, dev)) of one quantity of one bucket (blob: a decoded finalised
    bucket with data): the judged arrays, and the bucket's global ratio and each
    channel's deviation from its baseline after it (for `learn`). Pure.

    installed: the channels whose anomalies are computed (a masked channel's too, so that
    its baseline does not learn them); eligible: those judged for findings and counted
    in a card's or crate's (not masked)."""
    cfg = config
    rel = cfg.release
    x = blob["values"]
    present = ~np.isnan(x)
    events = float(blob["denominator"]) if name == "occupancy" else 0.0
    known = installed & (baseline.count >= cfg.warmup_buckets)
    ready = known & eligible
    mean = baseline.mean
    # the counting statistics of this bucket (see the module docstring)
    if name == "occupancy":
        e = max(events, 1.0)
        floor = (np.maximum(mean, 0.0) * e + 1.0) / (e * e)
    elif name == "cmos":
        h = float(cfg.interval)
        rate = np.maximum(mean, 0.0)
        floor = np.maximum((rate * h + 1.0) / (h * h), (CMOS_SD_FLOOR_RELATIVE * rate) ** 2)
    else:
        floor = np.full(N, BASE_SD_FLOOR ** 2)
    sd = np.sqrt(np.maximum(baseline.var, floor))
    both = known & present
    # the bucket's global ratio (occupancy, CMOS) or shift (base) to the baselines
    if name == "base":
        shifts = (x - mean)[both]
        shift = float(np.median(shifts)) if shifts.size >= GLOBAL_MIN_CHANNELS else 0.0
        dev = x - mean - shift
        ratio = 1.0
    else:
        ok = both & (mean > 0)
        ratios = x[ok] / mean[ok]
        ratio = float(np.median(ratios)) if ratios.size >= GLOBAL_MIN_CHANNELS else 1.0
        if not ratio > 0:
            ratio = 1.0
        dev = x / ratio - mean

    # missing values where the baseline says there should be some
    if name == "occupancy":
        expects = ready & (mean > 0)
        expected_hits = np.where(expects, mean * events, 0.0)
    elif name == "cmos":
        expects = ready & (mean >= cfg.cmos_min_rate)
        expected_hits = None
    else:
        expects = ready.copy()
        expected_hits = None
    missing = expects & ~present

    # cards
    cj = expects.reshape(N_CARDS_ALL, PER_CARD).sum(axis=1)
    cm = missing.reshape(N_CARDS_ALL, PER_CARD).sum(axis=1)
    fraction = np.where(holds.card, cfg.dark_fraction * rel, cfg.dark_fraction)
    if name == "occupancy":
        card_expected = expected_hits.reshape(N_CARDS_ALL, PER_CARD).sum(axis=1)
        seen = np.where(expects & present, x * events, 0.0).reshape(
            N_CARDS_ALL, PER_CARD).sum(axis=1)
        card_judged = (cj >= cfg.dark_min_channels) & (card_expected >= cfg.min_hits)
        card_dark = card_judged & (seen <= (1.0 - fraction) * card_expected)
    else:
        card_judged = cj >= cfg.dark_min_channels
        card_dark = card_judged & (cm >= fraction * np.maximum(cj, 1))
    # crates
    per_crate = card_judged.reshape(C.N_CRATES, C.N_CARDS).sum(axis=1)
    dark_cards = card_dark.reshape(C.N_CRATES, C.N_CARDS).sum(axis=1)
    crate_fraction = np.where(holds.crate, cfg.dark_fraction * rel, cfg.dark_fraction)
    crate_judged = per_crate >= 2
    crate_dark = crate_judged & (dark_cards >= crate_fraction * np.maximum(per_crate, 1))
    covered = np.repeat(card_dark, PER_CARD) | np.repeat(crate_dark, PER_CRATE)

    # dead channels (occupancy, CMOS): not covered by a dark card or crate
    if name == "occupancy":
        dead = missing & (expected_hits >= cfg.min_hits) & ~covered
    elif name == "cmos":
        dead = missing & ~covered
    else:
        dead = np.zeros(N, dtype=bool)

    # hot channels (occupancy, CMOS)
    hot = np.zeros(N, dtype=bool)
    if name in ("occupancy", "cmos"):
        hold = holds.channel["hot"]
        factor = np.where(hold, 1 + (cfg.hot_factor - 1) * rel, cfg.hot_factor)
        card_factor = np.where(hold, 1 + (cfg.hot_card_factor - 1) * rel, cfg.hot_card_factor)
        sigma = np.where(hold, cfg.hot_sigma * rel, cfg.hot_sigma)
        card_median = np.repeat(group_median(np.where(installed, x, np.nan), PER_CARD),
                                PER_CARD)
        xn = x / ratio
        hot = (both & (xn > factor * mean) & (x > card_factor * card_median)
               & (dev > sigma * sd))
        if name == "occupancy":
            hot &= dev * events >= np.where(hold, cfg.min_hits * rel, cfg.min_hits)

    # base current out of its range
    out = np.zeros(N, dtype=bool)
    if name == "base":
        hold = holds.channel["base"]
        width = np.maximum(cfg.base_band, cfg.base_sigma * sd)
        out = both & (np.abs(dev) > np.where(hold, width * rel, width))

    # noise: the fast EWMA of the squared second differences over 6 σ², clipped
    af = 1.0 / cfg.noisy_buckets
    level = x - shift if name == "base" else x / ratio  # normalised value
    jump = level - 2 * baseline.last + baseline.before
    term = np.minimum(np.where(np.isnan(jump), 0.0, jump) ** 2 / (6 * sd * sd),
                      noise_clip(cfg))
    # (a channel under another open finding teaches nothing; a noisy one keeps learning
    # its noise, so that its finding can end)
    learn_noise = both & ~np.isnan(jump) & ~hot & ~out & ~holds.not_noisy
    noise = np.where(learn_noise, baseline.noise + af * (term - baseline.noise),
                     baseline.noise)
    hold = holds.channel["noisy"]
    noisy = both & (noise > np.where(hold, (cfg.noisy_factor * rel) ** 2,
                                     cfg.noisy_factor ** 2))

    # group values for the findings' details
    masked_x = np.where(expects & present, x, np.nan)
    base_x = np.where(expects, mean, np.nan)
    card_value = group_mean(masked_x, PER_CARD)
    card_baseline = group_mean(base_x, PER_CARD)
    crate_value = group_mean(masked_x, PER_CRATE)
    crate_baseline = group_mean(base_x, PER_CRATE)
    return Judged(name=name, x=x, present=present, ready=ready, sd=sd, expects=expects,
                  eligible=eligible,
                  card_judged=card_judged, card_dark=card_dark, crate_judged=crate_judged,
                  crate_dark=crate_dark, dead=dead, hot=hot, noisy=noisy, out=out,
                  noise=noise, level=level, events=events, card_value=card_value,
                  card_baseline=card_baseline, card_missing=np.stack([cm, cj], axis=1),
                  crate_value=crate_value, crate_baseline=crate_baseline,
                  crate_cards_dark=dark_cards, crate_cards_judged=per_crate), (ratio, dev)


def learn(config, baseline, judged, dev, ratio):
    """The baseline after this bucket: values that are not anomalous teach it (a noisy
    channel teaches only its noise). Returns a new Baseline."""
    cfg = config
    new = baseline.copy()
    x, present = judged.x, judged.present
    anomalous = judged.hot | judged.out | judged.noisy
    teach = present & ~anomalous
    a = np.maximum(1.0 / cfg.baseline_buckets, 1.0 / (baseline.count + 1.0))
    d = x - baseline.mean
    # winsorise the channels with a baseline around the bucket's global shift
    centre = d - dev if judged.name == "base" else (ratio - 1.0) * baseline.mean
    reach = WINSOR * judged.sd
    d = np.where(judged.ready, np.clip(d, centre - reach, centre + reach), d)
    d = np.where(teach, d, 0.0)
    new.mean = baseline.mean + np.where(teach, a * d, 0.0)
    new.var = np.where(teach, (1.0 - a) * (baseline.var + a * d * d), baseline.var)
    new.count = np.where(teach, np.minimum(baseline.count + 1, COUNT_MAX), baseline.count)
    new.noise = judged.noise
    new.before = baseline.last
    new.last = np.where(present, judged.level, np.nan)
    if judged.name in ("occupancy", "cmos"):
        new.streak = np.where(judged.dead, np.minimum(baseline.streak + 1, STREAK_MAX), 0)
    new.round()
    return new


# -- findings -----------------------------------------------------------------------------

@dataclasses.dataclass
class Step:
    """The outcome of one bucket, applied by the service in one atomic write."""
    bucket: int
    baselines: dict            # name -> Baseline (only the quantities that had data)
    findings: list             # the open findings after this bucket, newest first
    opened: list
    closed: list
    alarms: list               # [(level, message)]
    next_id: int
    applied: int


def _key(kind, crate, card=None, channel=None):
    parts = [kind, str(crate)]
    if card is not None:
        parts.append(str(card))
    if channel is not None:
        parts.append(str(channel))
    return "/".join(parts)


class HealthModel:
    """The state of the channel-health judge: baselines, open findings, next finding id,
    position (the last bucket applied). `step(b, data, masked)` judges one bucket and
    returns a Step without changing the model; `commit(step)` takes it once stored."""

    def __init__(self, config, baselines=None, findings=None, next_id=1, position=None,
                 applied=0, stale=None):
        self.config = config
        self.stale = list(stale or [])  # open findings of other baselines: closed first
        self.baselines = baselines or {name: Baseline() for name in NAMES}
        self.findings = list(findings or [])
        self.next_id = next_id
        self.position = position
        self.applied = applied
        self.installed = judged_channels()

    def commit(self, step):
        self.baselines = dict(self.baselines, **step.baselines)
        self.findings = step.findings
        self.next_id = step.next_id
        self.position = step.bucket
        self.applied = step.applied
        self.stale = []

    def step(self, b, data, masked=None):
        """Judge bucket b. data: {name: decoded finalised bucket or None}; masked: bool[N]
        of masked channels (or None)."""
        cfg = self.config
        t0 = b * cfg.interval
        masked = np.zeros(N, dtype=bool) if masked is None else masked
        eligible = self.installed & ~masked
        holds = Holds(self.findings)
        judged, baselines = {}, {}
        for name in NAMES:
            blob = data.get(name)
            if not has_data(name, blob):
                continue
            j, (ratio, dev) = judge(cfg, name, blob, self.baselines[name], self.installed,
                                    eligible, holds)
            judged[name] = j
            baselines[name] = learn(cfg, self.baselines[name], j, dev, ratio)
        active = self._active(judged, baselines, t0)
        findings, opened = [], []
        closed = [dict(f, until=t0, end="reset") for f in self.stale]
        by_key = {f["key"]: f for f in self.findings}
        for f in self.findings:
            status = self._status(f, judged, active, eligible)
            if status == "active":
                f = dict(f, last=t0, quantities=sorted(set(f["quantities"]) | set(
                    active[f["key"]]["quantities"])), details=dict(
                        f["details"], **active[f["key"]]["details"]))
                f["summary"] = summary_lines(f)
                findings.append(f)
            elif status in ("returned", "masked"):
                closed.append(dict(f, until=t0, end=status))
            else:
                findings.append(f)
        next_id = self.next_id
        order = {k: i for i, k in enumerate(KINDS)}
        levels = {"crate": 0, "card": 1, "channel": 2}
        new = sorted((a for k, a in active.items() if k not in by_key),
                     key=lambda a: (order[a["kind"]], levels[a["level"]], a["key"]))
        room = max(0, MAX_OPEN - len(findings))
        for a in new[:room]:
            f = dict(a, id=next_id, last=t0, until=None, end=None,
                     quantities=sorted(a["quantities"]))
            f["summary"] = summary_lines(f)
            next_id += 1
            opened.append(f)
        findings = opened[::-1] + findings
        findings.sort(key=lambda f: (-f["since"], -f["id"]))
        alarms = self._alarms(opened, closed, len(new) - len(new[:room]), t0)
        return Step(bucket=b, baselines=baselines, findings=findings, opened=opened,
                    closed=closed, alarms=alarms, next_id=next_id, applied=self.applied + 1)

    # -- what is wrong in this bucket --------------------------------------------------------

    def _active(self, judged, baselines, t0):
        """{key: finding fields} of every condition that holds in bucket t0 (since: the
        bucket, or a dead channel's first dead bucket)."""
        cfg = self.config
        active = {}

        def add(kind, level, crate, card, channel, name, details, since_back=0):
            key = _key(kind, crate, card, channel)
            a = active.get(key)
            if a is None:
                a = active[key] = {
                    "key": key, "kind": kind, "level": level, "crate": crate, "card": card,
                    "channel": channel,
                    "index": None if channel is None else C.channel_index(crate, card, channel),
                    "quantities": [], "details": {}, "back": 0}
            a["quantities"].append(name)
            a["details"][name] = details
            a["back"] = max(a["back"], since_back)

        for name, j in judged.items():
            for crate in np.flatnonzero(j.crate_dark):
                add("dark", "crate", int(crate), None, None, name, {
                    "value": _num(j.crate_value[crate]),
                    "baseline": _num(j.crate_baseline[crate]),
                    "cards_dark": int(j.crate_cards_dark[crate]),
                    "cards_judged": int(j.crate_cards_judged[crate])})
            crate_of_card = np.arange(N_CARDS_ALL) // C.N_CARDS
            for g in np.flatnonzero(j.card_dark & ~j.crate_dark[crate_of_card]):
                add("dark", "card", int(g // C.N_CARDS), int(g % C.N_CARDS), None, name, {
                    "value": _num(j.card_value[g]), "baseline": _num(j.card_baseline[g]),
                    "missing": int(j.card_missing[g][0]),
                    "judged": int(j.card_missing[g][1])})
            base = self.baselines[name]
            streak = baselines[name].streak
            for kind, flags in (("hot", j.hot), ("noisy", j.noisy), ("base", j.out)):
                for i in np.flatnonzero(flags & j.eligible):
                    d = {"value": _num(j.x[i]), "baseline": _num(base.mean[i]),
                         "sigma": _num(j.sd[i])}
                    if kind == "noisy":
                        d["noise"] = _num(np.sqrt(j.noise[i]))
                    if kind == "base":
                        w = max(cfg.base_band, cfg.base_sigma * j.sd[i])
                        d["low"], d["high"] = _num(base.mean[i] - w), _num(base.mean[i] + w)
                    add(kind, "channel", int(i >> 9), int(i >> 5 & 15), int(i & 31), name, d)
            if name in ("occupancy", "cmos"):
                held = self._held_dead()
                dead = j.dead & ((streak >= cfg.dead_buckets) | held)
                for i in np.flatnonzero(dead):
                    d = {"value": None, "baseline": _num(base.mean[i])}
                    if name == "occupancy":
                        d["expected_hits"] = _num(base.mean[i] * j.events)
                    add("dead", "channel", int(i >> 9), int(i >> 5 & 15), int(i & 31), name, d,
                        since_back=int(streak[i]) - 1)
        for a in active.values():
            a["since"] = t0 - a.pop("back") * cfg.interval
        return active

    def _held_dead(self):
        held = np.zeros(N, dtype=bool)
        for f in self.findings:
            if f["kind"] == "dead":
                held[f["index"]] = True
        return held

    def _status(self, f, judged, active, eligible):
        """active / returned / masked / unknown for an open finding."""
        if f["key"] in active:
            return "active"
        if f["level"] == "channel":
            if not eligible[f["index"]]:
                return "masked"
        elif f["level"] == "card":
            first = C.channel_index(f["crate"], f["card"], 0)
            if not eligible[first:first + PER_CARD].any():
                return "masked"
        elif not eligible[f["crate"] * PER_CRATE:(f["crate"] + 1) * PER_CRATE].any():
            return "masked"
        clear = False
        for name in f["quantities"]:
            j = judged.get(name)
            if j is None:
                continue
            if f["level"] == "crate":
                seen = bool(j.crate_judged[f["crate"]])
            elif f["level"] == "card":
                g = f["crate"] * C.N_CARDS + f["card"]
                seen = bool(j.card_judged[g]) and not bool(j.crate_dark[f["crate"]])
            else:
                i = f["index"]
                seen = bool(j.ready[i] and j.present[i])
            clear = clear or seen
        return "returned" if clear else "unknown"

    def _alarms(self, opened, closed, dropped, t0):
        cfg = self.config
        alarms = []
        shown = opened if len(opened) + (1 if dropped else 0) <= cfg.max_alarms \
            else opened[:cfg.max_alarms - 1]
        for f in shown:
            level = ALARM_LEVEL_GROUP if f["kind"] == "dark" else ALARM_LEVEL_CHANNEL
            alarms.append((level, "%s - %s: %s since %s UTC (%s)" % (
                ALARM_NAME, where_text(f), kind_text(f), fmt_time(f["since"]),
                "; ".join(f["summary"]))))
        rest = len(opened) - len(shown) + dropped
        if rest:
            alarms.append((ALARM_LEVEL_GROUP, "%s - %d more findings in the bucket of %s UTC "
                           "(see the Channel health page)" % (ALARM_NAME, rest, fmt_time(t0))))
        for f in closed:
            why = {"masked": "masked", "reset": "baseline reset"}.get(f["end"], "back")
            alarms.append((ALARM_LEVEL_CLEARED, "%s - cleared (%s): %s: %s since %s UTC, for %s"
                           % (ALARM_NAME, why, where_text(f), kind_text(f),
                              fmt_time(f["since"]), fmt_duration(f["until"] - f["since"]))))
        return alarms


def summary_lines(f):
    """One line per quantity: the value against the baseline, as alarms and the page say."""
    lines = []
    for name in NAMES:
        d = f["details"].get(name)
        if d is None:
            continue
        label = LABELS[name]
        if f["kind"] == "dark" and f["level"] == "crate":
            lines.append("%s: %d of %d cards dark (baseline %s)" % (
                label, d["cards_dark"], d["cards_judged"], fmt_value(name, d["baseline"])))
        elif f["kind"] == "dark":
            what = {"occupancy": "hits", "cmos": "counts", "base": "a reading"}[name]
            lines.append("%s: %d of %d channels without %s (baseline %s)" % (
                label, d["missing"], d["judged"], what, fmt_value(name, d["baseline"])))
        elif f["kind"] == "dead":
            if name == "occupancy":
                lines.append("%s: no hits (baseline %s, %d hits expected)" % (
                    label, fmt_value(name, d["baseline"]), round(d["expected_hits"] or 0)))
            else:
                lines.append("%s: no counts (baseline %s)" % (
                    label, fmt_value(name, d["baseline"])))
        elif f["kind"] == "base":
            lines.append("%s %s vs baseline %s (range %s to %s)" % (
                label, fmt_value(name, d["value"]), fmt_value(name, d["baseline"]),
                fmt_value(name, d["low"]), fmt_value(name, d["high"])))
        elif f["kind"] == "noisy":
            lines.append("%s %s vs baseline %s, deviations %.1f× the usual" % (
                label, fmt_value(name, d["value"]), fmt_value(name, d["baseline"]),
                d["noise"] or 0))
        else:
            ratio = (d["value"] / d["baseline"]) if d["baseline"] else None
            lines.append("%s %s vs baseline %s%s" % (
                label, fmt_value(name, d["value"]), fmt_value(name, d["baseline"]),
                " (×%.3g)" % ratio if ratio else ""))
    return lines
