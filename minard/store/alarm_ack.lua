#!lua
-- Main site (store/acks.py): acknowledge alarms, for every screen.
-- KEYS: acks hash (minard:alarm:acks), its version (minard:alarm:acks:version).
-- ARGV: by, time, alarm key prefix, ttl, id, id ...
-- All or nothing: if any alarms:<id> is missing, nothing is stored and
-- {0, -1, missing ids} is returned. Otherwise each id not acknowledged yet gets
-- {"by", "time"} (the first acknowledgement stays), acks of alarms that have expired are
-- dropped, the version is bumped when something changed, and {new, version, ids
-- acknowledged before} is returned.
local missing = {}
for i = 5, #ARGV do
  if redis.call('EXISTS', ARGV[3] .. ARGV[i]) == 0 then
    missing[#missing + 1] = ARGV[i]
  end
end
if #missing > 0 then
  return {0, -1, missing}
end
local record = cjson.encode({by=ARGV[1], time=ARGV[2]})
local new = 0
local already = {}
for i = 5, #ARGV do
  if redis.call('HSETNX', KEYS[1], ARGV[i], record) == 1 then
    new = new + 1
  else
    already[#already + 1] = ARGV[i]
  end
end
if new == 0 then
  return {0, tonumber(redis.call('GET', KEYS[2]) or '0'), already}
end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[3] .. field) == 0 then
    redis.call('HDEL', KEYS[1], field)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {new, redis.call('INCR', KEYS[2]), already}
