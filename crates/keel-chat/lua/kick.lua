-- An op removes a member; returns the members before the kick. ARGV: by, target, folded name
local by, target, fold = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', B .. 'ch:' .. fold) == 0 then
  return {'NoSuchChannel'}
end
local mk = B .. 'chm:' .. fold
local p = redis.call('HGET', mk, by)
if not p then
  return {'NotOnChannel'}
end
if not has_flag(p, 'o') then
  return {'ChanOpNeeded'}
end
if redis.call('HEXISTS', mk, target) == 0 then
  return {'UserNotInChannel'}
end
local mem = member_list(fold)
remove_member(fold, target)
return {'OK', mem}
