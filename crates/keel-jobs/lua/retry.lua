-- Replay a dead or cancelled job: fresh attempts, back in its ready list, no expiry.
-- (Prepended with compact.lua.)
-- KEYS[1] = queue base; ARGV = id
-- Returns 'ok', 'missing', or the job's state (a conflict).
local base = KEYS[1]
local id = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- A success is recorded in `fin`; a compact job (see compact.lua) is queued or running (held).
if redis.call('HEXISTS', base .. 'fin', id) == 1 or chunk_succeeded(base, id) then
  return 'succeeded'
end
local rec = redis.call('HGET', base .. 'jobs', id) or chunk_record(base, id)
if rec then
  if string.byte(rec, 1) == 42 and redis.call('HEXISTS', base .. 'held', id .. '|1') == 0
      and not chunk_lease(base, id) then
    return 'queued'
  end
  return 'running'
end
local key = base .. 'job:' .. id
local f = redis.call('HMGET', key, 'st', 'p', 'uk', 'ca', 'ra', 'spec')
if not f[1] then return 'missing' end
if f[1] ~= 'dead' and f[1] ~= 'cancelled' then return f[1] end
redis.call('ZREM', base .. 'dead', id)
redis.call('PERSIST', key)
redis.call('HSET', key, 'st', 'queued', 'att', 0, 'ea', now)
redis.call('HDEL', key, 'fa')
redis.call('RPUSH', base .. 'ready:' .. f[2],
  id .. '|0|' .. f[4] .. '|' .. now .. '|' .. (f[5] or f[4]) .. '|' .. f[6])
redis.call('ZADD', base .. 'prios', -tonumber(f[2]), f[2])
if f[3] and f[3] ~= '' then
  redis.call('SET', base .. 'uniq:' .. f[3], id, 'NX')
  redis.call('SET', base .. 'uniqused', 1)
end
return 'ok'
