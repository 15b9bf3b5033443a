-- Ack a batch of attempts. An ack whose attempt no longer holds the lease is ignored.
-- KEYS[1] = queue base
-- ARGV = retention_ms, dead_retention_ms, recent_cap, then 4 fields per job (at most 1000 jobs):
--   id, attempt, outcome ('ok' | 'fail' | 'fatal'), result-or-error;
--   a 'fail' is followed by a 5th field, backoff_ms.
-- Succeeded jobs are not given a TTL one by one: each batch appends "expiry(13 digits)..id" to
-- the queue's `done` list (time ordered), and expired entries are deleted here and by reap in
-- bounded steps.
-- Returns the number of acks applied.
local base = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local retention, dead_retention, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local jobp = base .. 'job:'
local done = {}
local recent = {}
local kept = {}
local ok, failed, dead = 0, 0, 0
local nd, nr = 0, 0 -- (lengths of done and recent; ok is the length of kept)
local stamp = string.format('%013d', now + retention)
local function release_unique(uk, id)
  if uk and uk ~= '' then
    local ukey = base .. 'uniq:' .. uk
    if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
  end
end
-- Parse the acks, then check every lease with one ZMSCORE: the member "id|attempt" is in the
-- in-flight set exactly while that attempt holds the job (see fetch.lua).
local ids, atts, outs, texts, backoffs, members = {}, {}, {}, {}, {}, {}
local i, n, k = 4, #ARGV, 0
while i <= n do
  k = k + 1
  ids[k], atts[k], outs[k], texts[k] = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if outs[k] == 'fail' then
    backoffs[k] = tonumber(ARGV[i + 4]) or 0
    i = i + 5
  else
    i = i + 4
  end
  members[k] = ids[k] .. '|' .. atts[k]
end
if k == 0 then return 0 end
if k > 1000 then return redis.error_reply('at most 1000 acks per call') end
local held = redis.call('ZMSCORE', base .. 'inflight', unpack(members))
-- Unique keys are looked up only in queues that ever used one.
local uniq = redis.call('EXISTS', base .. 'uniqused') == 1
for j = 1, k do
  if held[j] then
    local id = ids[j]
    local key = jobp .. id
    nd = nd + 1
    done[nd] = members[j]
    if outs[j] == 'ok' then
      if texts[j] == '' then
        redis.call('HSET', key, 'st', 'succeeded', 'fa', now)
      else
        redis.call('HSET', key, 'st', 'succeeded', 'fa', now, 'res', texts[j])
      end
      nr = nr + 1
      recent[nr] = id
      ok = ok + 1
      kept[ok] = stamp .. id
      if uniq then release_unique(redis.call('HGET', key, 'uk'), id) end
    else
      failed = failed + 1
      local f = redis.call('HMGET', key, 'att', 'max', 'uk')
      if outs[j] == 'fail' and tonumber(f[1]) < tonumber(f[2]) then
        local at = now + backoffs[j]
        redis.call('HSET', key, 'st', 'retrying', 'err', texts[j], 'ra', at)
        redis.call('ZADD', base .. 'scheduled', at, id)
      else
        redis.call('HSET', key, 'st', 'dead', 'err', texts[j], 'fa', now)
        redis.call('PEXPIRE', key, dead_retention)
        redis.call('ZADD', base .. 'dead', now, id)
        dead = dead + 1
        nr = nr + 1
        recent[nr] = id
        release_unique(f[3], id)
      end
    end
  end
end
if #done > 0 then
  redis.call('ZREM', base .. 'inflight', unpack(done))
end
if #recent > 0 then
  redis.call('LPUSH', base .. 'recent', unpack(recent))
  redis.call('LTRIM', base .. 'recent', 0, cap - 1)
end
if #kept > 0 then
  redis.call('RPUSH', base .. 'done', unpack(kept))
end
if ok > 0 then redis.call('HINCRBY', base .. 'stats', 'succeeded', ok) end
if failed > 0 then redis.call('HINCRBY', base .. 'stats', 'failed', failed) end
if dead > 0 then redis.call('HINCRBY', base .. 'stats', 'dead', dead) end

-- Forget succeeded jobs past their retention: a bounded step, a little more than was added.
-- The list is time ordered: look at its head first, and read more only when that is due.
local nowstamp = string.format('%013d', now)
local first = redis.call('LINDEX', base .. 'done', 0)
if first and string.sub(first, 1, 13) <= nowstamp then
  local head = redis.call('LRANGE', base .. 'done', 0, math.min(#kept + 16, 1000) - 1)
  local gone = {}
  for _, e in ipairs(head) do
    if string.sub(e, 1, 13) > nowstamp then break end
    gone[#gone + 1] = jobp .. string.sub(e, 14)
  end
  redis.call('UNLINK', unpack(gone))
  redis.call('LTRIM', base .. 'done', #gone, -1)
end
return #done
