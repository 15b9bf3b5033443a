-- Depths and counters of one queue (read only).
-- KEYS[1] = queue base
-- Returns queued, scheduled, running, dead, enqueued, succeeded, failed, dead_total, max_concurrency.
local base = KEYS[1]
local queued = 0
for _, p in ipairs(redis.call('ZRANGE', base .. 'prios', 0, 15)) do
  queued = queued + redis.call('LLEN', base .. 'ready:' .. p)
end
-- Chunk elements hold several jobs each (see fetch.lua).
for _, k in ipairs(redis.call('HVALS', base .. 'cq')) do queued = queued + tonumber(k) end
-- (`crun`: chunk jobs running, leased per piece, see compact.lua.)
local s = redis.call('HMGET', base .. 'stats', 'enqueued', 'succeeded', 'failed', 'dead', 'crun')
return {
  queued,
  redis.call('ZCARD', base .. 'scheduled'),
  -- running: leases held per batch (less the sentinel field of `held`, see fetch.lua), plus
  -- any written before batch leases
  math.max(redis.call('HLEN', base .. 'held') - 1, 0) + redis.call('ZCARD', base .. 'inflight')
    + math.max(tonumber(s[5] or '0') or 0, 0),
  redis.call('ZCARD', base .. 'dead'),
  tonumber(s[1] or '0'), tonumber(s[2] or '0'), tonumber(s[3] or '0'), tonumber(s[4] or '0'),
  tonumber(redis.call('HGET', base .. 'cfg', 'max_concurrency') or '0'),
}
