"""`/metrics`: Prometheus text exposition (format 0.0.4) of every minard process's
self-instrumentation (`minard:stats:<process>`, SPEC §4) and of liveness.

Each numeric field F of a process's stats hash becomes the sample
`minard_F{process="<process>"}`. Liveness:
* `minard_process_up{process}` 1 if the process published its stats within `alive_after`
  seconds (it publishes every second), else 0;
* `minard_process_stats_age_seconds{process}`;
* `minard_pull_heartbeat_age_seconds` and `minard_events_age_seconds` (from /stream's view
  of the pull workers; absent when unknown);
* `minard_program_up{program}` for each known DAQ program: 1 while its heartbeat key lives;
* `minard_redis_used_memory_bytes`, `minard_redis_maxmemory_bytes` and
  `minard_redis_memory_ratio` (used / maxmemory): Redis runs with noeviction, so a full
  Redis refuses writes; the log server's watchdog alarms at 80 %.
"""
import re

from minard.store.reads import finite_number

#: A process that has not published its stats for this long is down.
ALIVE_AFTER = 5.0
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_BAD = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(field):
    name = _BAD.sub("_", field)
    if not name or name[0].isdigit():
        name = "_" + name
    return "minard_" + name


def label_value(text):
    return str(text).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_number = finite_number


def _format(x):
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def render(process_stats, now, programs_up=None, ages=None, alive_after=ALIVE_AFTER,
           redis_memory=None):
    """The exposition text. process_stats: {process: {field: str}};
    programs_up: {program: bool}; ages: {metric suffix: seconds or None}."""
    families = {}
    up = {}
    for process in sorted(process_stats):
        fields = process_stats[process]
        for field in sorted(fields):
            x = _number(fields[field])
            if x is None:
                continue
            families.setdefault(metric_name(field), []).append((process, x))
        updated = _number(fields.get("updated"))
        up[process] = None if updated is None else max(0.0, now - updated)
    lines = []
    for name in sorted(families):
        lines.append("# TYPE %s untyped" % name)
        for process, x in families[name]:
            lines.append('%s{process="%s"} %s' % (name, label_value(process), _format(x)))
    lines.append("# HELP minard_process_up 1 if the process published its stats recently")
    lines.append("# TYPE minard_process_up gauge")
    for process, age in sorted(up.items()):
        alive = age is not None and age <= alive_after
        lines.append('minard_process_up{process="%s"} %d' % (label_value(process), alive))
    lines.append("# TYPE minard_process_stats_age_seconds gauge")
    for process, age in sorted(up.items()):
        if age is not None:
            lines.append('minard_process_stats_age_seconds{process="%s"} %s'
                         % (label_value(process), _format(round(age, 3))))
    for suffix, age in sorted((ages or {}).items()):
        name = "minard_%s_age_seconds" % suffix
        lines.append("# TYPE %s gauge" % name)
        if age is not None:
            lines.append("%s %s" % (name, _format(age)))
    if programs_up:
        lines.append("# HELP minard_program_up 1 while the DAQ program's heartbeat is fresh")
        lines.append("# TYPE minard_program_up gauge")
        for program, alive in programs_up.items():
            lines.append('minard_program_up{program="%s"} %d' % (label_value(program), alive))
    memory = redis_memory or {}
    for name, key in (("redis_used_memory_bytes", "used"), ("redis_maxmemory_bytes", "max"),
                      ("redis_memory_ratio", "ratio")):
        if memory.get(key) is not None:
            lines.append("# TYPE minard_%s gauge" % name)
            lines.append("minard_%s %s" % (name, _format(round(memory[key], 6))))
    return "\n".join(lines) + "\n"
