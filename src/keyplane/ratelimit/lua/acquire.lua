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
  -- Per limit, out[3i - 1] holds its count and out[3i + 1] whether its sum must be rewritten
  -- (1), or its keys only expire (2), until the second pass puts the reply there.
  for i = 1, n do
    local log, sum, a = KEYS[first + 2 * i - 2], KEYS[first + 2 * i - 1], 3 * i + 4
    local limit, window = op[a], op[a + 1]
    local total, dirty, had = load(log, sum, now - window)
    out[3 * i - 1] = total
    out[3 * i + 1] = (dirty and 1 or 0) + (had and 2 or 0)
    local excess = total - limit
    if i <= nreq then excess = excess + 1 end
    local retry = 0
    if excess > 0 then
      out[1] = 0
      retry = release(log, excess) + window - now
    end
    out[3 * i] = retry
  end
  local admitted = out[1] == 1
  for i = 1, n do
    local log, sum, a = KEYS[first + 2 * i - 2], KEYS[first + 2 * i - 1], 3 * i + 4
    local window, width = op[a + 1], op[a + 2]
    local total, flags, last = out[3 * i - 1], out[3 * i + 1], nil
    local dirty, had = flags % 2 == 1, flags >= 2
    if admitted and i <= nreq then
      local q = now
      if width > 0 then q = (math.floor(now / width) + 1) * width end
      local pushed
      last, pushed = add(log, q, 1)
      total = total + 1
      store(log, sum, total, last, window, now, had and not pushed)
    elseif total > 0 then
      last = newest(log)
      if dirty then store(log, sum, total, last, window, now, had) end
    elseif dirty then
      redis.call('DEL', log, sum)
    end
    out[3 * i - 1] = total
    local reset = 0
    if last then reset = last + window - now end
    out[3 * i + 1] = reset
  end
  return out
end
