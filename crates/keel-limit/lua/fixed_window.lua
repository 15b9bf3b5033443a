-- fixed_window.lua: one counter per period, windows aligned to the epoch. State: window, count.
A[5] = function(key, now, limit, period, burst, cost)
  local window = floor(now / period)
  local s = redis.call('HMGET', key, 'w', 'c')
  local count = 0
  if tonumber(s[1]) == window then count = tonumber(s[2]) or 0 end
  local reset = (window + 1) * period - now
  if count + cost > limit then
    local retry = reset
    if cost > limit then retry = -1 end
    return 0, limit, limit - count, reset, retry, nil
  end
  return 1, limit, limit - count - cost, reset, 0, function()
    redis.call('HSET', key, 'w', fmt(window), 'c', fmt(count + cost))
    pexpire(key, reset)
  end
end
