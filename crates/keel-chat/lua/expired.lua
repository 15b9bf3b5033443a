-- Clients whose presence lapsed and whose node is not alive. Looks at lapsed presence in
-- pages of 200, at most ARGV[2] entries in all, and returns at most ARGV[1] ids.
local now = now_ms()
local limit, scan_max = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, alive = {}, {}
local offset = 0
while #out < limit and offset < scan_max do
  local ids = redis.call('ZRANGEBYSCORE', B .. 'presence', '-inf', now, 'LIMIT', offset, 200)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local node = string.format('%d', math.floor(tonumber(id) / 4294967296))
    local a = alive[node]
    if a == nil then
      local s = redis.call('ZSCORE', B .. 'nodes', node)
      a = (s and tonumber(s) > now) or false
      alive[node] = a
    end
    if not a then
      out[#out + 1] = id
      if #out >= limit then break end
    end
  end
  offset = offset + #ids
end
return out
