-- token_bucket.lua: tokens scaled by the period (exact integers) and the last refill time.
-- State: "tokens last".
D[2] = function(v)
  local a, b = string.match(v, '^(%d+) (%d+)$')
  if a == nil then return nil end
  return { tonumber(a), tonumber(b) }
end
E[2] = function(s) return fmt('%d %d', s[1], s[2]) end
A[2] = function(sp, s, now, cost)
  local limit, period, burst = sp.limit, sp.period, sp.burst
  local capacity = burst * period
  local tokens, last = capacity, now
  if s ~= nil then tokens, last = s[1], s[2] end
  local elapsed = min(max(now - last, 0), ceil_div(capacity, limit))
  tokens = min(tokens + elapsed * limit, capacity)
  local need = min(cost, burst + 1) * period
  if tokens < need then
    local retry = ceil_div(need - tokens, limit)
    if cost > burst then retry = -1 end
    return 0, floor(tokens / period), ceil_div(capacity - tokens, limit), retry
  end
  tokens = tokens - need
  local reset = ceil_div(capacity - tokens, limit)
  return 1, floor(tokens / period), reset, 0, { tokens, now }, max(reset, 1)
end
