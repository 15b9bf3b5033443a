-- Cancel a job that has not finished. A running job's worker learns it at its next heartbeat.
-- KEYS[1] = queue base; ARGV = id, retention_ms, recent_cap
-- Returns 'ok', 'missing', or the job's final state (a conflict).
local base = KEYS[1]
local id, retention, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local s = parse_st(redis.call('HGET', base .. 'st', id))
if not s then return 'missing' end
if s.st == 'succeeded' or s.st == 'dead' or s.st == 'cancelled' then return s.st end
-- A queued id stays in its ready list; fetch skips it since it is no longer 'queued'.
redis.call('ZREM', base .. 'scheduled', id)
redis.call('ZREM', base .. 'inflight', id)
s.st = 'cancelled'
local x = parse_t(redis.call('HGET', base .. 't', id))
x.fa = now
redis.call('HSET', base .. 'st', id, pack_st(s))
redis.call('HSET', base .. 't', id, pack_t(x))
redis.call('HSET', base .. 'err', id, 'cancelled')
redis.call('ZADD', base .. 'exp', now + retention, id)
redis.call('LPUSH', base .. 'recent', id)
redis.call('LTRIM', base .. 'recent', 0, cap - 1)
release_unique(base, id, s.uk)
return 'ok'
