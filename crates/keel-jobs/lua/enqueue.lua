-- Enqueue a batch of jobs into one queue.
-- KEYS[1] = queue base "prefix:{q:NAME}:"
-- ARGV[1] = number of jobs n (the caller sends at most 500), then 7 fields per job:
--   id, spec (JSON), priority, max_attempts, unique_key ('' = none), delay_ms, run_at_ms (-1 = none)
-- Ready list elements are "id|attempt|created|enqueued|run_at|spec" (see fetch.lua).
-- Returns a flat array of the duplicates only: for each job whose unique key belongs to a live
-- job, its position in the batch (from 1) and the live job's id.
local base = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local out = {}
local ready = {}
local added = 0
local i = 2
-- The middle of a ready element for jobs ready now: attempt 0, created = enqueued = run_at = now.
local mid = '|0|' .. now .. '|' .. now .. '|' .. now .. '|'
for j = 1, n do
  local id, spec, p, max, uk = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local delay, runat = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  i = i + 7
  local dup = nil
  if uk ~= '' then
    local ukey = base .. 'uniq:' .. uk
    local holder = redis.call('GET', ukey)
    if holder and redis.call('EXISTS', base .. 'job:' .. holder) == 1 then
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
      if uk == '' then
        redis.call('HSET', key, 'spec', spec, 'p', p, 'max', max, 'st', 'scheduled',
          'att', 0, 'ca', now, 'ra', at)
      else
        redis.call('HSET', key, 'spec', spec, 'p', p, 'max', max, 'uk', uk, 'st', 'scheduled',
          'att', 0, 'ca', now, 'ra', at)
      end
      redis.call('ZADD', base .. 'scheduled', at, id)
    else
      -- A job ready at once stores no 'att' (0), no 'ra' and 'ea' when both equal 'ca' (unless
      -- it names a past run_at), and no 'uk' without a unique key: fewer fields, a cheaper hash.
      if uk == '' and at == now then
        redis.call('HSET', key, 'spec', spec, 'p', p, 'max', max, 'st', 'queued', 'ca', now)
      else
        local fields = { 'spec', spec, 'p', p, 'max', max, 'st', 'queued', 'ca', now }
        if uk ~= '' then
          fields[#fields + 1] = 'uk'
          fields[#fields + 1] = uk
        end
        if at ~= now then
          fields[#fields + 1] = 'ra'
          fields[#fields + 1] = at
          fields[#fields + 1] = 'ea'
          fields[#fields + 1] = now
        end
        redis.call('HSET', key, unpack(fields))
      end
      local list = ready[p]
      if not list then
        list = {}
        ready[p] = list
      end
      if at == now then
        list[#list + 1] = id .. mid .. spec
      else
        list[#list + 1] = id .. '|0|' .. now .. '|' .. now .. '|' .. at .. '|' .. spec
      end
    end
    added = added + 1
  end
end
for p, ids in pairs(ready) do
  redis.call('RPUSH', base .. 'ready:' .. p, unpack(ids))
  redis.call('ZADD', base .. 'prios', -tonumber(p), p)
end
if added > 0 then
  redis.call('HINCRBY', base .. 'stats', 'enqueued', added)
end
return out
