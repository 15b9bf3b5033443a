-- prelude.lua: shared helpers for every rate-limit script.
-- Each algorithm file registers `A[code] = function(key, now, limit, period, burst, cost)`
-- returning allowed (1/0), capacity, remaining, reset_after_us, retry_after_us (-1 = never),
-- and a function that stores the new state (nil when nothing changes).
-- All numbers are integers below 2^52, so Lua's doubles compute them exactly; the Rust twin is
-- keel-limit/src/algorithm.rs and tests/lua_agreement.rs checks that the two agree.
local A = {}
local floor = math.floor
local function ceil_div(a, b) return floor((a + b - 1) / b) end
local function fmt(n) return string.format('%.0f', n) end
local function pexpire(key, ttl_us) redis.call('PEXPIRE', key, ceil_div(math.max(ttl_us, 1), 1000)) end
