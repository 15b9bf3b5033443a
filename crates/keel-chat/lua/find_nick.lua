-- The record of the client owning a nick. ARGV: folded nick
local id = redis.call('HGET', B .. 'nicks', ARGV[1])
if not id then return {} end
local c = client(id)
if not c then return {} end
return {pack(c)}
