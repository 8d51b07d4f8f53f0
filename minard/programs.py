"""The known DAQ programs (etc/programs.ini): who may post heartbeats and logs."""
import configparser
import re
from dataclasses import dataclass

#: A program name is used in Redis keys and log file names: keep it to a safe alphabet.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_EXPIRE = 10


class ProgramsError(Exception):
    """programs.ini is unreadable or wrong; str() says where."""


@dataclass(frozen=True)
class Program:
    name: str
    machine: str = ""
    description: str = ""
    expire: int = DEFAULT_EXPIRE
    link: str = ""


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
        programs[name] = Program(
            name=name,
            machine=section.get("machine", ""),
            description=section.get("description", ""),
            expire=expire,
            link=section.get("link", ""),
        )
    return programs
