"""The known DAQ programs (etc/programs.ini): who may post heartbeats and logs, and the
level of the alarm raised when one stops posting them (minard/watchdog.py)."""
import configparser
import re
from dataclasses import dataclass

from minard.constants import ALARM_LEVEL, LEVELS

#: A program name is used in Redis keys and log file names: keep it to a safe alphabet.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_EXPIRE = 10
#: The keys of a program's section.
PROGRAM_KEYS = ("machine", "description", "expire", "link", "alarm-level")
#: `alarm-level` values that mean "no alarm when this program stops".
NO_ALARM = ("off", "none", "no")


class ProgramsError(Exception):
    """programs.ini is unreadable or wrong; str() says where."""


@dataclass(frozen=True)
class Program:
    name: str
    machine: str = ""
    description: str = ""
    expire: int = DEFAULT_EXPIRE
    link: str = ""
    #: level of the "not responding" alarm; None: no alarm (alarm-level = off)
    alarm_level: int = ALARM_LEVEL


def read_ini(path, error=ValueError):
    """A parsed INI file (no interpolation), or `error` with a one-line reason."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise error("cannot read %s: %s" % (path, str(e).splitlines()[0]))
    return parser


def load_programs(path):
    """Programs in file order, as a dict name -> Program."""
    parser = read_ini(path, ProgramsError)
    programs = {}
    for name in parser.sections():
        if not NAME_PATTERN.match(name) or ".." in name:
            raise ProgramsError("%s: bad program name %r" % (path, name))
        section = parser[name]
        try:
            expire = int(section.get("expire", DEFAULT_EXPIRE))
        except ValueError:
            raise ProgramsError("%s: [%s] expire must be an integer" % (path, name))
        if expire <= 0:
            raise ProgramsError("%s: [%s] expire must be positive" % (path, name))
        unknown = sorted(set(section) - set(PROGRAM_KEYS))
        if unknown:
            raise ProgramsError("%s: [%s] unknown key %r (known: %s)"
                                % (path, name, unknown[0], ", ".join(PROGRAM_KEYS)))
        programs[name] = Program(
            name=name,
            machine=section.get("machine", ""),
            description=section.get("description", ""),
            expire=expire,
            link=section.get("link", ""),
            alarm_level=parse_alarm_level(section.get("alarm-level"), path, name),
        )
    return programs


def parse_alarm_level(text, path="programs.ini", name="?"):
    """`alarm-level` of a section: a level name (WARNING, DANGER ...), a number 1-1000, or
    off; missing: ALARM_LEVEL (40, DANGER). None for off; ProgramsError otherwise."""
    if text is None:
        return ALARM_LEVEL
    value = text.strip()
    names = {label: level for level, label in LEVELS.items()}
    if value.lower() in NO_ALARM:
        return None
    if value.upper() in names:
        return names[value.upper()]
    if value.isdigit() and 1 <= int(value) <= 1000:
        return int(value)
    raise ProgramsError("%s: [%s] alarm-level must be %s, a number 1-1000 or off, not %r"
                        % (path, name, ", ".join(sorted(names, key=names.get)), value))
