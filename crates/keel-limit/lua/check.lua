-- check.lua: the driver. Evaluates a batch of requests in one call, each request a group of
-- checks that are admitted all together or not at all.
-- KEYS: one key per check, in order.
-- ARGV: request_count, then per request: check_count, then per check:
--       algorithm, limit, period_us, burst, cost.
-- Reply: now_us (from Redis TIME), then per check: allowed, capacity, remaining,
--        reset_after_us, retry_after_us (-1 = never).
if #KEYS > 512 then return redis.error_reply('ERR keel: at most 512 checks per call') end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = { now }
local ai, ki = 2, 1
local requests = tonumber(ARGV[1])
for _ = 1, requests do
  local n = tonumber(ARGV[ai]); ai = ai + 1
  local results, all = {}, true
  for c = 1, n do
    local algorithm = A[tonumber(ARGV[ai])]
    if algorithm == nil then return redis.error_reply('ERR keel: unknown algorithm ' .. tostring(ARGV[ai])) end
    local allowed, cap, remaining, reset, retry, commit = algorithm(KEYS[ki], now,
      tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2]), tonumber(ARGV[ai + 3]), tonumber(ARGV[ai + 4]))
    ai, ki = ai + 5, ki + 1
    results[c] = { allowed, cap, remaining, reset, retry, commit }
    if allowed == 0 then all = false end
  end
  for c = 1, n do
    local r = results[c]
    if all and r[6] then r[6]() end
    out[#out + 1] = r[1]; out[#out + 1] = r[2]; out[#out + 1] = r[3]
    out[#out + 1] = r[4]; out[#out + 1] = r[5]
  end
end
return out
