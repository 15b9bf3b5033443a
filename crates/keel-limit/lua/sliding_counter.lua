-- sliding_counter.lua: Cloudflare's sliding window: the previous window's count, weighted by how
-- much of it still overlaps, plus the current count. State: window index, previous, current.
A[4] = function(key, now, limit, period, burst, cost)
  local window = floor(now / period)
  local elapsed = now - window * period
  local s = redis.call('HMGET', key, 'w', 'p', 'c')
  local w, previous, current = tonumber(s[1]), tonumber(s[2]) or 0, tonumber(s[3]) or 0
  if w == window then
    -- as stored
  elseif w == window - 1 then
    previous, current = current, 0
  else
    previous, current = 0, 0
  end
  local weighted = previous * (period - elapsed) + current * period
  local reset = period - elapsed
  if weighted + cost * period > limit * period then
    local retry
    if cost > limit then
      retry = -1
    elseif current + cost <= limit then
      local room = (limit - current - cost) * period
      retry = math.max(period - elapsed - floor(room / math.max(previous, 1)), 1)
    else
      local room = (limit - cost) * period
      retry = period - elapsed + math.max(period - floor(room / math.max(current, 1)), 0)
    end
    return 0, limit, floor(math.max(limit * period - weighted, 0) / period), reset, retry, nil
  end
  current = current + cost
  weighted = previous * (period - elapsed) + current * period
  return 1, limit, floor(math.max(limit * period - weighted, 0) / period), reset, 0, function()
    redis.call('HSET', key, 'w', fmt(window), 'p', fmt(previous), 'c', fmt(current))
    pexpire(key, reset + period)
  end
end
