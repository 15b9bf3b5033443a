-- gcra.lua: generic cell rate algorithm. State: the theoretical arrival time (TAT), a number.
D[1] = tonumber
E[1] = function(tat) return fmt('%d', tat) end
P[1] = function(sp)
  sp.interval = max(floor(sp.period / sp.limit), 1)
  sp.tolerance = sp.interval * sp.burst
end
A[1] = function(sp, tat, now, cost)
  local interval, tolerance, burst = sp.interval, sp.tolerance, sp.burst
  if tat == nil or tat < now then tat = now end
  local new_tat = tat + min(cost, burst + 1) * interval
  local allow_at = new_tat - tolerance
  if allow_at > now then
    local retry = allow_at - now
    if cost > burst then retry = -1 end
    return 0, floor(max(now + tolerance - tat, 0) / interval), tat - now, retry
  end
  return 1, floor(max(now + tolerance - new_tat, 0) / interval), new_tat - now, 0,
    new_tat, max(new_tat - now, 1)
end
