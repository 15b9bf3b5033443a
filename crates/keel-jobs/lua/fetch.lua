-- Lease up to ARGV[2] ready jobs of one queue to a worker, after promoting due delayed jobs.
-- KEYS[1] = queue base; ARGV = worker, max (<= 1000), lease_ms, promote_limit
-- Returns, per job: id, spec, attempt, created_at, enqueued_at, run_at, started_at (= now).
local base = KEYS[1]
local worker, max, lease, plimit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
promote_due(base, now, plimit)

-- Cluster-wide concurrency limit of the queue.
local limit = tonumber(redis.call('HGET', base .. 'cfg', 'max_concurrency') or '0')
if limit > 0 then
  max = math.min(max, limit - redis.call('ZCARD', base .. 'inflight'))
end
if max <= 0 then return {} end

local chosen, new_st, inflight = {}, {}, {}
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
    local sts = hmget(base .. 'st', ids)
    for k, id in ipairs(ids) do
      local s = parse_st(sts[k])
      if s and s.st == 'queued' then
        s.st = 'running'
        s.att = s.att + 1
        new_st[#new_st + 1] = id
        new_st[#new_st + 1] = pack_st(s)
        inflight[#inflight + 1] = expiry
        inflight[#inflight + 1] = id
        chosen[#chosen + 1] = id
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
if #chosen == 0 then return {} end
hset(base .. 'st', new_st)
redis.call('ZADD', base .. 'inflight', unpack(inflight))
local specs = hmget(base .. 'spec', chosen)
local ts = hmget(base .. 't', chosen)
local new_t, workers, out = {}, {}, {}
for k, id in ipairs(chosen) do
  local x = parse_t(ts[k])
  x.sa = now
  new_t[#new_t + 1] = id
  new_t[#new_t + 1] = pack_t(x)
  workers[#workers + 1] = id
  workers[#workers + 1] = worker
  local att = string.match(new_st[2 * k], '^[^|]*|([^|]*)|')
  out[#out + 1] = { id, specs[k] or '{}', att, x.ca, x.ea ~= '' and x.ea or x.ca,
    x.ra ~= '' and x.ra or x.ca, tostring(now) }
end
hset(base .. 't', new_t)
hset(base .. 'w', workers)
return out
