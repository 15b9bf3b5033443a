-- Lease up to ARGV[2] ready jobs of one queue to a worker, after promoting due delayed jobs.
-- KEYS[1] = queue base; ARGV = worker, max (<= 1000), lease_ms, promote_limit
-- A ready list element carries what a fetch returns, so a fetch reads nothing per job:
--   compact jobs (see compact.lua): "*ID|created|priority|max_attempts|spec"; their record in
--     the `jobs` hash stays as it is (they run while they are held, see below);
--   jobs in their own hash: "id|attempt|created|enqueued|run_at|spec"; one HSET per job.
-- An element is stale only after a cancel of a queued job, which bumps the queue's `stale`
-- counter; while it is above zero, fetches check each job's state (and count the stale
-- elements they drop).
-- Leases are per fetch batch: the batch gets a token "seq|started|worker" (seq: a per-queue
-- counter), scored by its expiry in the `leases` zset (one ZADD per batch, renewed by
-- heartbeats); the `held` hash maps each member "id|attempt" to that token: a job runs with
-- that attempt exactly while its member is there, so acks and heartbeats check leases with one
-- HMGET per call. `batch:TOKEN` lists the members for the reaper, `bcount` counts those still
-- held (see compact.lua).
-- Returns a flat array: started_at (= now), then the elements; a job now runs the element's
-- attempt + 1 (compact jobs: attempt 1).
local base = KEYS[1]
local worker, max, lease, plimit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local jobp = base .. 'job:'
local jobs = base .. 'jobs'

-- Promote due scheduled / retrying jobs (bounded).
local due = redis.call('ZRANGEBYSCORE', base .. 'scheduled', '-inf', now, 'LIMIT', 0, plimit)
for _, id in ipairs(due) do
  redis.call('ZREM', base .. 'scheduled', id)
  local key = jobp .. id
  local f = redis.call('HMGET', key, 'st', 'p', 'att', 'ca', 'ra', 'spec')
  if f[1] == 'scheduled' or f[1] == 'retrying' then
    redis.call('HSET', key, 'st', 'queued', 'ea', now)
    redis.call('RPUSH', base .. 'ready:' .. f[2],
      id .. '|' .. f[3] .. '|' .. f[4] .. '|' .. now .. '|' .. (f[5] or f[4]) .. '|' .. f[6])
    redis.call('ZADD', base .. 'prios', -tonumber(f[2]), f[2])
  end
end

-- Cluster-wide concurrency limit of the queue.
local limit = tonumber(redis.call('HGET', base .. 'cfg', 'max_concurrency') or '0')
if limit > 0 then
  -- (`held` also holds its sentinel, see below; `inflight`: leases written before batch leases.)
  max = math.min(max, limit - math.max(redis.call('HLEN', base .. 'held') - 1, 0)
    - redis.call('ZCARD', base .. 'inflight'))
end
if max <= 0 then return {} end

local snow = string.format('%d', now)
local sexp = string.format('%d', now + lease)
-- The batch's token: "seq|started|worker" (a compact job's running state, see compact.lua).
local tpost = '|' .. snow .. '|' .. worker
local out = { snow }
-- The batch's token is taken at its first job (an empty fetch writes nothing).
-- `held` starts with a sentinel field '' whose value is longer than hash-max-listpack-value:
-- the hash is then a real hash table from its first fetch on (a listpack below 512 fields
-- would make every lookup and delete a linear scan), and it is never emptied.
local members, held, token = {}, { '', string.rep('-', 80) }, nil
local ni, no = 0, 1 -- (lengths: counters are cheaper than #)
local stale = tonumber(redis.call('GET', base .. 'stale') or '0')
local dropped = 0
local prios = redis.call('ZRANGE', base .. 'prios', 0, 15)
local byte, match = string.byte, string.match
-- Stale elements are skipped; the budget bounds the pops.
local budget = max * 2 + 100
for _, p in ipairs(prios) do
  if max <= 0 or budget <= 0 then break end
  local rkey = base .. 'ready:' .. p
  local drained = false
  while max > 0 and budget > 0 do
    local elems = redis.call('LPOP', rkey, max)
    if not elems then
      drained = true
      break
    end
    budget = budget - #elems
    local short = #elems < max
    for _, e in ipairs(elems) do
      if byte(e, 1) == 42 then -- '*': a compact job
        local id = match(e, '^%*([^|]+)')
        if id and stale > 0 then
          local cur = redis.call('HGET', jobs, id)
          if not cur or byte(cur, 1) ~= 42 then id = nil end
        end
        if id then
          if not token then token = redis.call('INCR', base .. 'bseq') .. tpost end
          local m = id .. '|1'
          ni = ni + 1
          members[ni] = m
          held[ni * 2 + 1] = m
          held[ni * 2 + 2] = token
          no = no + 1
          out[no] = e
          max = max - 1
        else
          dropped = dropped + 1
        end
      else
        local id, att = match(e, '^([^|]+)|(%d+)|')
        if stale > 0 or not id then
          -- Checked path: trust only the job's hash (also reads elements that are bare ids).
          id = id or e
          local f = redis.call('HMGET', jobp .. id, 'st', 'att', 'ca', 'ea', 'ra', 'spec')
          if f[1] == 'queued' then
            att = f[2] or '0'
            local ca = f[3] or '0'
            e = id .. '|' .. att .. '|' .. ca .. '|' .. (f[4] or ca) .. '|' .. (f[5] or ca) .. '|'
              .. (f[6] or '')
          else
            id = nil
            dropped = dropped + 1
          end
        end
        if id then
          local run = tonumber(att) + 1
          redis.call('HSET', jobp .. id, 'st', 'running', 'att', run, 'sa', snow, 'w', worker)
          if not token then token = redis.call('INCR', base .. 'bseq') .. tpost end
          local m = id .. '|' .. run
          ni = ni + 1
          members[ni] = m
          held[ni * 2 + 1] = m
          held[ni * 2 + 2] = token
          no = no + 1
          out[no] = e
          max = max - 1
        end
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
if dropped > 0 and stale > 0 then
  if redis.call('DECRBY', base .. 'stale', dropped) <= 0 then
    redis.call('DEL', base .. 'stale')
  end
end
if ni > 0 then
  -- One lease for the whole batch.
  local nh = ni * 2 + 2
  for s = 1, nh, 1000 do
    redis.call('HSET', base .. 'held', unpack(held, s, math.min(s + 999, nh)))
  end
  for s = 1, ni, 1000 do
    redis.call('RPUSH', base .. 'batch:' .. token, unpack(members, s, math.min(s + 999, ni)))
  end
  redis.call('HSET', base .. 'bcount', token, ni)
  redis.call('ZADD', base .. 'leases', sexp, token)
end
return out
