-- gcra.lua: generic cell rate algorithm. State: the theoretical arrival time (TAT), a string.
A[1] = function(key, now, limit, period, burst, cost)
  local interval = math.max(floor(period / limit), 1)
  local tolerance = interval * burst
  local stored = tonumber(redis.call('GET', key)) or now
  local tat = math.max(stored, now)
  local new_tat = tat + math.min(cost, burst + 1) * interval
  local allow_at = new_tat - tolerance
  if allow_at > now then
    local remaining = floor(math.max(now + tolerance - tat, 0) / interval)
    local retry = allow_at - now
    if cost > burst then retry = -1 end
    return 0, burst, remaining, tat - now, retry, nil
  end
  local remaining = floor(math.max(now + tolerance - new_tat, 0) / interval)
  local ttl = math.max(new_tat - now, 1)
  return 1, burst, remaining, new_tat - now, 0, function()
    redis.call('SET', key, fmt(new_tat), 'PX', ceil_div(ttl, 1000))
  end
end
