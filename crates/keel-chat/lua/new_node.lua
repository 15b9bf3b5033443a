-- Hands out a node number never handed out before: INCR, but never at or below a node that
-- heartbeats (after Redis lost its data, live nodes' heartbeats restore the floor).
local seq = B .. 'nodeseq'
local n = redis.call('INCR', seq)
local top = redis.call('ZREVRANGE', B .. 'nodes', 0, 0)
if top[1] and tonumber(top[1]) >= n then
  n = tonumber(top[1]) + 1
  redis.call('SET', seq, n)
end
return n
