#!lua flags=no-writes
-- Read-only. KEYS[1]: alarms:count. ARGV: prefix of alarms:<id>, start ('' = the last
-- ARGV[3]), how many back by default, at most this many.
-- Reply: JSON [count, last id covered, [alarm JSON strings that still exist]].
local count = tonumber(redis.call('GET', KEYS[1]))
if not count then return cjson.encode({-1, -1, {}}) end
local start = tonumber(ARGV[2])
if not start then
  start = math.max(count - tonumber(ARGV[3]), 0)
elseif start < 0 then
  start = math.max(count + start, 0)
end
local stop = math.min(count, start + tonumber(ARGV[4]))
local found = {}
for id = start, stop - 1 do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then found[#found + 1] = v end
end
return cjson.encode({count, math.max(stop, math.min(start, count)) - 1, found})
