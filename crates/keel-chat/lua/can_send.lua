-- Checks that a client may speak in a channel (+n, +b unless op or voice). Permission only:
-- each node delivers from its own index of local members. ARGV: id, folded name
local id, fold = ARGV[1], ARGV[2]
local ck = B .. 'ch:' .. fold
if redis.call('EXISTS', ck) == 0 then
  return {'NoSuchChannel'}
end
local p = redis.call('HGET', B .. 'chm:' .. fold, id)
if not p and redis.call('HGET', ck, 'n') == '1' then
  return {'CannotSend'}
end
if not (has_flag(p, 'o') or has_flag(p, 'v')) then
  local c = client(id)
  if c and is_banned(fold, c) then
    return {'CannotSend'}
  end
end
return {'OK'}
