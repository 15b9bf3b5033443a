-- Records the time of the latest direct message between two folded nicks, for CHATHISTORY
-- TARGETS: each nick's set keeps its most recent ARGV[4] conversations and expires when idle.
-- ARGV: nick a, nick b, time ms, keep, ttl ms
local function touch(me, other)
  local k = B .. 'dm:' .. me
  redis.call('ZADD', k, ARGV[3], other)
  redis.call('ZREMRANGEBYRANK', k, 0, -(tonumber(ARGV[4]) + 1))
  redis.call('PEXPIRE', k, ARGV[5])
end
touch(ARGV[1], ARGV[2])
if ARGV[1] ~= ARGV[2] then touch(ARGV[2], ARGV[1]) end
return 1
