-- Lease up to ARGV[2] ready jobs of one queue to a worker, after promoting due delayed jobs.
-- KEYS[1] = queue base; ARGV = worker, max (<= 1000), lease_ms, promote_limit
-- A ready list element carries (or points at) what a fetch returns, so a fetch reads nothing
-- per job:
--   chunks (see compact.lua): "#C|lo|count|offset", the jobs lo..lo+count-1 of chunk C still
--     queued, whose records start at byte offset+1 of the chunk's "b" field. A fetch takes the
--     element whole, or its first jobs and leaves the rest in its place (the list is peeked with
--     LRANGE, then trimmed);
--   compact jobs written before chunks: "*ID|created|priority|max_attempts|spec"; their record
--     in the `jobs` hash stays as it is (they run while they are held, see below);
--   jobs in their own hash: "id|attempt|created|enqueued|run_at|spec"; one HSET per job.
-- An element is stale only after a cancel of a queued job, which bumps the queue's `stale`
-- counter; while it is above zero, fetches check each job's state (and count the stale
-- elements they drop).
-- (Prepended with compact.lua.)
-- Leases are per fetch batch: the batch gets a token "seq|started|worker" (seq: a per-queue
-- counter), scored by its expiry in the `leases` zset (one ZADD per batch, renewed by
-- heartbeats); the `held` hash maps each member "id|attempt" to that token: a job runs with
-- that attempt exactly while its member is there, so acks and heartbeats check leases with one
-- HMGET per call. `batch:TOKEN` lists the members for the reaper, `bcount` counts those still
-- held (see compact.lua). A chunk's jobs are leased per piece instead: one `pieces` entry and
-- one member "#C|lo" per piece, however many jobs it holds (see compact.lua).
-- Returns a flat array: started_at (= now), then the elements; a job now runs the element's
-- attempt + 1 (compact jobs: attempt 1). A chunk's jobs come as one element
-- "#C|lo|created|priority|count|mask|records": the records of the jobs taken, joined by
-- newlines; mask: '' or a byte per job taken, 'x' for one skipped (it left the chunk).
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
    - redis.call('ZCARD', base .. 'inflight')
    - tonumber(redis.call('HGET', base .. 'stats', 'crun') or '0'))
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
local ni, no, nh = 0, 1, 2 -- (lengths: counters are cheaper than #)
local crun = 0 -- chunk jobs leased
local stale = tonumber(redis.call('GET', base .. 'stale') or '0')
local dropped = 0
local prios = redis.call('ZRANGE', base .. 'prios', 0, 15)
local byte, match = string.byte, string.match
-- (`held`'s sentinel is written only with a job of its own, see above.)
local budget = max * 2 + 100
-- Stale elements are skipped; the budget bounds the elements looked at.
local sub, find = string.sub, string.find
local cq = 0
for _, p in ipairs(prios) do
  if max <= 0 or budget <= 0 then break end
  local rkey = base .. 'ready:' .. p
  local drained = false
  cq = 0
  while max > 0 and budget > 0 do
    -- Peek: a chunk element may be taken in part, and then it stays at the front.
    local want = max
    local elems = redis.call('LRANGE', rkey, 0, want - 1)
    local ne = #elems
    if ne == 0 then
      drained = true
      break
    end
    budget = budget - ne
    local used, rest = 0, nil
    for _, e in ipairs(elems) do
      if max <= 0 then break end
      used = used + 1
      local b1 = byte(e, 1)
      if b1 == 35 then -- '#': jobs lo.. of a chunk (see enqueue.lua)
        local chunk, lo, cnt, off = match(e, '^#([^|]+)|(%d+)|(%d+)|(%d+)$')
        lo, cnt, off = tonumber(lo), tonumber(cnt), tonumber(off)
        local f = chunk and redis.call('HMGET', base .. 'ck:' .. chunk, 'h', 'b', 's') or {}
        if f[1] and f[2] then
          local take = math.min(cnt, max)
          local recs = f[2]
          local stop = #recs
          if take < cnt then
            local pos = off + 1
            for _ = 1, take do pos = (find(recs, '\n', pos, true) or stop) + 1 end
            stop = pos - 2
            rest = '#' .. chunk .. '|' .. (lo + take) .. '|' .. (cnt - take) .. '|' .. (pos - 1)
            cq = cq - take
          else
            cq = cq - (cnt - 1)
          end
          -- `s`: a byte per job, 'x' once the job left the chunk (cancelled while queued).
          local mask = f[3] and sub(f[3], lo + 1, lo + take) or ''
          local got = take
          if f[3] then
            for idx = lo, lo + take - 1 do
              if byte(f[3], idx + 1) == 120 then
                dropped = dropped + 1
                got = got - 1
              end
            end
          end
          if got > 0 then
            -- One lease for the piece (see compact.lua).
            if not token then token = redis.call('INCR', base .. 'bseq') .. tpost end
            local cur = redis.call('HGET', base .. 'pieces', chunk) or ''
            redis.call('HSET', base .. 'pieces', chunk, cur .. piece_entry(lo, take, token))
            ni = ni + 1
            members[ni] = '#' .. chunk .. '|' .. lo
            crun = crun + got
          end
          if got > 0 then
            no = no + 1
            if off == 0 and take == cnt then
              out[no] = '#' .. chunk .. '|' .. lo .. '|' .. f[1] .. '|' .. mask .. '|' .. recs
            else
              out[no] = '#' .. chunk .. '|' .. lo .. '|' .. f[1] .. '|' .. mask .. '|'
                .. sub(recs, off + 1, stop)
            end
            max = max - got
          end
        else
          cq = cq - ((cnt or 1) - 1)
          dropped = dropped + 1
        end
      elseif b1 == 42 then -- '*': a compact job of the `jobs` hash (written before chunks)
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
          nh = nh + 2
          held[nh - 1] = m
          held[nh] = token
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
          nh = nh + 2
          held[nh - 1] = m
          held[nh] = token
          no = no + 1
          out[no] = e
          max = max - 1
        end
      end
    end
    if rest then
      -- The last element looked at was taken in part: its rest stays at the front.
      if used > 1 then redis.call('LTRIM', rkey, used - 1, -1) end
      redis.call('LSET', rkey, 0, rest)
    else
      redis.call('LTRIM', rkey, used, -1)
      if ne < want and used == ne then
        drained = true
      end
    end
    if drained then break end
  end
  if cq ~= 0 then redis.call('HINCRBY', base .. 'cq', p, cq) end
  if drained and redis.call('LLEN', rkey) == 0 then
    redis.call('ZREM', base .. 'prios', p)
    redis.call('HDEL', base .. 'cq', p)
  end
end
if dropped > 0 and stale > 0 then
  if redis.call('DECRBY', base .. 'stale', dropped) <= 0 then
    redis.call('DEL', base .. 'stale')
  end
end
if crun > 0 then redis.call('HINCRBY', base .. 'stats', 'crun', crun) end
if ni > 0 then
  -- One lease for the whole batch.
  if nh > 2 then
    for s = 1, nh, 1000 do
      redis.call('HSET', base .. 'held', unpack(held, s, math.min(s + 999, nh)))
    end
  end
  for s = 1, ni, 1000 do
    redis.call('RPUSH', base .. 'batch:' .. token, unpack(members, s, math.min(s + 999, ni)))
  end
  redis.call('HSET', base .. 'bcount', token, ni)
  redis.call('ZADD', base .. 'leases', sexp, token)
end
return out
