#!lua
-- Per-run occupancy by event type (store/runs.py): overwrite a pull worker's partials.
-- KEYS: one hash minard:runocc:<run>:<field> per partial; ARGV: ttl, then per partial
-- field (the worker's), blob. The worker's cumulative partial replaces its earlier one:
-- a retried write is harmless.
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[2 * i], ARGV[2 * i + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return 1
