#!lua
-- Log server (store/logserver.py): raise one alarm (SPEC §4, §5.2).
-- KEYS: alarms:count[, post id]; ARGV: level, message, time, ttl, key prefix[, post id ttl].
-- id = INCR count - 1. With a post id, a repeat raises nothing and returns the id of the
-- alarm the first post raised: {id, 1 if raised now else 0}.
if KEYS[2] then
  local earlier = redis.call('GET', KEYS[2])
  if earlier then
    return {tonumber(earlier), 0}
  end
end
local id = redis.call('INCR', KEYS[1]) - 1
local alarm = cjson.encode({id=id, level=tonumber(ARGV[1]), message=ARGV[2], time=ARGV[3]})
redis.call('SET', ARGV[5] .. id, alarm, 'EX', ARGV[4])
if KEYS[2] then
  redis.call('SET', KEYS[2], id, 'EX', ARGV[6])
end
return {id, 1}
