-- Enqueue a batch of jobs into one queue.
-- KEYS[1] = queue base "prefix:{q:NAME}:"
-- ARGV[1] = number of jobs n (at most 1000; the caller sends at most 500), then runs of jobs in
-- batch order, each a count c then its jobs:
--   c > 0: a chunk of c compact jobs (ready at once, no unique key, one priority; see
--     compact.lua), 4 fields: the priority, the chunk id C (24 Crockford characters: its jobs'
--     ids are C followed by their index in 2 characters), the retention in ms, and the records
--     "max_attempts|spec" joined by newlines (a JSON spec holds no raw newline);
--   c < 0: -c other jobs, 4 fields each: id, priority, opts, body
--     with opts = "delay_ms|run_at_ms (-1 = none)|unique_key";
--   body = "priority|max_attempts|spec (JSON)".
-- (Runs keep the batch's order. A chunk costs Redis one hash and one ready list element, however
-- many jobs it holds: no argument, string or field per job.)
-- Ready list elements: "#C|lo|count|offset" for the jobs lo.. of a chunk still queued (offset:
-- where job lo's record starts in the chunk's records), "id|attempt|created|enqueued|run_at|spec"
-- for jobs in their own hash (see fetch.lua).
-- Returns a flat array of the duplicates only: for each job whose unique key belongs to a live
-- job, its position in the batch (from 1) and the live job's id.
local base = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local snow = string.format('%d', now)
local n = tonumber(ARGV[1])
if not n or n > 1000 then return redis.error_reply('at most 1000 jobs per call') end
local out = {}
local ready = {}
local cq = {}
local added = 0
local i = 2
-- The middle of a hash job's element ready now: attempt 0, created = enqueued = run_at = now.
local mid = '|0|' .. snow .. '|' .. snow .. '|' .. snow .. '|'
-- The runs must add up to n jobs and end with the arguments: checked before any write.
local nargs = #ARGV
do
  local a, total = 2, 0
  while a <= nargs do
    local c = tonumber(ARGV[a])
    if not c or c == 0 or c ~= math.floor(c) then return redis.error_reply('bad enqueue arguments') end
    if c > 0 then
      if c > 1024 or not tonumber(ARGV[a + 1] or '') or not tonumber(ARGV[a + 3] or '')
          or not string.match(ARGV[a + 2] or '', '^[0-9A-Z]+$') or #ARGV[a + 2] ~= 24 then
        return redis.error_reply('bad enqueue arguments')
      end
      a = a + 5
    else
      a = a + 1 - c * 4
    end
    total = total + math.abs(c)
  end
  if a ~= nargs + 1 or total ~= n then return redis.error_reply('bad enqueue arguments') end
end
local j = 0
while i <= nargs do
  local c = tonumber(ARGV[i])
  if c > 0 then
    -- A chunk: its hash (header "created|priority|count", records, jobs left, retention) and one
    -- ready list element.
    local p, chunk = ARGV[i + 1], ARGV[i + 2]
    local list = ready[p]
    if not list then
      list = {}
      ready[p] = list
    end
    redis.call('HSET', base .. 'ck:' .. chunk, 'h', snow .. '|' .. p .. '|' .. c, 'b', ARGV[i + 4],
      'l', c, 'r', ARGV[i + 3])
    list[#list + 1] = '#' .. chunk .. '|0|' .. c .. '|0'
    -- `cq`: per priority, the jobs queued in chunk elements beyond one per element (stats.lua).
    if c > 1 then cq[p] = (cq[p] or 0) + c - 1 end
    added = added + c
    j = j + c
    i = i + 5
  else
    c = -c
    i = i + 1
    for _ = 1, c do
      j = j + 1
      local id, p, opts, body = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
      i = i + 4
      local list = ready[p]
      if not list then
        list = {}
        ready[p] = list
      end
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
end
for p, k in pairs(cq) do redis.call('HINCRBY', base .. 'cq', p, k) end
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
