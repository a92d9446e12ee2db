-- One admission decision (a function of batch.lua): check every limit, record in every request
-- limit only if all pass.
--
-- KEYS[first], KEYS[first + 1]: the log and sum of the first limit, then those of each next one
-- (request limits first, then token limits); `now`: the batch's time (µs).
-- op: its fields from batch.lua; from op[6] on: number of request limits, then per limit: limit,
-- window (µs), bucket width (µs, 0 = exact).
-- Returns {admitted 0|1, then per limit: count after the decision, retry (µs, 0 unless this limit
-- refuses), reset (µs)}.
local function acquire(first, n, op, now)
  local nreq = op[6]
  local out = {1}
  local counters = {}
  for i = 1, n do
    local a = 3 * i + 4
    local limit, window = op[a], op[a + 1]
    local c = load(KEYS[first + 2 * i - 2], KEYS[first + 2 * i - 1], now - window)
    counters[i] = c
    local excess = c[TOTAL] - limit
    if i <= nreq then excess = excess + 1 end
    local retry = 0
    if excess > 0 then
      out[1] = 0
      retry = release(c, excess) + window - now
    end
    out[3 * i] = retry
  end
  local admitted = out[1] == 1
  for i = 1, n do
    local c, a = counters[i], 3 * i + 4
    local window, width = op[a + 1], op[a + 2]
    if admitted and i <= nreq then
      local q = now
      if width > 0 then q = (math.floor(now / width) + 1) * width end
      local pushed = add(c, q, 1)
      store(c, window, now, c[HAD] and not pushed)
    elseif c[DIRTY] then
      store(c, window, now, c[HAD])
    end
    out[3 * i - 1] = c[TOTAL]
    local reset = 0
    if c[NEWEST] then reset = c[NEWEST] + window - now end
    out[3 * i + 1] = reset
  end
  return out
end
