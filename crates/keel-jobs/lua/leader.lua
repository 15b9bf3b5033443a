-- Acquire or renew the master lease. The token (fencing) grows by one at every new leader.
-- KEYS = leader key, fence key (same hash tag); ARGV = node, ttl_ms
-- Returns the token while ARGV[1] leads, else 0.
local cur = redis.call('GET', KEYS[1])
if not cur then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', tonumber(ARGV[2]))
  return token
end
local sep = string.find(cur, '|', 1, true)
if sep and string.sub(cur, 1, sep - 1) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return tonumber(string.sub(cur, sep + 1))
end
return 0
