-- token_bucket.lua: tokens scaled by the period (exact integers) and the last refill time, a hash.
A[2] = function(key, now, limit, period, burst, cost)
  local capacity = burst * period
  local s = redis.call('HMGET', key, 't', 'l')
  local tokens, last = tonumber(s[1]), tonumber(s[2])
  if tokens == nil or last == nil then tokens, last = capacity, now end
  local elapsed = math.min(math.max(now - last, 0), ceil_div(capacity, limit))
  tokens = math.min(tokens + elapsed * limit, capacity)
  local need = math.min(cost, burst + 1) * period
  if tokens < need then
    local retry = ceil_div(need - tokens, limit)
    if cost > burst then retry = -1 end
    return 0, burst, floor(tokens / period), ceil_div(capacity - tokens, limit), retry, nil
  end
  tokens = tokens - need
  local reset = ceil_div(capacity - tokens, limit)
  return 1, burst, floor(tokens / period), reset, 0, function()
    redis.call('HSET', key, 't', fmt(tokens), 'l', fmt(now))
    pexpire(key, reset)
  end
end
