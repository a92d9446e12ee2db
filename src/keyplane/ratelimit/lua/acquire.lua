-- One admission decision: check every limit, record in every request limit only if all pass.
--
-- KEYS: epoch, seen (this replica's), then log and sum of each request limit, then of each token
-- limit.
-- ARGV: known epoch, seq (of this admission), seen TTL (ms), number of request limits, then per
-- limit: limit, window (µs), bucket width (µs, 0 = exact).
-- Returns {-1} if Redis lost the state the replica knew (nothing done); otherwise {admitted 0|1,
-- then per limit: count after the decision, retry (µs, 0 unless this limit refuses), reset (µs)}.
if not same_epoch(KEYS[1], ARGV[1]) then return {-1} end
local now = now_us()
local nreq = tonumber(ARGV[4])
local n = (#KEYS - 2) / 2
local totals, dirty = {}, {}
local out = {1}
for i = 1, n do
  local log, sum, a = KEYS[2 * i + 1], KEYS[2 * i + 2], 3 * i + 2
  local limit, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local total, d = load(log, sum, now - window)
  totals[i], dirty[i] = total, d
  local excess = total - limit
  if i <= nreq then excess = excess + 1 end
  local retry = 0
  if excess > 0 then
    out[1] = 0
    retry = release(log, excess) + window - now
  end
  out[3 * i] = retry
end
for i = 1, n do
  local log, sum, a = KEYS[2 * i + 1], KEYS[2 * i + 2], 3 * i + 2
  local window, width = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local total, last = totals[i], nil
  if out[1] == 1 and i <= nreq then
    local q = now
    if width > 0 then q = (math.floor(now / width) + 1) * width end
    last = add(log, q, 1)
    total = total + 1
    store(log, sum, total, last, window, now)
  elseif total > 0 then
    last = newest(log)
    if dirty[i] then store(log, sum, total, last, window, now) end
  elseif dirty[i] then
    redis.call('DEL', log, sum)
  end
  out[3 * i - 1] = total
  local reset = 0
  if last then reset = last + window - now end
  out[3 * i + 1] = reset
end
if out[1] == 1 then saw(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3])) end
return out
