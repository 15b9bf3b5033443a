-- sliding_log.lua: one sorted-set member per admitted unit, scored by its time. The limit is
-- capped (10,000) so the set, and the work per call, stay bounded. Reads and writes the set
-- itself (no D/E): `key` is passed as the state, and C[3] commits.
A[3] = function(sp, key, now, cost)
  local limit, period = sp.limit, sp.period
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt('%.0f', now - period))
  local count = redis.call('ZCARD', key)
  if count + cost > limit then
    local retry = -1
    if cost <= limit then
      local needed = redis.call('ZRANGE', key, count + cost - limit - 1, count + cost - limit - 1, 'WITHSCORES')
      retry = tonumber(needed[2] or now) + period - now
    end
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    local newest_at = tonumber(newest[2] or now)
    return 0, limit - count, newest_at + period - now, retry
  end
  local reset = period
  if cost == 0 then
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    reset = tonumber(newest[2] or now) + period - now
  end
  return 1, limit - count - cost, reset, 0, count, period
end
C[3] = function(key, count, now, cost, ttl)
  local at = fmt('%.0f', now)
  for i = 1, cost do
    redis.call('ZADD', key, at, at .. '-' .. fmt('%.0f', count + i))
  end
  redis.call('PEXPIRE', key, ceil_div(max(ttl, 1), 1000))
end
