-- Re-queue jobs whose lease expired (their worker is gone); past max_attempts they die.
-- Also deletes finished jobs past their retention and trims the dead set. All bounded by ARGV[1].
-- KEYS[1] = queue base; ARGV = limit, dead_retention_ms, recent_cap
local base = KEYS[1]
local limit, dead_retention, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', base .. 'inflight', '-inf', now, 'LIMIT', 0, limit)
local n = 0
if #expired > 0 then
  redis.call('ZREM', base .. 'inflight', unpack(expired))
  local sts = hmget(base .. 'st', expired)
  local ts = hmget(base .. 't', expired)
  local new_st, new_t, errors, by_prio, deaths, expiring, recent = {}, {}, {}, {}, {}, {}, {}
  for k, id in ipairs(expired) do
    local s = parse_st(sts[k])
    if s and s.st == 'running' then
      n = n + 1
      local x = parse_t(ts[k])
      if s.att >= s.max then
        s.st = 'dead'
        x.fa = now
        deaths[#deaths + 1] = now
        deaths[#deaths + 1] = id
        expiring[#expiring + 1] = now + dead_retention
        expiring[#expiring + 1] = id
        recent[#recent + 1] = id
        release_unique(base, id, s.uk)
      else
        s.st = 'queued'
        x.ea = now
        add_to(by_prio, s.p, id)
      end
      errors[#errors + 1] = id
      errors[#errors + 1] = 'lease expired: worker lost'
      new_st[#new_st + 1] = id
      new_st[#new_st + 1] = pack_st(s)
      new_t[#new_t + 1] = id
      new_t[#new_t + 1] = pack_t(x)
    end
  end
  hset(base .. 'st', new_st)
  hset(base .. 't', new_t)
  hset(base .. 'err', errors)
  make_ready(base, by_prio, true)
  if #deaths > 0 then
    redis.call('ZADD', base .. 'dead', unpack(deaths))
    redis.call('ZADD', base .. 'exp', unpack(expiring))
    redis.call('HINCRBY', base .. 'stats', 'dead', math.floor(#deaths / 2))
    redis.call('LPUSH', base .. 'recent', unpack(recent))
    redis.call('LTRIM', base .. 'recent', 0, cap - 1)
  end
end
-- Retention: finished jobs past their expiry are deleted.
local gone = redis.call('ZRANGEBYSCORE', base .. 'exp', '-inf', now, 'LIMIT', 0, limit)
if #gone > 0 then
  redis.call('ZREM', base .. 'exp', unpack(gone))
  for _, h in ipairs({ 'spec', 'st', 't', 'w', 'err', 'res' }) do
    redis.call('HDEL', base .. h, unpack(gone))
  end
  redis.call('ZREM', base .. 'dead', unpack(gone))
end
return n
