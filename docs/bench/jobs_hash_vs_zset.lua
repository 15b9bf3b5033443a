-- Single-call costs of a hash table against a skiplist zset (docs/bench/jobs.md, jobs-4):
-- redis-cli -p PORT --eval docs/bench/jobs_hash_vs_zset.lua   (private server: writes keys H, Z)
-- Without the first HSET (a field with an 80-byte value) H stays a listpack (< 512 fields).
local function now() local t = redis.call('TIME'); return tonumber(t[1]) * 1e6 + tonumber(t[2]) end
local N, R = 250, 200
local m, hp, zp = {}, {}, {}
for i = 1, N do
  m[i] = string.format('01KAZZZZZZZZZZZZZZZZZZ%04d|1', i)
  hp[2*i-1] = m[i]; hp[2*i] = '17'
  zp[2*i-1] = '1795657272973'; zp[2*i] = m[i]
end
redis.call('HSET', 'H', '', string.rep('x', 80))
local t0 = now()
for k = 1, R do redis.call('HSET', 'H', unpack(hp)) end
local t1 = now()
for k = 1, R do redis.call('HMGET', 'H', unpack(m)) end
local t2 = now()
redis.call('HDEL', 'H', unpack(m))
for k = 1, R do redis.call('HSET', 'H', unpack(hp)); redis.call('HDEL', 'H', unpack(m)) end
local t3 = now()
for k = 1, R do redis.call('ZADD', 'Z', unpack(zp)) end
local t4 = now()
for k = 1, R do redis.call('ZMSCORE', 'Z', unpack(m)) end
local t5 = now()
redis.call('ZREM', 'Z', unpack(m))
for k = 1, R do redis.call('ZADD', 'Z', unpack(zp)); redis.call('ZREM', 'Z', unpack(m)) end
local t6 = now()
local d = N * R
return {
  'hset(existing) ' .. (t1-t0)/d, 'hmget ' .. (t2-t1)/d, 'hset+hdel ' .. (t3-t2)/d,
  'zadd(existing) ' .. (t4-t3)/d, 'zmscore ' .. (t5-t4)/d, 'zadd+zrem ' .. (t6-t5)/d }
