"""Query parameters of the main site: times, windows, integers (SPEC §5.1).

Every function raises BadRequest with a reason a person can read; the site turns it into
HTTP 400 `{"error": reason}`. Nothing here touches the reactor or Redis.

Times (`start`, `stop`, `now`) are ISO-8601 (`2016-04-18T12:00:00.000Z`, what JavaScript's
toISOString gives; an offset or no zone, meaning UTC, is accepted too) or unix seconds.
`now` is the client's clock: the window is shifted by `now − server_now` so that a browser
whose clock is off still sees the last minutes, not a window in the future or the past.
"""
import math
import re
from datetime import datetime, timezone

from minard.constants import MAX_METRIC_VALUES, MAX_POINTS
from minard.errors import BadRequest, NotFound  # noqa: F401 (the site's errors)
from minard.store.keys import hash_interval_for, interval_for  # noqa: F401

#: Times before this or after the year 3000 are mistakes, not requests.
EARLIEST = 0.0
LATEST = 32503680000.0  # 3000-01-01

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"(Z|z|[+-]\d{2}:?\d{2})?$")


def parse_time(text, name):
    """ISO-8601 or unix seconds -> float unix seconds."""
    if text is None or text == "":
        raise BadRequest("missing %s" % (name,))
    text = text.strip()
    if _NUMBER.match(text):
        value = float(text)
    else:
        value = _parse_iso(text, name)
    if not math.isfinite(value) or not EARLIEST <= value <= LATEST:
        raise BadRequest("%s is out of range" % (name,))
    return value


def _parse_iso(text, name):
    m = _ISO.match(text)
    if not m:
        raise BadRequest("%s must be ISO-8601 (2016-04-18T12:00:00.000Z) or unix seconds"
                         % (name,))
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        dt = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                      int(second or 0), tzinfo=timezone.utc)
    except ValueError as e:
        raise BadRequest("%s is not a valid date (%s)" % (name, e))
    value = dt.timestamp()
    if fraction:
        value += int(fraction) / 10 ** len(fraction)
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise BadRequest("%s has a bad time-zone offset" % (name,))
        value -= sign * (hours * 3600 + minutes * 60)
    return value


def parse_int(text, name, minimum=None, maximum=None, default=None):
    """An integer parameter; None/empty -> default (BadRequest if there is none)."""
    if text is None or text == "":
        if default is None:
            raise BadRequest("missing %s" % (name,))
        return default
    text = text.strip()
    if not re.match(r"^[+-]?\d{1,18}$", text):
        raise BadRequest("%s must be an integer" % (name,))
    value = int(text)
    if minimum is not None and value < minimum:
        raise BadRequest("%s must be at least %d" % (name, minimum))
    if maximum is not None and value > maximum:
        raise BadRequest("%s must be at most %d" % (name, maximum))
    return value


def parse_window(start, stop, step, now, server_now, max_points=MAX_POINTS):
    """(start, stop, step) as ints for range(start, stop, step), skew-corrected.

    `step` must be a positive integer number of seconds; at most `max_points` points.
    """
    t0 = parse_time(start, "start")
    t1 = parse_time(stop, "stop")
    step = parse_int(step, "step", minimum=1, maximum=10 ** 9)
    if now is not None and now != "":
        skew = parse_time(now, "now") - server_now
        t0 -= skew
        t1 -= skew
    t0, t1 = int(t0), int(t1)
    if t0 >= t1:
        raise BadRequest("start must be before stop")
    points = len(range(t0, t1, step))
    if points > max_points:
        raise BadRequest("too many points: %d (at most %d; use a larger step)"
                         % (points, max_points))
    return t0, t1, step


def check_metric_cost(expressions, points, max_values=MAX_METRIC_VALUES):
    """A /metric request costs expressions × points values (each one or two Redis reads
    and a number in the answer): at most `max_values`, whatever the two are alone."""
    values = expressions * points
    if values > max_values:
        raise BadRequest(
            "too much at once: %d expression%s × %d point%s = %d values (at most %d); "
            "use fewer expressions or a larger step"
            % (expressions, "" if expressions == 1 else "s", points, "" if points == 1 else "s",
               values, max_values))
