-- Enqueue a batch of jobs into one queue.
-- KEYS[1] = queue base "prefix:{q:NAME}:"
-- ARGV[1] = number of jobs n (at most 1000; the caller sends at most 500), then 4 fields per job:
--   id, priority, opts, body where body = "priority|max_attempts|spec (JSON)" and
--   opts = '' for a job ready at once without a unique key (a compact job: one field of the
--   `jobs` hash, see compact.lua), else "delay_ms|run_at_ms (-1 = none)|unique_key".
-- Ready list elements: "*ID|created|priority|max_attempts|spec" for compact jobs,
-- "id|attempt|created|enqueued|run_at|spec" for jobs in their own hash (see fetch.lua).
-- Returns a flat array of the duplicates only: for each job whose unique key belongs to a live
-- job, its position in the batch (from 1) and the live job's id.
local base = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local snow = string.format('%d', now)
local n = tonumber(ARGV[1])
if n > 1000 then return redis.error_reply('at most 1000 jobs per call') end
local out = {}
local ready = {}
local recs, nrec = {}, 0
local added = 0
local i = 2
-- The middle of a compact element: created = now.
local cmid = '|' .. snow .. '|'
-- The middle of a hash job's element ready now: attempt 0, created = enqueued = run_at = now.
local mid = '|0|' .. snow .. '|' .. snow .. '|' .. snow .. '|'
for j = 1, n do
  local id, p, opts, body = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  local list = ready[p]
  if not list then
    list = {}
    ready[p] = list
  end
  if opts == '' then
    local e = '*' .. id .. cmid .. body
    list[#list + 1] = e
    nrec = nrec + 2
    recs[nrec - 1] = id
    recs[nrec] = e
    added = added + 1
  else
    local delay, runat, uk = string.match(opts, '^(%d+)|(-?%d+)|(.*)$')
    local max, spec = string.match(body, '^-?%d+|(%d+)|(.*)$')
    if not delay or not max then return redis.error_reply('bad enqueue arguments') end
    delay, runat = tonumber(delay), tonumber(runat)
    local dup = nil
    if uk ~= '' then
      local ukey = base .. 'uniq:' .. uk
      local holder = redis.call('GET', ukey)
      if holder and (redis.call('EXISTS', base .. 'job:' .. holder) == 1
          or redis.call('HEXISTS', base .. 'jobs', holder) == 1) then
        dup = holder
      else
        redis.call('SET', ukey, id)
        redis.call('SET', base .. 'uniqused', 1)
      end
    end
    if dup then
      out[#out + 1] = j
      out[#out + 1] = dup
    else
      local at = now
      if runat >= 0 then at = runat elseif delay > 0 then at = now + delay end
      local key = base .. 'job:' .. id
      if at > now then
        local fields = { 'spec', spec, 'p', p, 'max', max, 'st', 'scheduled', 'att', 0, 'ca', snow,
          'ra', string.format('%d', at) }
        if uk ~= '' then
          fields[#fields + 1] = 'uk'
          fields[#fields + 1] = uk
        end
        redis.call('HSET', key, unpack(fields))
        redis.call('ZADD', base .. 'scheduled', at, id)
      else
        -- No 'att' (0), no 'ra' and 'ea' when both equal 'ca' (unless it names a past run_at).
        local fields = { 'spec', spec, 'p', p, 'max', max, 'st', 'queued', 'ca', snow }
        if uk ~= '' then
          fields[#fields + 1] = 'uk'
          fields[#fields + 1] = uk
        end
        if at ~= now then
          fields[#fields + 1] = 'ra'
          fields[#fields + 1] = string.format('%d', at)
          fields[#fields + 1] = 'ea'
          fields[#fields + 1] = snow
        end
        redis.call('HSET', key, unpack(fields))
        if at == now then
          list[#list + 1] = id .. mid .. spec
        else
          list[#list + 1] = id .. '|0|' .. snow .. '|' .. snow .. '|' .. string.format('%d', at)
            .. '|' .. spec
        end
      end
      added = added + 1
    end
  end
end
-- (field, value) pairs, at most 1000 values per call.
for s = 1, nrec, 1000 do
  redis.call('HSET', base .. 'jobs', unpack(recs, s, math.min(s + 999, nrec)))
end
for p, elems in pairs(ready) do
  if #elems > 0 then
    redis.call('RPUSH', base .. 'ready:' .. p, unpack(elems))
    redis.call('ZADD', base .. 'prios', -tonumber(p), p)
  end
end
if added > 0 then
  redis.call('HINCRBY', base .. 'stats', 'enqueued', added)
end
return out
