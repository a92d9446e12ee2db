-- One admission decision (a function of batch.lua): check every limit, record in every request
-- limit only if all pass.
--
-- keys: epoch, seen (this replica's), then log and sum of each request limit, then of each token
-- limit.
-- argv: known epoch, seq (of this admission), seen TTL (ms), number of request limits, then per
-- limit: limit, window (µs), bucket width (µs, 0 = exact).
-- Returns {-1} if Redis lost the state the replica knew (nothing done); otherwise {admitted 0|1,
-- then per limit: count after the decision, retry (µs, 0 unless this limit refuses), reset (µs)}.
local function acquire(keys, argv)
  if not same_epoch(keys[1], argv[1]) then return {-1} end
  local now = now_us()
  local nreq = tonumber(argv[4])
  local n = (#keys - 2) / 2
  local totals, dirty = {}, {}
  local out = {1}
  for i = 1, n do
    local log, sum, a = keys[2 * i + 1], keys[2 * i + 2], 3 * i + 2
    local limit, window = tonumber(argv[a]), tonumber(argv[a + 1])
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
    local log, sum, a = keys[2 * i + 1], keys[2 * i + 2], 3 * i + 2
    local window, width = tonumber(argv[a + 1]), tonumber(argv[a + 2])
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
  if out[1] == 1 then saw(keys[2], tonumber(argv[2]), tonumber(argv[3])) end
  return out
end
