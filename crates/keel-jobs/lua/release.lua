-- Hand leased jobs back (graceful shutdown): to the front of their ready list, attempt not counted.
-- (Prepended with compact.lua.)
-- KEYS[1] = queue base; ARGV = id, attempt pairs (at most 1000 pairs)
local base = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 1, #ARGV, 2 do
  local id, att = ARGV[i], ARGV[i + 1]
  -- The attempt holds the job exactly while its member is held (see fetch.lua).
  local token = drop_lease(base, id .. '|' .. att)
  -- A chunk job's lease is its piece's (see compact.lua): materialize ends it.
  if not token and att == '1' then token = chunk_lease(base, id) end
  if token then
    materialize(base, id, token ~= '' and token or nil)
    local key = base .. 'job:' .. id
    local f = redis.call('HMGET', key, 'st', 'att', 'p', 'ca', 'ra', 'spec')
    if f[1] == 'running' and f[2] == att then
      local back = tonumber(att) - 1
      redis.call('HSET', key, 'st', 'queued', 'att', back, 'ea', now)
      redis.call('LPUSH', base .. 'ready:' .. f[3],
        id .. '|' .. back .. '|' .. f[4] .. '|' .. now .. '|' .. (f[5] or f[4]) .. '|' .. f[6])
      redis.call('ZADD', base .. 'prios', -tonumber(f[3]), f[3])
      n = n + 1
    end
  end
end
return n
