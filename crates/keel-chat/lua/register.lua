-- Claims a nick and records a client, atomically.
-- ARGV: id, folded nick, presence ttl ms, nick, user, host, realname, account (opt),
-- away (opt), invisible '0'|'1', oper '0'|'1', signon
local id, fold = ARGV[1], ARGV[2]
if redis.call('HSETNX', B .. 'nicks', fold, id) == 0 then
  return {'NickInUse'}
end
local key = B .. 'c:' .. id
redis.call('DEL', key)
redis.call('HSET', key, 'id', id, 'nick', ARGV[4], 'user', ARGV[5], 'host', ARGV[6],
  'realname', ARGV[7], 'inv', ARGV[10], 'oper', ARGV[11], 'signon', ARGV[12])
local account, away = opt(ARGV[8]), opt(ARGV[9])
if account then redis.call('HSET', key, 'account', account) end
if away then redis.call('HSET', key, 'away', away) end
if ARGV[10] == '1' then redis.call('SADD', B .. 'invis', id) end
if ARGV[11] == '1' then redis.call('SADD', B .. 'opers', id) end
save_record(id)
redis.call('ZADD', B .. 'presence', now_ms() + tonumber(ARGV[3]), id)
return {'OK'}
