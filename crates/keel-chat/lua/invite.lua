-- Records an invitation (checks membership and, under +i, op); returns the channel's ops.
-- ARGV: by, target, folded name
local by, target, fold = ARGV[1], ARGV[2], ARGV[3]
local ck, mk = B .. 'ch:' .. fold, B .. 'chm:' .. fold
if redis.call('EXISTS', ck) == 0 then
  return {'NoSuchChannel'}
end
local p = redis.call('HGET', mk, by)
if not p then
  return {'NotOnChannel'}
end
if redis.call('HGET', ck, 'i') == '1' and not has_flag(p, 'o') then
  return {'ChanOpNeeded'}
end
if redis.call('HEXISTS', mk, target) == 1 then
  return {'UserOnChannel'}
end
local ik = B .. 'chi:' .. fold
if redis.call('SCARD', ik) < 1000 then
  redis.call('SADD', ik, target)
end
local ops = {}
local flat = redis.call('HGETALL', mk)
for i = 1, #flat, 2 do
  if has_flag(flat[i + 1], 'o') then ops[#ops + 1] = flat[i] end
end
return {'OK', id_list(ops)}
