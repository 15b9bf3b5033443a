-- sliding_log.lua: one sorted-set member per admitted unit, scored by its time. The limit is
-- capped (10,000) so the set, and the work per call, stay bounded.
A[3] = function(key, now, limit, period, burst, cost)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - period))
  local count = redis.call('ZCARD', key)
  if count + cost > limit then
    local retry = -1
    if cost <= limit then
      local needed = redis.call('ZRANGE', key, count + cost - limit - 1, count + cost - limit - 1, 'WITHSCORES')
      retry = tonumber(needed[2] or now) + period - now
    end
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    local newest_at = tonumber(newest[2] or now)
    return 0, limit, limit - count, newest_at + period - now, retry, nil
  end
  local reset = period
  if cost == 0 then
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    reset = tonumber(newest[2] or now) + period - now
  end
  return 1, limit, limit - count - cost, reset, 0, function()
    for i = 1, cost do
      redis.call('ZADD', key, fmt(now), fmt(now) .. '-' .. fmt(count + i))
    end
    pexpire(key, period)
  end
end
