-- Prelude shared by the scripts that meet compact jobs (prepended to them by the engine).
-- A job enqueued ready at once without a unique key lives, while it is queued or running, in a
-- chunk: the jobs of one enqueue run share one hash and one ready list element (see below).
-- (Before chunks, each was a field of its queue's `jobs` hash, still read:
--   "*ID|created|priority|max_attempts|spec", also its ready list element.) Its record reads
-- the same either way.
-- In a chunk it runs (attempt 1) while a live piece of its chunk holds it and its state byte
-- is '.'; a plain success sets that byte (see below). (A `jobs` record runs while its member
-- "ID|1" is in the `held` hash, whose value is its fetch batch's token "seq|started|worker";
-- records written before batch leases may still read
-- "r" .. started .. "|" .. #worker .. "|" .. worker .. queued-record while running; its success
-- adds "finished|@started|#worker|worker" (+ "|result") to the `fin` hash.) Any other
-- transition (cancel, failure, lost lease, hand-back) first moves it into its own `job:ID` hash
-- (`materialize`), where the rare states live.

-- The fields of a compact record, or nil when it cannot be read. `token`: the batch token
-- holding it (running), or nil (queued).
local function parse_compact(rec, token)
  local e, sa, w = rec, nil, nil
  if string.byte(rec, 1) == 114 then -- 'r'
    local s, wl, pos = string.match(rec, '^r(%d+)|(%d+)|()')
    if not s then return nil end
    wl = tonumber(wl)
    sa = s
    w = string.sub(rec, pos, pos + wl - 1)
    e = string.sub(rec, pos + wl)
  elseif token then
    sa, w = string.match(token, '^%d+|(%d+)|(.*)$')
  end
  local id, ca, p, max, spec = string.match(e, '^%*([^|]+)|(%d+)|(-?%d+)|(%d+)|(.*)$')
  if not id then return nil end
  return { st = sa and 'running' or 'queued', att = sa and '1' or '0', ca = ca, p = p,
    max = max, spec = spec, sa = sa, w = w }
end

-- Chunks (see enqueue.lua): the hash `ck:C` holds "h" = "created|priority|count", "b" = the
-- records "max_attempts|spec" joined by newlines, "l" = how many of its jobs have neither
-- succeeded nor left it, "r" = the retention (ms) it keeps once "l" is 0, and "s" (written at the
-- first departure or success) = a byte per job: '.' queued or running, 'x' once the job moved
-- into its own `job:ID` hash, 128 + k once it succeeded as told by the event "e<k>", 'f' once it
-- succeeded as told by `fin` (see complete.lua); "E" counts the events. The job of index i has
-- the id C followed by i in 2 Crockford characters.
-- Leases are held per fetch batch (see fetch.lua): `held` maps "id|attempt" to the token of
-- the batch that leased it, `leases` scores each token by its expiry, `batch:TOKEN` lists the
-- batch's members for the reaper and `bcount` counts the members of each batch still held.
-- Called when `k` members of batch `token` stop being held (acked, cancelled, handed back,
-- reaped): the last one forgets the batch.
local function leave_batch(base, token, k)
  if redis.call('HINCRBY', base .. 'bcount', token, -k) <= 0 then
    redis.call('HDEL', base .. 'bcount', token)
    redis.call('ZREM', base .. 'leases', token)
    redis.call('UNLINK', base .. 'batch:' .. token)
  end
end

local CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'

-- Chunk jobs are leased per piece (see fetch.lua): the `pieces` hash maps a chunk id C to its
-- live pieces, each "lo,count,#token,token" (the jobs lo..lo+count-1, leased together by the
-- batch `token`), run together. A job of a live piece runs (attempt 1) while its state byte is
-- '.'. The batch's member list holds "#C|lo" for the reaper; a piece counts as one member in
-- `bcount`, and leaves its batch once none of its jobs runs. The `stats` field `crun` counts
-- the chunk jobs running.

