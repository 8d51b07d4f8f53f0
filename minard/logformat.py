"""The line format of the DAQ programs' log files (`<log-dir>/<name>.log`, SPEC §5.2).

One record per line: `<time> - <name> - <LEVEL> - <message>`, time as
`YYYY-MM-DD HH:MM:SS,mmm` in UTC. The message is escaped like Python's `unicode_escape`
(as the original log server did), so a file is pure ASCII, a newline inside a message
can never forge a second record, and `unescape_message` gives the text back exactly.
Readers (`/tail`, the Log page) use `parse_line`.
"""
import re
import time as _time

from minard.constants import LEVELS

SEPARATOR = " - "
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: Standard names of levels that the DAQ programs send but minard does not define.
_OTHER_LEVELS = {50: "CRITICAL"}
_LEVEL_NUMBERS = {name: number for number, name in {**_OTHER_LEVELS, **LEVELS}.items()}
_LEVEL_NUMBERS.update({"ERROR": 40, "WARN": 30})

LINE_PATTERN = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - (?P<name>[^ ]+) - "
    r"(?P<level>[A-Z]+|Level -?\d+) - (?P<message>.*)$")


def level_name(level):
    """10 DEBUG, 20 INFO, 21 SUCCESS, 30 WARNING, 40 DANGER, 50 CRITICAL, else `Level N`."""
    if level in LEVELS:
        return LEVELS[level]
    if level in _OTHER_LEVELS:
        return _OTHER_LEVELS[level]
    return "Level %d" % (level,)


def level_number(name):
    """The numeric level of a level name, or None."""
    if name in _LEVEL_NUMBERS:
        return _LEVEL_NUMBERS[name]
    if name.startswith("Level "):
        try:
            return int(name[6:])
        except ValueError:
            return None
    return None


def escape_message(message):
    """Text -> one line of ASCII (backslash, control and non-ASCII characters escaped)."""
    return message.encode("unicode_escape").decode("ascii")


def unescape_message(escaped):
    """The inverse of escape_message; never raises (a broken escape is kept as it is)."""
    try:
        return escaped.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        return escaped


def format_time(t):
    """Unix time -> `YYYY-MM-DD HH:MM:SS,mmm` (UTC)."""
    millis = int(round(t * 1000))
    seconds, ms = divmod(millis, 1000)
    return "%s,%03d" % (_time.strftime(TIME_FORMAT, _time.gmtime(seconds)), ms)


def format_line(t, name, level, message):
    """One log record, without the trailing newline."""
    return SEPARATOR.join((format_time(t), name, level_name(level), escape_message(message)))


def parse_line(line):
    """A log line -> dict(time, name, level (name), levelno, message (unescaped)) or None."""
    match = LINE_PATTERN.match(line.rstrip("\r\n"))
    if match is None:
        return None
    level = match.group("level")
    return {
        "time": match.group("time"),
        "name": match.group("name"),
        "level": level,
        "levelno": level_number(level),
        "message": unescape_message(match.group("message")),
    }
