-- Every admission decision and charge a replica has in flight, in one call (auto-pipelining: the
-- limiter gathers the calls of one event-loop turn). Each runs as it would alone, in the order
-- given, so a decision sees every admission and charge before it, exactly as with one call each.
-- All of them take the batch's time (one TIME: Redis runs the script alone, so no other call
-- comes between them).
--
-- KEYS: epoch, seen (this replica's), then the log and sum keys of each operation in turn.
-- ARGV: one MessagePack array per operation: its kind ('a' acquire, 'c' charge), its number of
-- log and sum keys, the epoch it knows ('-': none), its seq, the seen TTL (ms) it asks for, then
-- its own fields (see acquire and charge). Integers arrive as numbers: nothing to parse.
-- Returns one reply per operation, in order: acquire's table or charge's 1; {-1} / -1 if Redis
-- lost the state the replica knew (nothing done).
-- Every admission and charge counted moves the replica's seen mark (once, at the end: to the
-- highest seq counted, for the longest TTL asked).
local epoch = redis.call('GET', KEYS[1])
local now = now_us()
local out = {}
local first = 3
local top, ttl = 0, 0
for i = 1, #ARGV do
  local op = cmsgpack.unpack(ARGV[i])
  local nk = op[2]
  local counted = false
  if op[1] == 'a' then
    if op[3] ~= epoch then
      out[i] = {-1}
    else
      out[i] = acquire(first, nk / 2, op, now)
      counted = out[i][1] == 1
    end
  elseif op[3] ~= epoch then
    out[i] = -1
  else
    charge(first, nk / 2, op, now)
    out[i] = 1
    counted = true
  end
  if counted then
    if op[4] > top then top = op[4] end
    if op[5] > ttl then ttl = op[5] end
  end
  first = first + nk
end
if top > 0 then saw(KEYS[2], top, ttl) end
return out
