-- Shared helpers, prepended to every job script (each script stays one EVALSHA).
-- A queue's jobs live in hashes keyed by job id, so every transition reads and writes a whole
-- batch with one HMGET / HSET per hash:
--   spec: immutable JSON; st: "state|attempt|priority|max_attempts|unique_key";
--   t: "created|enqueued|run_at|started|finished" (ms); w: worker; err; res.
-- Finished jobs are scored in the `exp` sorted set by expiry and deleted by reap.lua.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function parse_st(v)
  if not v then return nil end
  local st, att, p, max, uk = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  if not st then return nil end
  return { st = st, att = tonumber(att), p = p, max = tonumber(max), uk = uk }
end
local function pack_st(s)
  return s.st .. '|' .. s.att .. '|' .. s.p .. '|' .. s.max .. '|' .. s.uk
end
local function parse_t(v)
  local ca, ea, ra, sa, fa = string.match(v or '', '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  return { ca = ca or '', ea = ea or '', ra = ra or '', sa = sa or '', fa = fa or '' }
end
local function pack_t(x)
  return x.ca .. '|' .. x.ea .. '|' .. x.ra .. '|' .. x.sa .. '|' .. x.fa
end
-- Batched hash access; callers bound the batch (at most 1000 ids).
local function hmget(key, ids)
  if #ids == 0 then return {} end
  return redis.call('HMGET', key, unpack(ids))
end
local function hset(key, kv)
  if #kv > 0 then redis.call('HSET', key, unpack(kv)) end
end
local function push_all(key, ids, front)
  if #ids > 0 then redis.call(front and 'LPUSH' or 'RPUSH', key, unpack(ids)) end
end
local function release_unique(base, id, uk)
  if uk and uk ~= '' then
    local ukey = base .. 'uniq:' .. uk
    if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
  end
end
-- Moves ids (already checked) to their ready lists, by priority.
local function make_ready(base, by_prio, front)
  for p, ids in pairs(by_prio) do
    push_all(base .. 'ready:' .. p, ids, front)
    redis.call('ZADD', base .. 'prios', -tonumber(p), p)
  end
end
local function add_to(tbl, key, value)
  local list = tbl[key]
  if not list then
    list = {}
    tbl[key] = list
  end
  list[#list + 1] = value
end
-- Promotes due scheduled / retrying jobs (at most `limit`). Returns how many.
local function promote_due(base, now, limit)
  local due = redis.call('ZRANGEBYSCORE', base .. 'scheduled', '-inf', now, 'LIMIT', 0, limit)
  if #due == 0 then return 0 end
  redis.call('ZREM', base .. 'scheduled', unpack(due))
  local sts = hmget(base .. 'st', due)
  local ts = hmget(base .. 't', due)
  local new_st, new_t, by_prio = {}, {}, {}
  local n = 0
  for k, id in ipairs(due) do
    local s = parse_st(sts[k])
    if s and (s.st == 'scheduled' or s.st == 'retrying') then
      s.st = 'queued'
      local x = parse_t(ts[k])
      x.ea = now
      new_st[#new_st + 1] = id
      new_st[#new_st + 1] = pack_st(s)
      new_t[#new_t + 1] = id
      new_t[#new_t + 1] = pack_t(x)
      add_to(by_prio, s.p, id)
      n = n + 1
    end
  end
  hset(base .. 'st', new_st)
  hset(base .. 't', new_t)
  make_ready(base, by_prio, false)
  return n
end
