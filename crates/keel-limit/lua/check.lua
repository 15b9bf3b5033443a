-- check.lua: the driver. Evaluates a batch of requests in one call, each request a group of
-- checks that are admitted all together or not at all.
-- KEYS: one key per check, in order (at most 512).
-- ARGV, general form: spec_count, then per distinct spec: algorithm, limit, period_us, burst;
--       then per check: spec index (1-based; negative when more checks of the same request
--       follow), cost (-(cost + 1) when the same key is checked again later in this call).
-- ARGV, uniform form (every request one check, one spec, one cost: a limiter's common case):
--       0, algorithm, limit, period_us, burst, cost, then the 1-based positions (ascending) of
--       the checks whose key is checked again later in this call. No per-check arguments.
-- Reply: now_us (from Redis TIME), then per check: remaining, reset_after_us, retry_after_us
--        (0 exactly when the check admits; -1 = never).
-- String states are read with one MGET for the whole call. A key's commit is written at once
-- with one PSETEX, unless the key is checked again later in the call: then it is kept in a Lua
-- table (read back by the later checks) and only its last commit is written, so a key checked
-- many times in one call costs one read and one write.
local n = #KEYS
if n > 512 then return redis.error_reply('ERR keel: at most 512 checks per call') end
local nargs = #ARGV
local uniform = ARGV[1] == '0'
local nspecs = 1
if not uniform then nspecs = tonumber(ARGV[1]) end
if uniform then
  if nargs < 6 or nargs > 6 + n then return redis.error_reply('ERR keel: malformed arguments') end
elseif nspecs == nil or nspecs < 1 or nspecs > n or nargs ~= 1 + 4 * nspecs + 2 * n then
  return redis.error_reply('ERR keel: malformed arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local specs, strings = {}, false
for s = 1, nspecs do
  local b = 4 * s - 2
  local code = tonumber(ARGV[b])
  if A[code] == nil then return redis.error_reply('ERR keel: unknown algorithm ' .. tostring(ARGV[b])) end
  local sp = { code = code, limit = tonumber(ARGV[b + 1]), period = tonumber(ARGV[b + 2]),
    burst = tonumber(ARGV[b + 3]), interval = 0, tolerance = 0 }
  if P[code] then P[code](sp) end
  if D[code] then strings = true end
  specs[s] = sp
end
local stored
if strings then stored = redis.call('MGET', unpack(KEYS)) end
-- State committed in this call for keys checked again later (cached > 0 once there is any),
-- with its ttl and algorithm, and those keys in order, to write what is left at the end.
local cache, cached, pending, npending, ttls, codes = {}, 0, nil, 0, nil, nil
local function commit(key, sp, cost, next, again, ttl)
  if next == nil then return end
  local code = sp.code
  if C[code] then return C[code](key, next, now, cost, ttl) end
  if again then
    if pending == nil then pending, ttls, codes = {}, {}, {} end
    if cache[key] == nil then npending = npending + 1; pending[npending] = key end
    cache[key], ttls[key], codes[key] = next, ttl, code
    cached = cached + 1
  else
    if cached > 0 then cache[key] = nil end
    redis.call('PSETEX', key, fmt('%d', ceil_div(ttl, 1000)), E[code](next))
  end
end
local out = { now }
if uniform then
  -- One spec, one cost, one check per request: no per-check arguments to parse, no groups.
  local sp = specs[1]
  local code = sp.code
  local eval, decode, encode = A[code], D[code], E[code]
  local cost = tonumber(ARGV[6])
  if cost == nil or cost < 0 then return redis.error_reply('ERR keel: malformed arguments') end
  local mi = 7
  local mark = tonumber(ARGV[7])
  local o = 2
  for i = 1, n do
    local key = KEYS[i]
    local again = false
    if i == mark then
      again, mi = true, mi + 1
      mark = tonumber(ARGV[mi])
    end
    local state = key
    if decode then
      state = nil
      if cached > 0 then state = cache[key] end
      if state == nil then
        local v = stored[i]
        if v then state = decode(v) end
      end
    end
    local allowed, remaining, reset, retry, next, ttl = eval(sp, state, now, cost)
    out[o], out[o + 1], out[o + 2] = remaining, reset, retry
    o = o + 3
    if allowed == 1 and next ~= nil then
      if again or not decode then
        commit(key, sp, cost, next, again, ttl)
      else
        if cached > 0 then cache[key] = nil end
        redis.call('PSETEX', key, fmt('%d', ceil_div(ttl, 1000)), encode(next))
      end
    end
  end
else
  -- Cost and whether the key is checked again later in the call, from a cost argument.
  local function cost_of(v)
    local cost = tonumber(v)
    if cost ~= nil and cost < 0 then return -cost - 1, true end
    return cost, false
  end
  local gnext, gttl -- next states of the current request's checks, for requests of several checks
  local ai, first, all = 2 + 4 * nspecs, 1, true
  for i = 1, n do
    local si, cost, again = tonumber(ARGV[ai]), tonumber(ARGV[ai + 1]), false
    if cost ~= nil and cost < 0 then cost, again = -cost - 1, true end
    ai = ai + 2
    local last = true
    if si ~= nil and si < 0 then si, last = -si, false end
    local sp = specs[si]
    if sp == nil or cost == nil then return redis.error_reply('ERR keel: malformed check ' .. i) end
    local code, key = sp.code, KEYS[i]
    local state, decode = key, D[code]
    if decode then
      state = nil
      if cached > 0 then state = cache[key] end
      if state == nil then
        local v = stored[i]
        if v then state = decode(v) end
      end
    end
    local allowed, remaining, reset, retry, next, ttl = A[code](sp, state, now, cost)
    local o = 3 * i - 1
    out[o], out[o + 1], out[o + 2] = remaining, reset, retry
    if first == i and last then
      -- a request of one check (commit's plain write inlined)
      if allowed == 1 and next ~= nil then
        if again or not decode then
          commit(key, sp, cost, next, again, ttl)
        else
          if cached > 0 then cache[key] = nil end
          redis.call('PSETEX', key, fmt('%d', ceil_div(ttl, 1000)), E[code](next))
        end
      end
      first = i + 1
    else
      if gnext == nil then gnext, gttl = {}, {} end
      if allowed == 0 then all = false end
      gnext[i], gttl[i] = next, ttl
      if last then
        if all then
          local gi = 2 + 4 * nspecs + 2 * (first - 1)
          for c = first, i do
            local gcost, gagain = cost_of(ARGV[gi + 1])
            commit(KEYS[c], specs[math.abs(tonumber(ARGV[gi]))], gcost, gnext[c], gagain, gttl[c])
            gi = gi + 2
          end
        end
        first, all = i + 1, true
      end
    end
  end
end
for w = 1, npending do
  local key = pending[w]
  local state = cache[key]
  if state ~= nil then
    redis.call('PSETEX', key, fmt('%d', ceil_div(ttls[key], 1000)), E[codes[key]](state))
  end
end
return out
