-- Lease up to ARGV[2] ready jobs of one queue to a worker, after promoting due delayed jobs.
-- KEYS[1] = queue base; ARGV = worker, max (<= 1000), lease_ms, promote_limit
-- A ready list element carries what a fetch returns, so a fetch reads nothing per job:
--   compact jobs (see compact.lua): "*ID|created|priority|max_attempts|spec"; their running
--     record is written into the `jobs` hash with one variadic HSET per batch;
--   jobs in their own hash: "id|attempt|created|enqueued|run_at|spec"; one HSET per job.
-- An element is stale only after a cancel of a queued job, which bumps the queue's `stale`
-- counter; while it is above zero, fetches check each job's state (and count the stale
-- elements they drop).
-- In-flight members are "id|attempt": a job is running with that attempt exactly while its
-- member is there, so acks and heartbeats check leases with one ZMSCORE per batch.
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
  max = math.min(max, limit - redis.call('ZCARD', base .. 'inflight'))
end
if max <= 0 then return {} end

local snow = string.format('%d', now)
local sexp = string.format('%d', now + lease)
-- A compact job's running record is this prefix followed by its element.
local rpre = 'r' .. snow .. '|' .. #worker .. '|' .. worker
local out = { snow }
local inflight, recs = {}, {}
local ni, no, nrec = 0, 1, 0 -- (lengths: counters are cheaper than #)
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
          nrec = nrec + 2
          recs[nrec - 1] = id
          recs[nrec] = rpre .. e
          ni = ni + 2
          inflight[ni - 1] = sexp
          inflight[ni] = id .. '|1'
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
          ni = ni + 2
          inflight[ni - 1] = sexp
          inflight[ni] = id .. '|' .. run
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
-- (field, value) and (score, member) pairs, unpacked at most 1000 values at a time.
for s = 1, nrec, 1000 do
  redis.call('HSET', jobs, unpack(recs, s, math.min(s + 999, nrec)))
end
for s = 1, ni, 1000 do
  redis.call('ZADD', base .. 'inflight', unpack(inflight, s, math.min(s + 999, ni)))
end
return out
