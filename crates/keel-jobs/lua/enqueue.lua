-- Enqueue a batch of jobs into one queue.
-- Jobs live in per-queue hashes keyed by id (one batched HSET per hash per call):
--   spec (immutable JSON), st ("state|attempt|priority|max_attempts|unique_key"),
--   t ("created|enqueued|run_at|started|finished", ms), w (worker), err, res.
-- KEYS[1] = queue base "prefix:{q:NAME}:"
-- ARGV[1] = number of jobs n (the caller sends at most 500), then 7 fields per job:
--   id, spec (JSON), priority, max_attempts, unique_key ('' = none), delay_ms, run_at_ms (-1 = none)
-- Returns a flat array: for each job, the id and 1 if it was a duplicate of a live unique job.
local base = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local out, ready, specs, states, times, delayed = {}, {}, {}, {}, {}, {}
local added = 0
local i = 2
for _ = 1, n do
  local id, spec, p, max, uk = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local delay, runat = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  i = i + 7
  local dup = nil
  if uk ~= '' then
    local ukey = base .. 'uniq:' .. uk
    local holder = redis.call('GET', ukey)
    if holder and redis.call('HEXISTS', base .. 'st', holder) == 1 then
      dup = holder
    else
      redis.call('SET', ukey, id)
    end
  end
  if dup then
    out[#out + 1] = dup
    out[#out + 1] = 1
  else
    local at = now
    if runat >= 0 then at = runat elseif delay > 0 then at = now + delay end
    specs[#specs + 1] = id
    specs[#specs + 1] = spec
    states[#states + 1] = id
    times[#times + 1] = id
    if at > now then
      states[#states + 1] = 'scheduled|0|' .. p .. '|' .. max .. '|' .. uk
      times[#times + 1] = now .. '||' .. at .. '||'
      delayed[#delayed + 1] = at
      delayed[#delayed + 1] = id
    else
      states[#states + 1] = 'queued|0|' .. p .. '|' .. max .. '|' .. uk
      times[#times + 1] = now .. '|' .. now .. '|' .. at .. '||'
      local list = ready[p]
      if not list then
        list = {}
        ready[p] = list
      end
      list[#list + 1] = id
    end
    added = added + 1
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
if added > 0 then
  redis.call('HSET', base .. 'spec', unpack(specs))
  redis.call('HSET', base .. 'st', unpack(states))
  redis.call('HSET', base .. 't', unpack(times))
  redis.call('HINCRBY', base .. 'stats', 'enqueued', added)
end
if #delayed > 0 then
  redis.call('ZADD', base .. 'scheduled', unpack(delayed))
end
for p, ids in pairs(ready) do
  redis.call('RPUSH', base .. 'ready:' .. p, unpack(ids))
  redis.call('ZADD', base .. 'prios', -tonumber(p), p)
end
return out
