-- Prelude shared by the scripts that meet compact jobs (prepended to them by the engine).
-- A job enqueued ready at once without a unique key lives, while it is queued or running, as
-- one field of its queue's `jobs` hash (one variadic HSET per batch, no key per job):
--   queued   "*ID|created|priority|max_attempts|spec"   (also its ready list element)
--   running  "r" .. started .. "|" .. #worker .. "|" .. worker .. queued-record   (attempt 1)
-- Its success adds "finished" or "finished|result" to the `fin` hash (the record stays until
-- its retention ends). Any other transition (cancel, failure, lost lease, hand-back) first moves
-- it into its own `job:ID` hash (`materialize`), where the rare states live.

-- The fields of a compact record, or nil when it cannot be read.
local function parse_compact(rec)
  local e, sa, w = rec, nil, nil
  if string.byte(rec, 1) == 114 then -- 'r'
    local s, wl, pos = string.match(rec, '^r(%d+)|(%d+)|()')
    if not s then return nil end
    wl = tonumber(wl)
    sa = s
    w = string.sub(rec, pos, pos + wl - 1)
    e = string.sub(rec, pos + wl)
  end
  local id, ca, p, max, spec = string.match(e, '^%*([^|]+)|(%d+)|(-?%d+)|(%d+)|(.*)$')
  if not id then return nil end
  return { st = sa and 'running' or 'queued', att = sa and '1' or '0', ca = ca, p = p,
    max = max, spec = spec, sa = sa, w = w }
end

-- Moves the compact job `id` of queue `base` into its own hash; returns its fields, or nil
-- when the job is not compact (already in `job:ID`, or unknown).
local function materialize(base, id)
  local rec = redis.call('HGET', base .. 'jobs', id)
  if not rec then return nil end
  local j = parse_compact(rec)
  if not j then return nil end
  local fields = { 'spec', j.spec, 'p', j.p, 'max', j.max, 'st', j.st, 'att', j.att, 'ca', j.ca }
  if j.sa then
    fields[#fields + 1] = 'sa'
    fields[#fields + 1] = j.sa
    fields[#fields + 1] = 'w'
    fields[#fields + 1] = j.w
  end
  redis.call('HSET', base .. 'job:' .. id, unpack(fields))
  redis.call('HDEL', base .. 'jobs', id)
  return j
end

-- Forgets succeeded jobs whose retention ended: the `done` list holds "expiry(13 digits)..id",
-- time ordered; at most `step` of them per call. Returns how many were forgotten.
local function forget_done(base, now, step)
  local nowstamp = string.format('%013d', now)
  local first = redis.call('LINDEX', base .. 'done', 0)
  if not first or string.sub(first, 1, 13) > nowstamp then return 0 end
  local head = redis.call('LRANGE', base .. 'done', 0, step - 1)
  local keys, ids = {}, {}
  for _, e in ipairs(head) do
    if string.sub(e, 1, 13) > nowstamp then break end
    local id = string.sub(e, 14)
    ids[#ids + 1] = id
    keys[#keys + 1] = base .. 'job:' .. id
  end
  redis.call('UNLINK', unpack(keys))
  redis.call('HDEL', base .. 'jobs', unpack(ids))
  redis.call('HDEL', base .. 'fin', unpack(ids))
  redis.call('LTRIM', base .. 'done', #ids, -1)
  return #ids
end
