#!lua
-- One chunk of what a pull worker derived from one second of the event stream, besides
-- the trig hashes (store/analyses.py, issue 13): FEC/D and orphan counts, nhit histograms
-- per event type, run records, clock jumps and the batches' loose ends.
-- ARGV[1]: JSON {"id": flush id, "k": chunk number, "ops": [[op, ...], ...]}; every
-- argument of an op is a string. Each chunk is applied once per flush id (a retried flush
-- whose reply was lost counts nothing twice). Keys come from store/keys.py.
-- Ops:
--   incr key ttl n                     INCRBY, EXPIRE
--   hincr key ttl field n ...          HINCRBY each, EXPIRE
--   hset key ttl field value ...       HSET, EXPIRE
--   hmin key ttl field value           HSET if absent or smaller (numbers), EXPIRE
--   hmax key ttl field value           HSET if absent or larger, EXPIRE
--   setbit key ttl offset              SETBIT 1, EXPIRE
--   zaddlt key score member            ZADD LT (a new member, or a lower score)
--   zadd key score member ...          ZADD
--   zremto key score                   ZREMRANGEBYSCORE -inf score
--   lpush key keep ttl value ...       LPUSH, LTRIM to keep, EXPIRE
--   burst key ttl                      a jump: SET NX EX starts a burst (reply 2), else EXPIRE
-- Reply: 0 a repeat, 1 applied, 2 applied and a clock-jump burst started.
-- Constants from minard.constants: TTLs.
local p = cjson.decode(ARGV[1])
if p.id then
  local marker = 'minard:flush:' .. p.id .. ':x' .. p.k
  if not redis.call('SET', marker, '1', 'NX', 'EX', $mark_ttl) then
    return 0
  end
end
local reply = 1
for _, op in ipairs(p.ops) do
  local o = op[1]
  if o == 'incr' then
    redis.call('INCRBY', op[2], op[4])
    redis.call('EXPIRE', op[2], op[3])
  elseif o == 'hincr' then
    for i = 4, #op, 2 do redis.call('HINCRBY', op[2], op[i], op[i + 1]) end
    redis.call('EXPIRE', op[2], op[3])
  elseif o == 'hset' then
    for i = 4, #op, 2 do redis.call('HSET', op[2], op[i], op[i + 1]) end
    redis.call('EXPIRE', op[2], op[3])
  elseif o == 'hmin' or o == 'hmax' then
    local now = tonumber(redis.call('HGET', op[2], op[4]))
    local value = tonumber(op[5])
    if (not now) or (o == 'hmin' and value < now) or (o == 'hmax' and value > now) then
      redis.call('HSET', op[2], op[4], op[5])
    end
    redis.call('EXPIRE', op[2], op[3])
  elseif o == 'setbit' then
    redis.call('SETBIT', op[2], op[4], 1)
    redis.call('EXPIRE', op[2], op[3])
  elseif o == 'zaddlt' then
    redis.call('ZADD', op[2], 'LT', op[3], op[4])
  elseif o == 'zadd' then
    for i = 3, #op, 2 do redis.call('ZADD', op[2], op[i], op[i + 1]) end
  elseif o == 'zremto' then
    redis.call('ZREMRANGEBYSCORE', op[2], '-inf', op[3])
  elseif o == 'lpush' then
    for i = 5, #op do redis.call('LPUSH', op[2], op[i]) end
    redis.call('LTRIM', op[2], 0, tonumber(op[3]) - 1)
    redis.call('EXPIRE', op[2], op[4])
  elseif o == 'burst' then
    if redis.call('SET', op[2], '1', 'NX', 'EX', op[3]) then
      reply = 2
    else
      redis.call('EXPIRE', op[2], op[3])
    end
  else
    return redis.error_reply('unknown op ' .. tostring(o))
  end
end
return reply
