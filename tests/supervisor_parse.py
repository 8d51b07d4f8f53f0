"""Parse a supervisord configuration with supervisord's own code and print what it would run
as JSON. Run with the Python that runs supervisord (Debian's python3-supervisor), not the
project's virtualenv:

    /usr/bin/python3 tests/supervisor_parse.py CONF [--user NAME] [--dir PREFIX ...]

`--user` and `--dir` name facts true only on the production server (the `minard` user,
/var/log/minard): supervisord checks them while parsing, so they are taken as given here;
every other check is supervisord's own.
"""
import argparse
import json

import supervisor.datatypes as datatypes
import supervisor.options as options


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("conf")
    parser.add_argument("--user", action="append", default=[])
    parser.add_argument("--dir", action="append", default=[])
    args = parser.parse_args()
    users = set(args.user)
    dirs = tuple(d.rstrip("/") + "/" for d in args.dir)
    real_uid = options.name_to_uid
    real_dirpath = datatypes.existing_dirpath
    real_directory = options.existing_directory

    def name_to_uid(name):
        return 4242 if name in users else real_uid(name)

    def existing_dirpath(value):
        return value if dirs and value.startswith(dirs) else real_dirpath(value)

    def existing_directory(value):
        return value if dirs and (value + "/").startswith(dirs) else real_directory(value)

    options.name_to_uid = name_to_uid
    options.existing_dirpath = datatypes.existing_dirpath = existing_dirpath
    options.existing_directory = existing_directory

    server = options.ServerOptions()
    server.configfile = args.conf
    section = server.read_config(args.conf)
    out = {"warnings": server.parse_warnings, "groups": {}, "servers": []}
    for group in section.process_group_configs:
        processes = []
        for p in group.process_configs:
            processes.append({
                "name": p.name, "command": p.command, "uid": p.uid, "directory": p.directory,
                "autostart": p.autostart, "startsecs": p.startsecs,
                "startretries": p.startretries, "stopwaitsecs": p.stopwaitsecs,
                "stopsignal": int(p.stopsignal), "stopasgroup": p.stopasgroup,
                "killasgroup": p.killasgroup, "redirect_stderr": p.redirect_stderr,
                "stdout_logfile": p.stdout_logfile, "priority": p.priority,
                "environment": p.environment or {},
                "autorestart": p.autorestart is datatypes.RestartUnconditionally,
            })
        out["groups"][group.name] = {"priority": group.priority, "processes": processes}
    for config in section.server_configs:
        out["servers"].append({key: value for key, value in config.items()
                               if isinstance(value, (str, int, type(None)))})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
