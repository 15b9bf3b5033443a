-- Claim one fire time of a schedule, only for the current leader holding its fencing token.
-- KEYS = leader key, last-fire hash, fired key (all tagged {cron}); ARGV = node|token, schedule, tick_ms, mode ('fire' | 'skip')
-- Returns 1 when this call claimed the tick, else 0.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local tick = tonumber(ARGV[3])
local function advance()
  local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
  if tick > last then redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) end
end
if ARGV[4] == 'skip' then
  advance()
  return 0
end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', 86400000) then
  advance()
  return 1
end
return 0
