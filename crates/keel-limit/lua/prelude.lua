-- prelude.lua: shared helpers for every rate-limit script.
-- Each algorithm file registers, under its code:
--   A[code] = function(spec, state, now, cost) -> allowed (1/0), remaining, reset_after_us,
--             retry_after_us (-1 = never), and when allowed the next state and how long it
--             matters (µs);
--   D[code] / E[code]: decode / encode its state, one compact string in one key (read by one
--             MGET per call, written by one PSETEX per touched key and call; E formats with
--             '%d', which Redis's Lua 5.1 prints through a 64-bit long: exact for these numbers);
--   P[code] (optional): numbers derived from a spec once per call.
-- The sliding log keeps a sorted set instead: it has no D/E, receives the key as `state`, and
-- C[code] writes its commit at once.
-- All numbers are integers below 2^52, so Lua's doubles compute them exactly; the Rust twin is
-- keel-limit/src/algorithm.rs and tests/lua_agreement.rs checks that the two agree.
local A, D, E, P, C = {}, {}, {}, {}, {}
local floor, max, min = math.floor, math.max, math.min
local fmt = string.format
local function ceil_div(a, b) return floor((a + b - 1) / b) end
