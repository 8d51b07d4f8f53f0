#!lua flags=no-writes
-- Run records (store/runs.py). KEYS: minard:run:<run> of each run; ARGV[1]: hours of a
-- run whose seconds are counted at most; ARGV[1 + i]: the prefix of run i's seconds
-- bitmaps (minard:run:<run>:s:). Reply: JSON [[record as a flat list, seconds with events]]
-- (the seconds: BITCOUNT of the bitmaps of the hours from start to stop).
local out = {}
local most = tonumber(ARGV[1])
for i = 1, #KEYS do
  local record = redis.call('HGETALL', KEYS[i])
  local seconds = 0
  local start, stop = nil, nil
  for j = 1, #record, 2 do
    if record[j] == 'start' then start = tonumber(record[j + 1]) end
    if record[j] == 'stop' then stop = tonumber(record[j + 1]) end
  end
  if start and stop and stop >= start then
    local first = math.floor(start / 3600000000)
    local last = math.min(math.floor(stop / 3600000000), first + most - 1)
    for hour = first, last do
      seconds = seconds + redis.call('BITCOUNT', ARGV[1 + i] .. hour)
    end
  end
  out[i] = {record, seconds}
end
return cjson.encode(out)
