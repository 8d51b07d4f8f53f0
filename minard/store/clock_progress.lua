#!lua
-- Clock sweep (store/analyses.py): a pull worker's progress. KEYS[1]: writers hash;
-- ARGV: writer, progress second. Stamped with Redis's own clock (as parts_write.lua).
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. redis.call('TIME')[1])
return 1
