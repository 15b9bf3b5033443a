-- sliding_counter.lua: Cloudflare's sliding window: the previous window's count, weighted by how
-- much of it still overlaps, plus the current count. State: "window previous current".
D[4] = function(v)
  local a, b, c = string.match(v, '^(%d+) (%d+) (%d+)$')
  if a == nil then return nil end
  return { tonumber(a), tonumber(b), tonumber(c) }
end
E[4] = function(s) return fmt('%d %d %d', s[1], s[2], s[3]) end
A[4] = function(sp, s, now, cost)
  local limit, period = sp.limit, sp.period
  local window = floor(now / period)
  local elapsed = now - window * period
  local previous, current = 0, 0
  if s ~= nil then
    if s[1] == window then
      previous, current = s[2], s[3]
    elseif s[1] == window - 1 then
      previous = s[3]
    end
  end
  local weighted = previous * (period - elapsed) + current * period
  local reset = period - elapsed
  if weighted + cost * period > limit * period then
    local retry
    if cost > limit then
      retry = -1
    elseif current + cost <= limit then
      local room = (limit - current - cost) * period
      retry = max(period - elapsed - floor(room / max(previous, 1)), 1)
    else
      local room = (limit - cost) * period
      retry = period - elapsed + max(period - floor(room / max(current, 1)), 0)
    end
    return 0, floor(max(limit * period - weighted, 0) / period), reset, retry
  end
  current = current + cost
  weighted = previous * (period - elapsed) + current * period
  return 1, floor(max(limit * period - weighted, 0) / period), reset, 0,
    { window, previous, current }, reset + period
end
