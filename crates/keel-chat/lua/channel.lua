-- A channel's snapshot. ARGV: folded name
local s = snapshot(ARGV[1])
if not s then return {} end
return {s}
