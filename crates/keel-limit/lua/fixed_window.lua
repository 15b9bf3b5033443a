-- fixed_window.lua: one counter per period, windows aligned to the epoch. State: "window count".
D[5] = function(v)
  local a, b = string.match(v, '^(%d+) (%d+)$')
  if a == nil then return nil end
  return { tonumber(a), tonumber(b) }
end
E[5] = function(s) return fmt('%d %d', s[1], s[2]) end
A[5] = function(sp, s, now, cost)
  local limit, period = sp.limit, sp.period
  local window = floor(now / period)
  local count = 0
  if s ~= nil and s[1] == window then count = s[2] end
  local reset = (window + 1) * period - now
  if count + cost > limit then
    local retry = reset
    if cost > limit then retry = -1 end
    return 0, limit - count, reset, retry
  end
  return 1, limit - count - cost, reset, 0, { window, count + cost }, reset
end
