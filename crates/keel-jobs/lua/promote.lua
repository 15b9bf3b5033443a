-- Move due delayed and retrying jobs to their ready lists.
-- KEYS[1] = queue base; ARGV[1] = limit (bounded by the caller)
return promote_due(KEYS[1], now_ms(), tonumber(ARGV[1]))
