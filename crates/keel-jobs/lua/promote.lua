-- Move due delayed and retrying jobs to their ready lists.
-- KEYS[1] = queue base; ARGV[1] = limit (bounded by the caller)
local base = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', base .. 'scheduled', '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local n = 0
for _, id in ipairs(due) do
  redis.call('ZREM', base .. 'scheduled', id)
  local key = base .. 'job:' .. id
  local f = redis.call('HMGET', key, 'st', 'p', 'att', 'ca', 'ra', 'spec')
  if f[1] == 'scheduled' or f[1] == 'retrying' then
    redis.call('HSET', key, 'st', 'queued', 'ea', now)
    redis.call('RPUSH', base .. 'ready:' .. f[2],
      id .. '|' .. f[3] .. '|' .. f[4] .. '|' .. now .. '|' .. (f[5] or f[4]) .. '|' .. f[6])
    redis.call('ZADD', base .. 'prios', -tonumber(f[2]), f[2])
    n = n + 1
  end
end
return n
