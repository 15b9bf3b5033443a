-- Ack a batch of attempts. An ack whose attempt no longer holds the lease is ignored.
-- (Prepended with compact.lua.)
-- KEYS[1] = queue base
-- ARGV = retention_ms, dead_retention_ms, recent_cap, then runs of acks (at most 1000 acks in
-- all), each a count c then its acks, whose member "id|attempt" names the attempt:
--   c > 0: c plain successes (no result): c members;
--   c < 0: -c acks of any outcome, 2 fields each: member, outcome: "o" (succeeded) or
--     "o" .. result (JSON), "f" .. backoff_ms .. "|" .. error (failed, retried while attempts
--     remain), "x" .. error (failed, no retry).
--   "#" .. C .. indexes: plain successes of attempt 1 of the jobs C .. index (C: 24
--     characters, each index 2 Crockford characters): one argument for many acks, and no
--     string per job unless it is not in a live piece of chunk C.
-- A success writes "finished[|@started|#worker|worker][|result]" into the `fin` hash (whether the job is compact or has
-- its own hash; `fin` wins over any recorded state), or, for a plain success of a job still in
-- its chunk, into the chunk (see below); each call appends one entry (two when it recorded
-- successes in chunks: after a '#', per chunk its id and its jobs' indexes, joined by ',')
-- "expiry(13 digits)" .. "id,id,..." of its successes to the queue's time-ordered `done` list;
-- expired ids are forgotten here and by reap in bounded steps. A failure first moves a compact job into its own hash.
-- Returns the number of acks applied.
local base = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local snow = string.format('%d', now)
local retention, dead_retention, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local jobp = base .. 'job:'
local stamp = string.format('%013d', now + retention)
local function release_unique(uk, id)
  if uk and uk ~= '' then
    local ukey = base .. 'uniq:' .. uk
    if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
  end
end
-- Parse the acks, then check every lease with one HMGET: the member "id|attempt" is in the
-- `held` hash, mapped to its fetch batch's token, exactly while that attempt holds the job
-- (see fetch.lua).
local n = #ARGV
local byte, sub = string.byte, string.sub
-- A Crockford digit's value by its byte.
local digit = {}
for d = 1, 32 do digit[byte(CROCKFORD, d)] = d - 1 end
-- Per ack j: `codes[j]`, and either its member "id|attempt" (`members[j]`, `ids[j]`) or, for
-- a plain success of attempt 1 of a 26-character id, its chunk id and index (`cids[j]`,
-- `idxs[j]`; `grouped[j]`: its member and id are only built if needed, see member_of).
local ids, codes, members = {}, {}, {}
local cids, idxs, grouped = {}, {}, {}
local k = 0
local i = 4
while i <= n do
  local g = ARGV[i]
  if byte(g, 1) == 35 then
    -- '#': "#" .. C (24 characters) .. the indexes (2 Crockford characters each) of plain
    -- successes of attempt 1 of the jobs C .. index.
    local m = (#g - 25) / 2
    if m < 1 or m ~= math.floor(m) or k + m > 1000 then
      return redis.error_reply('bad ack arguments (at most 1000 acks per call)')
    end
    local c = sub(g, 2, 25)
    for p = 26, #g - 1, 2 do
      local hi, lo = digit[byte(g, p)], digit[byte(g, p + 1)]
      if not hi or not lo then return redis.error_reply('bad ack arguments') end
      k = k + 1
      cids[k], idxs[k], grouped[k], codes[k] = c, hi * 32 + lo, true, 'o'
    end
    i = i + 1
  else
    local c = tonumber(g)
    if not c or c == 0 or c ~= math.floor(c) or k + math.abs(c) > 1000 then
      return redis.error_reply('bad ack arguments (at most 1000 acks per call)')
    end
    if c > 0 then
      if i + c > n then return redis.error_reply('bad ack arguments') end
      for a = i + 1, i + c do
        k = k + 1
        members[k] = ARGV[a]
        codes[k] = 'o'
      end
      i = i + c + 1
    else
      c = -c
      if i + c * 2 > n then return redis.error_reply('bad ack arguments') end
      for a = i + 1, i + c * 2, 2 do
        k = k + 1
        members[k] = ARGV[a]
        codes[k] = ARGV[a + 1]
      end
      i = i + c * 2 + 1
    end
  end
end
if k == 0 then return 0 end
-- A member that names no attempt is never held: it is ignored, as a stale ack is.
for j = 1, k do
  if not grouped[j] then
    local m = members[j]
    local id = string.match(m, '^([^|]+)|%d+$')
    if id then
      ids[j] = id
      if #id == 26 then
        local hi, lo = digit[byte(id, 25)], digit[byte(id, 26)]
        if hi and lo then
          cids[j] = sub(id, 1, 24)
          idxs[j] = hi * 32 + lo
        end
      end
    else
      members[j], ids[j] = '|', ''
    end
  end
end
-- The id and member of ack j (built on demand for grouped acks).
local function member_of(j)
  if not members[j] then
    local x = idxs[j]
    local hi, lo = math.floor(x / 32) + 1, x % 32 + 1
    ids[j] = cids[j] .. sub(CROCKFORD, hi, hi) .. sub(CROCKFORD, lo, lo)
    members[j] = ids[j] .. '|1'
  end
  return members[j]
end
local function id_of(j)
  member_of(j)
  return ids[j]
end
-- Jobs of chunk pieces (see compact.lua) hold the lease of their piece: checked per chunk, with
-- one read of its pieces and state bytes (`inpiece[j]`). The others: one HMGET of `held`.
local held, inpiece = {}, {}
local pcache = {}
local claimed = {} -- per chunk id, the indexes already acked in this call
local rest, restj, nrest = {}, {}, 0
for j = 1, k do
  local token = nil
  local c = cids[j]
  if c and (grouped[j] or (#members[j] == 28 and byte(members[j], 28) == 49)) then -- attempt 1
    local pc = pcache[c]
    if pc == nil then
      local pieces = pieces_of(base, c)
      pc = false
      if #pieces > 0 then pc = { pieces, redis.call('HGET', base .. 'ck:' .. c, 's') } end
      pcache[c] = pc
      claimed[c] = {}
    end
    if pc then
      local idx = idxs[j]
      token = piece_token(pc[1], idx)
      if token and pc[2] and byte(pc[2], idx + 1) ~= 46 then token = nil end
      -- (An attempt acked twice in one call: only its first ack counts.)
      if token then
        if claimed[c][idx] then
          token = nil
        else
          claimed[c][idx] = true
        end
      end
    end
  end
  if token then
    held[j], inpiece[j] = token, true
  else
    nrest = nrest + 1
    rest[nrest], restj[nrest] = member_of(j), j
    held[j] = false
  end
end
if nrest > 0 then
  local h = redis.call('HMGET', base .. 'held', unpack(rest, 1, nrest))
  for q = 1, nrest do held[restj[q]] = h[q] end
end
-- The members held, and their batches as runs of (token, count) (an ack batch holds the jobs
-- of few fetch batches, mostly in order). Leases written before batch leases live in the
-- `inflight` zset (looked at only when a member is not held and that zset exists): '' marks them.
local done, runs = {}, {}
local nd, nruns, last, cnt = 0, 0, nil, 0
local legacy = nil
for j = 1, k do
  local token = held[j]
  if inpiece[j] then
    -- (Its piece leaves its batch once none of its jobs runs, below.)
  elseif token then
    nd = nd + 1
    done[nd] = members[j]
    if token == last then
      cnt = cnt + 1
    else
      if last then
        runs[nruns + 1] = last
        runs[nruns + 2] = cnt
        nruns = nruns + 2
      end
      last, cnt = token, 1
    end
  else
    if legacy == nil then legacy = redis.call('EXISTS', base .. 'inflight') == 1 end
    if legacy and redis.call('ZREM', base .. 'inflight', members[j]) == 1 then held[j] = '' end
  end
end
if last then
  runs[nruns + 1] = last
  runs[nruns + 2] = cnt
  nruns = nruns + 2
end
if nd > 0 and redis.call('HDEL', base .. 'held', unpack(done)) ~= nd then
  -- An attempt acked twice in one call: only its first ack counts.
  local seen, byb = {}, {}
  runs, nruns = {}, 0
  for j = 1, k do
    local token = held[j]
    if token and token ~= '' and not inpiece[j] then
      if seen[members[j]] then
        held[j] = false
      else
        seen[members[j]] = true
        byb[token] = (byb[token] or 0) + 1
      end
    end
  end
  for token, c in pairs(byb) do
    runs[nruns + 1] = token
    runs[nruns + 2] = c
    nruns = nruns + 2
  end
end
for r = 1, nruns, 2 do leave_batch(base, runs[r], runs[r + 1]) end
-- Unique keys are looked up only in queues that ever used one.
local uniq = redis.call('EXISTS', base .. 'uniqused') == 1
local fin, kept, recent, heads = {}, {}, {}, {}
local nkf = 0
local nf, ok, nr = 0, 0, 0
local failed, dead, applied = 0, 0, 0
-- Successes of jobs still in their chunk are recorded in the chunk (see compact.lua): a state
-- byte per job, 128 + k for a plain success told by the chunk's event "e<k>" (one per batch
-- token, "finished|@started|#worker|worker"), 'f' for one recorded in `fin` (a result, or a
-- chunk past 128 events). `chunks`: per chunk id, what this call read and changes (false: none).
local chunks = {}
local function chunk_for(c)
  local ch = chunks[c]
  if ch == nil then
    local ck = base .. 'ck:' .. c
    local f = redis.call('HMGET', ck, 'h', 's', 'E')
    local n = f[1] and tonumber(string.match(f[1], '|(%d+)$'))
    if n then
      ch = { c = c, ck = ck, n = n, s = f[2], e = tonumber(f[3] or '0') or 0, ev = {}, new = {},
        set = {}, settled = 0, ran = 0, done = {} }
    else
      ch = false
    end
    chunks[c] = ch
  end
  return ch
end
for j = 1, k do
  if held[j] then
    applied = applied + 1
    local c = codes[j]
    if byte(c, 1) == 111 then -- 'o'
      -- A compact job's record does not say when and where it ran (its batch token did):
      -- "finished|@started|#worker|worker[|result]", the prefix built once per batch.
      local token, head = held[j], snow
      if token ~= '' then
        head = heads[token]
        if not head then
          local st, w = string.match(token, '^%d+|(%d+)|(.*)$')
          head = st and (snow .. '|@' .. st .. '|' .. #w .. '|' .. w) or snow
          heads[token] = head
        end
      end
      -- Still in its chunk (its state byte '.')?
      local ch, idx = nil, nil
      if cids[j] then
        ch = chunk_for(cids[j])
        if ch then
          local i = idxs[j]
          if i < ch.n and not ch.set[i + 1] and (not ch.s or byte(ch.s, i + 1) == 46) then
            idx = i
          end
        end
      end
      local ev = nil
      if idx then
        ch.settled = ch.settled + 1
        if inpiece[j] then ch.ran = ch.ran + 1 end
        if #c == 1 then
          ev = ch.ev[head]
          if not ev and ch.e < 128 then
            ev = ch.e
            ch.e = ev + 1
            ch.ev[head] = ev
            ch.new[#ch.new + 1] = 'e' .. ev
            ch.new[#ch.new + 1] = head
          end
        end
        ch.set[idx + 1] = ev and 128 + ev or 102 -- 'f'
      end
      if not ev then
        local id = id_of(j)
        nf = nf + 2
        fin[nf - 1] = id
        if #c == 1 then fin[nf] = head else fin[nf] = head .. '|' .. sub(c, 2) end
      end
      ok = ok + 1
      if ev then
        -- (Recorded in its chunk, it expires with the chunk: see forget_done.)
        ch.done[#ch.done + 1] = idx
      else
        nkf = nkf + 1
        kept[nkf] = id_of(j)
      end
      -- (A job still in its chunk has no unique key.)
      if uniq and not idx then
        release_unique(redis.call('HGET', jobp .. id_of(j), 'uk'), id_of(j))
      end
    else
      local id = id_of(j)
      failed = failed + 1
      materialize(base, id, held[j] ~= '' and held[j] or nil)
      local key = jobp .. id
      local text, backoff = sub(c, 2), nil
      if byte(c, 1) == 102 then -- 'f'
        local b, rest = string.match(c, '^f(%d+)|(.*)$')
        backoff, text = tonumber(b) or 0, rest or text
      end
      local f = redis.call('HMGET', key, 'att', 'max', 'uk')
      if backoff and tonumber(f[1] or '0') < tonumber(f[2] or '0') then
        local at = now + backoff
        redis.call('HSET', key, 'st', 'retrying', 'err', text, 'ra', at)
        redis.call('ZADD', base .. 'scheduled', at, id)
      else
        redis.call('HSET', key, 'st', 'dead', 'err', text, 'fa', snow)
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
for s = 1, nf, 1000 do
  redis.call('HSET', base .. 'fin', unpack(fin, s, math.min(s + 999, nf)))
end
if nr > 0 then
  redis.call('LPUSH', base .. 'recent', unpack(recent))
  redis.call('LTRIM', base .. 'recent', 0, cap - 1)
end
-- The chunks' new state bytes and events, then their settling.
for _, ch in pairs(chunks) do
  if ch and ch.settled > 0 then
    -- (Read again: a failure in this call may have moved a job out of the chunk since.)
    local cur = redis.call('HGET', ch.ck, 's') or string.rep('.', ch.n)
    local bytes = { byte(cur, 1, ch.n) }
    for i, v in pairs(ch.set) do bytes[i] = v end
    local states = string.char(unpack(bytes, 1, ch.n))
    redis.call('HSET', ch.ck, 's', states, 'E', ch.e, unpack(ch.new))
    chunk_settle(ch.ck, ch.settled)
    if ch.ran > 0 then
      redis.call('HINCRBY', base .. 'stats', 'crun', -ch.ran)
      pieces_settle(base, ch.c, states)
    end
  end
end
if ok > 0 then
  -- One entry for the whole call: the expiry, then the ids (see forget_done).
  if nkf > 0 then redis.call('RPUSH', base .. 'done', stamp .. table.concat(kept, ',', 1, nkf)) end
  -- Successes recorded in chunks: per chunk, its id then its jobs' indexes (2 characters
  -- each), the chunks joined by ','.
  local groups = {}
  for _, ch in pairs(chunks) do
    if ch and #ch.done > 0 then
      local codes = {}
      for q, x in ipairs(ch.done) do
        codes[2 * q - 1] = byte(CROCKFORD, math.floor(x / 32) + 1)
        codes[2 * q] = byte(CROCKFORD, x % 32 + 1)
      end
      groups[#groups + 1] = ch.c .. string.char(unpack(codes))
    end
  end
  if #groups > 0 then
    redis.call('RPUSH', base .. 'done', stamp .. '#' .. table.concat(groups, ','))
  end
  redis.call('HINCRBY', base .. 'stats', 'succeeded', ok)
end
if failed > 0 then redis.call('HINCRBY', base .. 'stats', 'failed', failed) end
if dead > 0 then redis.call('HINCRBY', base .. 'stats', 'dead', dead) end

-- Forget succeeded jobs past their retention: a bounded step, a little more than was added.
forget_done(base, now, math.min(ok + 16, 1000))
return applied
