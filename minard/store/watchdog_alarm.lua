#!lua
-- Log server's watchdog (store/logserver.py): raise or clear the alarm of one watched
-- thing, once. KEYS: the alarmed hash (minard:watchdog:alarmed), alarms:count.
-- ARGV: field, 'raise' or 'clear', level, message, time, ttl, alarm key prefix.
-- 'raise' when the field is already in the hash, or 'clear' when it is not, changes
-- nothing (a restarted or second watchdog repeats nothing): {id or -1, 0}. Otherwise the
-- alarm is stored like alarm.lua does, the hash updated, and {id, 1} returned.
local up = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == 'raise' then
  if up then
    return {tonumber(up), 0}
  end
elseif not up then
  return {-1, 0}
end
local id = redis.call('INCR', KEYS[2]) - 1
local alarm = cjson.encode({id=id, level=tonumber(ARGV[3]), message=ARGV[4], time=ARGV[5]})
redis.call('SET', ARGV[7] .. id, alarm, 'EX', ARGV[6])
if ARGV[2] == 'raise' then
  redis.call('HSET', KEYS[1], ARGV[1], id)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return {id, 1}
