#!lua flags=no-writes
-- Read-only. ARGV[1]: JSON list of groups [op, nkeys, [args]]; KEYS: every group's keys
-- in order. Reply: one JSON string, a list (per group) of lists (per key) of replies.
local spec = cjson.decode(ARGV[1])
local out = {}
local k = 0
for g = 1, #spec do
  local op, n, args = spec[g][1], spec[g][2], spec[g][3]
  local res = {}
  for i = 1, n do
    k = k + 1
    local key = KEYS[k]
    if op == 'GET' then res[i] = redis.call('GET', key)
    elseif op == 'HMGET' then res[i] = redis.call('HMGET', key, unpack(args))
    elseif op == 'HGETALL' then res[i] = redis.call('HGETALL', key)
    elseif op == 'LRANGE' then res[i] = redis.call('LRANGE', key, 0, -1)
    elseif op == 'EXISTS' then res[i] = redis.call('EXISTS', key)
    else return redis.error_reply('unknown read ' .. tostring(op)) end
  end
  out[g] = res
end
return cjson.encode(out)
