-- Clients sharing a channel with ARGV[1] (not itself), each once.
local id = ARGV[1]
local seen, out = {[id] = true}, {}
for _, ch in ipairs(redis.call('SMEMBERS', B .. 'cc:' .. id)) do
  for _, m in ipairs(members(ch)) do
    if not seen[m] then
      seen[m] = true
      out[#out + 1] = m
    end
  end
end
return id_list(out)