-- The live pieces of chunk C: a list of { lo, count, token }.
local function pieces_of(base, c)
  local out = {}
  local v = redis.call('HGET', base .. 'pieces', c)
  if not v then return out end
  local pos = 1
  while pos <= #v do
    local lo, cnt, len, at = string.match(v, '^(%d+),(%d+),(%d+),()', pos)
    if not lo then break end
    len = tonumber(len)
    out[#out + 1] = { tonumber(lo), tonumber(cnt), string.sub(v, at, at + len - 1) }
    pos = at + len
  end
  return out
end

-- One piece as stored in `pieces`.
local function piece_entry(lo, cnt, token)
  return lo .. ',' .. cnt .. ',' .. #token .. ',' .. token
end

-- The token of the live piece holding index idx, or nil.
local function piece_token(pieces, idx)
  for _, pc in ipairs(pieces) do
    if idx >= pc[1] and idx < pc[1] + pc[2] then return pc[3] end
  end
  return nil
end

-- Forgets the live pieces of chunk C none of whose jobs runs any more (no state byte '.' in
-- their range; `states`: the chunk's state bytes, read when nil): each leaves its batch.
local function pieces_settle(base, c, states)
  local pieces = pieces_of(base, c)
  if #pieces == 0 then return end
  if states == nil then states = redis.call('HGET', base .. 'ck:' .. c, 's') end
  if not states then return end
  local keep = {}
  for _, pc in ipairs(pieces) do
    if string.find(string.sub(states, pc[1] + 1, pc[1] + pc[2]), '.', 1, true) then
      keep[#keep + 1] = piece_entry(pc[1], pc[2], pc[3])
    else
      leave_batch(base, pc[3], 1)
    end
  end
  if #keep == 0 then
    redis.call('HDEL', base .. 'pieces', c)
  elseif #keep < #pieces then
    redis.call('HSET', base .. 'pieces', c, table.concat(keep))
  end
end

-- The chunk key and index of a chunk job's id, or nil.
local function chunk_of(base, id)
  if #id ~= 26 then return nil end
  local a = string.find(CROCKFORD, string.sub(id, 25, 25), 1, true)
  local b = string.find(CROCKFORD, string.sub(id, 26, 26), 1, true)
  if not a or not b then return nil end
  return base .. 'ck:' .. string.sub(id, 1, 24), (a - 1) * 32 + (b - 1)
end

-- The batch token of a chunk job running in a live piece (its state byte '.'), or nil.
local function chunk_lease(base, id)
  local ck, idx = chunk_of(base, id)
  if not ck then return nil end
  local token = piece_token(pieces_of(base, string.sub(id, 1, 24)), idx)
  if not token then return nil end
  local s = redis.call('HGET', ck, 's')
  if s and string.byte(s, idx + 1) ~= 46 then return nil end
  return token
end

-- A job still in its chunk (not finished, not moved out): its compact record "*ID|created|priority|max_attempts|spec", then
-- the chunk key, the job's index, the chunk's count and state bytes; nil if it is not in one.
local function chunk_record(base, id)
  local ck, idx = chunk_of(base, id)
  if not ck then return nil end
  local f = redis.call('HMGET', ck, 'h', 'b', 's')
  if not f[1] or not f[2] then return nil end
  local created, p, n = string.match(f[1], '^(%d+)|(-?%d+)|(%d+)$')
  n = tonumber(n)
  if not n or idx >= n then return nil end
  if f[3] and string.byte(f[3], idx + 1) ~= 46 then return nil end
  local recs, pos = f[2], 1
  for _ = 1, idx do
    pos = string.find(recs, '\n', pos, true)
    if not pos then return nil end
    pos = pos + 1
  end
  local stop = string.find(recs, '\n', pos, true)
  local rec = string.sub(recs, pos, stop and stop - 1 or -1)
  return '*' .. id .. '|' .. created .. '|' .. p .. '|' .. rec, ck, idx, n, f[3]
end

-- True when a job of a chunk succeeded there (its state byte, see complete.lua).
local function chunk_succeeded(base, id)
  local ck, idx = chunk_of(base, id)
  if not ck then return false end
  local s = redis.call('HGET', ck, 's')
  if not s then return false end
  local b = string.byte(s, idx + 1)
  return b ~= nil and (b >= 128 or b == 102)
end

-- `k` jobs of chunk `ck` succeeded or left it: once none is left, it is kept for its retention.
local function chunk_settle(ck, k)
  if redis.call('HINCRBY', ck, 'l', -k) <= 0 then
    redis.call('PEXPIRE', ck, tonumber(redis.call('HGET', ck, 'r') or '0') or 0)
  end
end

-- Moves the compact job `id` of queue `base` (a field of `jobs`, or a job still in its chunk)
-- into its own hash; returns its fields, or nil when the job is not compact (already in
-- `job:ID`, or unknown). `token`: the batch token that held its first attempt when the caller
-- has already ended that lease (or, for a chunk job, is ending it now); nil: looked up in
-- `held`, or in the chunk's pieces.
local function materialize(base, id, token)
  local rec = redis.call('HGET', base .. 'jobs', id)
  local ck, idx, n, states = nil, nil, nil, nil
  if not rec then
    rec, ck, idx, n, states = chunk_record(base, id)
    if not rec then return nil end
  end
  if not token and ck then
    token = chunk_lease(base, id)
  elseif not token and string.byte(rec, 1) == 42 then
    token = redis.call('HGET', base .. 'held', id .. '|1') or nil
  end
  local j = parse_compact(rec, token)
  if not j then return nil end
  local fields = { 'spec', j.spec, 'p', j.p, 'max', j.max, 'st', j.st, 'att', j.att, 'ca', j.ca }
  if j.sa then
    fields[#fields + 1] = 'sa'
    fields[#fields + 1] = j.sa
    fields[#fields + 1] = 'w'
    fields[#fields + 1] = j.w
  end
  redis.call('HSET', base .. 'job:' .. id, unpack(fields))
  if ck then
    states = states or string.rep('.', n)
    states = string.sub(states, 1, idx) .. 'x' .. string.sub(states, idx + 2)
    redis.call('HSET', ck, 's', states)
    chunk_settle(ck, 1)
    if token then
      -- It ran in a piece: no longer.
      redis.call('HINCRBY', base .. 'stats', 'crun', -1)
      pieces_settle(base, string.sub(id, 1, 24), states)
    end
  else
    redis.call('HDEL', base .. 'jobs', id)
  end
  return j
end

-- Forgets succeeded jobs whose retention ended: the `done` list holds, time ordered, one entry
-- per ack call, "expiry(13 digits)" followed by the ids it finished joined by ',' (an entry of
-- one id is the format written before batches, read the same way); at most `step` ids per call
-- (a partly forgotten entry keeps the rest of its ids). Returns how many were forgotten.
local function forget_done(base, now, step)
  local nowstamp = string.format('%013d', now)
  local dkey = base .. 'done'
  local ids, n, entries = {}, 0, 0
  while n < step and entries < step do
    local e = redis.call('LINDEX', dkey, 0)
    if not e or string.sub(e, 1, 13) > nowstamp then break end
    entries = entries + 1
    if string.byte(e, 14) == 35 then
      -- '#': successes recorded in their chunks, which expire by themselves (see complete.lua).
      redis.call('LPOP', dkey)
    else
      local rest, nrest = nil, 0
      for id in string.gmatch(string.sub(e, 14), '[^,]+') do
        if n < step then
          n = n + 1
          ids[n] = id
        else
          if not rest then rest = {} end
          nrest = nrest + 1
          rest[nrest] = id
        end
      end
      if rest then
        redis.call('LSET', dkey, 0, string.sub(e, 1, 13) .. table.concat(rest, ',', 1, nrest))
        break
      end
      redis.call('LPOP', dkey)
    end
  end
  if n == 0 then return 0 end
  local keys = {}
  for i = 1, n do keys[i] = base .. 'job:' .. ids[i] end
  redis.call('UNLINK', unpack(keys))
  redis.call('HDEL', base .. 'jobs', unpack(ids))
  redis.call('HDEL', base .. 'fin', unpack(ids))
  return n
end

-- Ends the lease of `member` ("id|attempt") if it is held: returns the batch token that held
-- it, '' for an in-flight entry written before batch leases, or nil when it was not held.
local function drop_lease(base, member)
  local token = redis.call('HGET', base .. 'held', member)
  if token then
    redis.call('HDEL', base .. 'held', member)
    leave_batch(base, token, 1)
    return token
  end
  if redis.call('ZREM', base .. 'inflight', member) == 1 then return '' end
  return nil
end
