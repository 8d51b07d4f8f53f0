"""Channel health: dead, hot and noisy channels found automatically (issue 15).

`model` judges finalised per-channel buckets against rolling baselines (pure numpy);
`config` parses the `[health]` INI section; `service` runs it in the log-server process,
one bucket at a time, stored atomically by minard/store/health.py.
"""
