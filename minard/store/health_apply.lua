#!lua
-- Channel health (store/health.py): apply one judged bucket, atomically and once.
-- KEYS: state hash, closed list, alarms:count, then pairs (staged key, its place): the
--   baselines that changed and the open findings, SET by the caller just before.
-- ARGV: 1 expected position ('' = none stored), 2 new position, 3 interval, 4 updated,
--   5 applied, 6 next finding id, 7 config (JSON), then: number of closed findings k, k
--   JSONs, closed kept; number of alarms m, m × (level, message), alarm time, alarm ttl,
--   alarm key prefix.
-- The position is compared first: a bucket applied by someone else (or twice) changes
-- nothing and answers 0; a staged value that is gone (expired) answers -1, nothing done.
-- The staged values are renamed into place (O(1), however big); alarms are written as
-- the log server's alarm.lua writes them.
local position = redis.call('HGET', KEYS[1], 'position') or ''
if position ~= ARGV[1] then
  return 0
end
for k = 4, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[k]) == 0 then
    return -1
  end
end
for k = 4, #KEYS, 2 do
  redis.call('RENAME', KEYS[k], KEYS[k + 1])
  redis.call('PERSIST', KEYS[k + 1])
end
redis.call('HSET', KEYS[1], 'position', ARGV[2], 'interval', ARGV[3], 'updated', ARGV[4],
           'applied', ARGV[5], 'next_id', ARGV[6], 'config', ARGV[7])
local a = 8
local closed = tonumber(ARGV[a])
a = a + 1
for i = 1, closed do
  redis.call('LPUSH', KEYS[2], ARGV[a])
  a = a + 1
end
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[a]) - 1)
a = a + 1
local alarms = tonumber(ARGV[a])
a = a + 1
local first = a + 2 * alarms
local time, ttl, prefix = ARGV[first], ARGV[first + 1], ARGV[first + 2]
for i = 1, alarms do
  local id = redis.call('INCR', KEYS[3]) - 1
  local alarm = cjson.encode({id=id, level=tonumber(ARGV[a]), message=ARGV[a + 1], time=time})
  redis.call('SET', prefix .. id, alarm, 'EX', ttl)
  a = a + 2
end
return 1
