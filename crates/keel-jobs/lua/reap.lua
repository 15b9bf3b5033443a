-- Re-queue jobs whose lease expired (their worker is gone); past max_attempts they die.
-- Also drops dead-set entries older than the dead retention and succeeded jobs past their
-- retention. All bounded by ARGV[1] (<= 1000). (Prepended with compact.lua.)
-- Leases are per fetch batch (see fetch.lua): an expired batch's member list is popped in
-- steps of at most the remaining budget (a chunk piece costs one per job it still runs); each member still held by that batch is re-queued
-- (members acked, cancelled or handed back are no longer held and are skipped). A batch
-- whose token a heartbeat renews between two steps keeps its remaining members.
-- KEYS[1] = queue base; ARGV = limit, dead_retention_ms, recent_cap
local base = KEYS[1]
local limit, dead_retention, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0

-- The job of a lost lease: back to its ready list, or dead past its attempts.
local function lost(id, token)
  materialize(base, id, token)
  local key = base .. 'job:' .. id
  local f = redis.call('HMGET', key, 'st', 'att', 'max', 'p', 'uk', 'ca', 'ra', 'spec')
  if f[1] == 'running' and redis.call('HEXISTS', base .. 'fin', id) == 0 then
    n = n + 1
    if tonumber(f[2]) >= tonumber(f[3]) then
      redis.call('HSET', key, 'st', 'dead', 'err', 'lease expired: worker lost', 'fa', now)
      redis.call('PEXPIRE', key, dead_retention)
      redis.call('ZADD', base .. 'dead', now, id)
      redis.call('HINCRBY', base .. 'stats', 'dead', 1)
      redis.call('LPUSH', base .. 'recent', id)
      redis.call('LTRIM', base .. 'recent', 0, cap - 1)
      if f[5] and f[5] ~= '' then
        local ukey = base .. 'uniq:' .. f[5]
        if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
      end
    else
      redis.call('HSET', key, 'st', 'queued', 'err', 'lease expired: worker lost', 'ea', now)
      redis.call('LPUSH', base .. 'ready:' .. f[4],
        id .. '|' .. f[2] .. '|' .. f[6] .. '|' .. now .. '|' .. (f[7] or f[6]) .. '|' .. f[8])
      redis.call('ZADD', base .. 'prios', -tonumber(f[4]), f[4])
    end
  end
end

local budget = limit
local held = base .. 'held'
local expired = redis.call('ZRANGEBYSCORE', base .. 'leases', '-inf', now, 'LIMIT', 0, limit)
for _, token in ipairs(expired) do
  if budget <= 0 then break end
  local list = base .. 'batch:' .. token
  local members = redis.call('LPOP', list, budget) or {}
  if #members == 0 then budget = budget - 1 end
  local gone = 0
  for m, member in ipairs(members) do
    if budget <= 0 then
      -- Out of budget: the members not looked at go back (their order does not matter).
      redis.call('LPUSH', list, unpack(members, m, #members))
      break
    end
    if string.byte(member, 1) == 35 then
      -- A chunk piece "#C|lo" (see compact.lua): its jobs still running are lost, each moved
      -- out of the chunk (the last one ends the piece), within the budget: a piece cut short
      -- goes back to the front of the list, with the members after it.
      local c, lo = string.match(member, '^#([^|]+)|(%d+)$')
      lo = tonumber(lo)
      local cnt = nil
      for _, pc in ipairs(c and pieces_of(base, c) or {}) do
        if pc[1] == lo and pc[3] == token then cnt = pc[2] end
      end
      if cnt then
        local states = redis.call('HGET', base .. 'ck:' .. c, 's') or string.rep('.', lo + cnt)
        local cut = false
        for idx = lo, lo + cnt - 1 do
          if string.byte(states, idx + 1) == 46 then
            if budget <= 0 then
              cut = true
              break
            end
            budget = budget - 1
            local hi, lw = math.floor(idx / 32) + 1, idx % 32 + 1
            lost(c .. string.sub(CROCKFORD, hi, hi) .. string.sub(CROCKFORD, lw, lw), token)
          end
        end
        if cut then
          redis.call('LPUSH', list, unpack(members, m, #members))
          break
        end
      end
    else
      budget = budget - 1
    end
    if string.byte(member, 1) ~= 35 and redis.call('HGET', held, member) == token then
      redis.call('HDEL', held, member)
      gone = gone + 1
      lost(string.match(member, '^[^|]+'), token)
    end
  end
  if gone > 0 then leave_batch(base, token, gone) end
  if redis.call('EXISTS', list) == 0 then
    -- Every member seen: the batch is over.
    redis.call('HDEL', base .. 'bcount', token)
    redis.call('ZREM', base .. 'leases', token)
  end
end

-- Leases written before batch leases: one `inflight` member "id|attempt" per job.
if budget > 0 then
  local old = redis.call('ZRANGEBYSCORE', base .. 'inflight', '-inf', now, 'LIMIT', 0, budget)
  for _, member in ipairs(old) do
    redis.call('ZREM', base .. 'inflight', member)
    lost(string.match(member, '^[^|]+'))
  end
end

local old = redis.call('ZRANGEBYSCORE', base .. 'dead', '-inf', now - dead_retention, 'LIMIT', 0, limit)
if #old > 0 then redis.call('ZREM', base .. 'dead', unpack(old)) end
-- Succeeded jobs past their retention (see complete.lua).
forget_done(base, now, limit)
return n
