-- Every admission decision and charge a replica has in flight, in one call (auto-pipelining: the
-- limiter gathers the calls of one event-loop turn). Each runs as it would alone, in the order
-- given, so a decision sees every admission and charge before it, exactly as with one call each.
--
-- KEYS: epoch, seen (this replica's), then the log and sum keys of each operation in turn.
-- ARGV: one string per operation, space-separated fields: its kind ('a' acquire, 'c' charge), its
-- number of log and sum keys, then its arguments (see acquire and charge; '-' is no epoch).
-- Returns one reply per operation, in order: acquire's table or charge's number.
local out = {}
local k = 3
for i = 1, #ARGV do
  local fields = string.gmatch(ARGV[i], '%S+')
  local kind, nk = fields(), tonumber(fields())
  local keys, argv = {KEYS[1], KEYS[2]}, {}
  for j = 1, nk do keys[j + 2] = KEYS[k + j - 1] end
  k = k + nk
  for f in fields do argv[#argv + 1] = f end
  if kind == 'a' then
    out[i] = acquire(keys, argv)
  else
    out[i] = charge(keys, argv)
  end
end
return out
