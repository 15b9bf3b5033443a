-- Changes a client's nick; returns the record before the change.
-- ARGV: id, new folded nick, new nick
local id, fold = ARGV[1], ARGV[2]
local owner = redis.call('HGET', B .. 'nicks', fold)
if owner and owner ~= id then
  return {'NickInUse'}
end
local c = client(id)
if not c then
  return {'NoSuchNick'}
end
local old = string.lower(c[2])
if redis.call('HGET', B .. 'nicks', old) == id then
  redis.call('HDEL', B .. 'nicks', old)
end
redis.call('HSET', B .. 'nicks', fold, id)
redis.call('HSET', B .. 'c:' .. id, 'nick', ARGV[3])
save_record(id)
return {'OK', pack(c)}
