-- Lease up to ARGV[2] ready jobs of one queue to a worker, after promoting due delayed jobs.
-- KEYS[1] = queue base; ARGV = worker, max (<= 1000), lease_ms, promote_limit
-- Returns, per job: id, spec, attempt, created_at, enqueued_at, run_at, started_at (= now).
local base = KEYS[1]
local worker, max, lease, plimit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Promote due scheduled / retrying jobs (bounded).
local due = redis.call('ZRANGEBYSCORE', base .. 'scheduled', '-inf', now, 'LIMIT', 0, plimit)
for _, id in ipairs(due) do
  redis.call('ZREM', base .. 'scheduled', id)
  local key = base .. 'job:' .. id
  local f = redis.call('HMGET', key, 'st', 'p')
  if f[1] == 'scheduled' or f[1] == 'retrying' then
    redis.call('HSET', key, 'st', 'queued', 'ea', now)
    redis.call('RPUSH', base .. 'ready:' .. f[2], id)
    redis.call('ZADD', base .. 'prios', -tonumber(f[2]), f[2])
  end
end

-- Cluster-wide concurrency limit of the queue.
local limit = tonumber(redis.call('HGET', base .. 'cfg', 'max_concurrency') or '0')
if limit > 0 then
  max = math.min(max, limit - redis.call('ZCARD', base .. 'inflight'))
end
if max <= 0 then return {} end

local out = {}
local inflight = {}
local expiry = now + lease
local prios = redis.call('ZRANGE', base .. 'prios', 0, 15)
-- Cancelled ids stay in the ready lists and are skipped here; the budget bounds the pops.
local budget = max * 2 + 100
for _, p in ipairs(prios) do
  if max <= 0 or budget <= 0 then break end
  local rkey = base .. 'ready:' .. p
  local drained = false
  while max > 0 and budget > 0 do
    local ids = redis.call('LPOP', rkey, max)
    if not ids then
      drained = true
      break
    end
    budget = budget - #ids
    local short = #ids < max
    for _, id in ipairs(ids) do
      local key = base .. 'job:' .. id
      local f = redis.call('HMGET', key, 'st', 'spec', 'att', 'ca', 'ea', 'ra')
      if f[1] == 'queued' then
        local att = tonumber(f[3]) + 1
        redis.call('HSET', key, 'st', 'running', 'att', att, 'sa', now, 'w', worker)
        inflight[#inflight + 1] = expiry
        inflight[#inflight + 1] = id
        out[#out + 1] = { id, f[2], tostring(att), f[4] or '0', f[5] or tostring(now), f[6] or tostring(now), tostring(now) }
        max = max - 1
      end
    end
    if short then
      drained = true
      break
    end
  end
  if drained and redis.call('LLEN', rkey) == 0 then
    redis.call('ZREM', base .. 'prios', p)
  end
end
if #inflight > 0 then
  redis.call('ZADD', base .. 'inflight', unpack(inflight))
end
return out
