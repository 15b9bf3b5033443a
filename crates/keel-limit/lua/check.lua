-- check.lua: the driver. Evaluates a batch of requests in one call, each request a group of
-- checks that are admitted all together or not at all.
-- KEYS: one key per check, in order (at most 512).
-- ARGV: spec_count, then per distinct spec: algorithm, limit, period_us, burst; then per check:
--       spec index (1-based; negative when more checks of the same request follow), cost.
-- Reply: now_us (from Redis TIME), then per check: allowed, remaining, reset_after_us,
--        retry_after_us (-1 = never).
-- String states are read with one MGET for the whole call and written with one SET PX per
-- touched key at the end, so a key checked many times in one call costs one read, one write.
local n = #KEYS
if n > 512 then return redis.error_reply('ERR keel: at most 512 checks per call') end
local nspecs = tonumber(ARGV[1])
if nspecs == nil or nspecs < 1 or nspecs > n or #ARGV ~= 1 + 4 * nspecs + 2 * n then
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
-- State committed in this call, by key, and the keys to write at the end (with code and ttl);
-- a call of one check writes at once.
local cache, ttls, codes, dirty, ndirty = {}, nil, nil, nil, 0
local function commit(key, sp, cost, next, ttl)
  if next == nil then return end
  local code = sp.code
  if C[code] then return C[code](key, next, now, cost, ttl) end
  if n == 1 then return redis.call('SET', key, E[code](next), 'PX', ceil_div(ttl, 1000)) end
  if ttls == nil then ttls, codes, dirty = {}, {}, {} end
  if ttls[key] == nil then ndirty = ndirty + 1; dirty[ndirty] = key end
  cache[key], ttls[key], codes[key] = next, ttl, code
end
local gnext, gttl -- next states of the current request's checks, for requests of several checks
local out = { now }
local ai, first, all = 2 + 4 * nspecs, 1, true
for i = 1, n do
  local si, cost = tonumber(ARGV[ai]), tonumber(ARGV[ai + 1])
  ai = ai + 2
  local last = true
  if si ~= nil and si < 0 then si, last = -si, false end
  local sp = specs[si]
  if sp == nil or cost == nil then return redis.error_reply('ERR keel: malformed check ' .. i) end
  local code, key = sp.code, KEYS[i]
  local state = key
  if D[code] then
    state = cache[key]
    if state == nil then
      local v = stored[i]
      if v then state = D[code](v) end
    end
  end
  local allowed, remaining, reset, retry, next, ttl = A[code](sp, state, now, cost)
  local o = 4 * i - 2
  out[o], out[o + 1], out[o + 2], out[o + 3] = allowed, remaining, reset, retry
  if first == i and last then
    -- a request of one check: the common case
    if allowed == 1 then commit(key, sp, cost, next, ttl) end
    first = i + 1
  else
    if gnext == nil then gnext, gttl = {}, {} end
    if allowed == 0 then all = false end
    gnext[i], gttl[i] = next, ttl
    if last then
      if all then
        local gi = 2 + 4 * nspecs + 2 * (first - 1)
        for c = first, i do
          commit(KEYS[c], specs[math.abs(tonumber(ARGV[gi]))], tonumber(ARGV[gi + 1]), gnext[c], gttl[c])
          gi = gi + 2
        end
      end
      first, all = i + 1, true
    end
  end
end
for w = 1, ndirty do
  local key = dirty[w]
  redis.call('SET', key, E[codes[key]](cache[key]), 'PX', ceil_div(ttls[key], 1000))
end
return out
