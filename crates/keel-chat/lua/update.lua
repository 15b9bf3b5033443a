-- Applies one change to a client's record; returns the record after it.
-- ARGV: id, what ('away'|'account'|'realname'|'inv'|'oper'), value (opt for away/account)
local id, what, v = ARGV[1], ARGV[2], ARGV[3]
local key = B .. 'c:' .. id
if redis.call('EXISTS', key) == 0 then
  return {'NoSuchNick'}
end
if what == 'away' or what == 'account' then
  local value = opt(v)
  if value then
    redis.call('HSET', key, what, value)
  else
    redis.call('HDEL', key, what)
  end
elseif what == 'realname' then
  redis.call('HSET', key, 'realname', v)
elseif what == 'inv' or what == 'oper' then
  redis.call('HSET', key, what, v)
  local set = B .. 'invis'
  if what == 'oper' then set = B .. 'opers' end
  if v == '1' then
    redis.call('SADD', set, id)
  else
    redis.call('SREM', set, id)
  end
end
return {'OK', pack(save_record(id))}
