-- Replay a dead or cancelled job: fresh attempts, back in its ready list, no expiry.
-- KEYS[1] = queue base; ARGV = id
-- Returns 'ok', 'missing', or the job's state (a conflict).
local base = KEYS[1]
local id = ARGV[1]
local now = now_ms()
local s = parse_st(redis.call('HGET', base .. 'st', id))
if not s then return 'missing' end
if s.st ~= 'dead' and s.st ~= 'cancelled' then return s.st end
redis.call('ZREM', base .. 'dead', id)
redis.call('ZREM', base .. 'exp', id)
s.st = 'queued'
s.att = 0
local x = parse_t(redis.call('HGET', base .. 't', id))
x.ea = now
x.fa = ''
redis.call('HSET', base .. 'st', id, pack_st(s))
redis.call('HSET', base .. 't', id, pack_t(x))
make_ready(base, { [s.p] = { id } }, false)
if s.uk ~= '' then
  redis.call('SET', base .. 'uniq:' .. s.uk, id, 'NX')
end
return 'ok'
