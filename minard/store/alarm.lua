-- Log server (store/logserver.py): raise one alarm (SPEC §4, §5.2).
-- KEYS: alarms:count; ARGV: level, message, time, ttl, key prefix. id = INCR count - 1.
local id = redis.call('INCR', KEYS[1]) - 1
local alarm = cjson.encode({id=id, level=tonumber(ARGV[1]), message=ARGV[2], time=ARGV[3]})
redis.call('SET', ARGV[5] .. id, alarm, 'EX', ARGV[4])
return id
