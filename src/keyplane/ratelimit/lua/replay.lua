-- A replica tells Redis what it admitted and charged that Redis does not know, before deciding
-- through Redis again. Also its health probe and its first call (which learns the epoch).
--
-- Idempotent: each entry carries the replica's sequence number, and `seen` holds the highest one
-- Redis has counted; entries at or below it are skipped, so a retried call changes nothing.
--
-- KEYS: epoch, seen (this replica's), roster, then log and sum of each counter to replay into.
-- ARGV: known epoch ('' when the replica knows none), a fresh epoch (used if Redis holds none),
-- replica id, complete (1 if the entries are every one the replica holds, 0 if only those after
-- its last acknowledged sequence number), top (the replica's newest sequence number), seen TTL
-- (ms), roster TTL (ms), then per counter: window (µs), bucket width (µs, 0 = exact), entry count,
-- then per entry: age (µs before now), seq, units.
-- Returns {status, epoch, roster size, units replayed}: status 0 = done; 1 = Redis lost the state
-- the replica knew, call again with complete = 1 (nothing was done).
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  -- An empty Redis (first start, restart without persistence): a new epoch, a new roster.
  epoch = ARGV[2]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[3])
end
local lost = ARGV[1] ~= '' and epoch ~= ARGV[1]
if lost and ARGV[4] ~= '1' then return {1, epoch, 0, 0} end
local now = now_us()
local seen = tonumber(redis.call('GET', KEYS[2])) or 0
local replayed = 0
local a = 8
for i = 1, (#KEYS - 3) / 2 do
  local log, sum = KEYS[2 * i + 2], KEYS[2 * i + 3]
  local window, width, count = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local cutoff = now - window
  -- The entries to add, oldest first (the replica sends them in that order).
  local times, units = {}, {}
  for j = 0, count - 1 do
    local age, seq, n = tonumber(ARGV[a + 3 * j]), tonumber(ARGV[a + 3 * j + 1]),
      tonumber(ARGV[a + 3 * j + 2])
    local q = now - age
    if width > 0 then q = (math.floor(q / width) + 1) * width end
    if seq > seen and q > cutoff then
      local k = #times
      if k > 0 and q <= times[k] then
        units[k] = units[k] + n
      else
        times[k + 1], units[k + 1] = q, n
      end
      replayed = replayed + n
    end
  end
  a = a + 3 * count
  if #times > 0 then
    -- Merge with what Redis holds (both sorted), dropping what has left the window.
    local merged = {}
    local total, last = 0, nil
    local function push(q, n)
      if q <= cutoff then return end
      total = total + n
      if last and q == last then
        local _, m = parse(merged[#merged])
        merged[#merged] = fmt(q, m + n)
      else
        merged[#merged + 1] = fmt(q, n)
        last = q
      end
    end
    local held = redis.call('LRANGE', log, 0, -1)
    local h, r = 1, 1
    while h <= #held or r <= #times do
      local hq, hn
      if h <= #held then hq, hn = parse(held[h]) end
      if r > #times or (hq and hq <= times[r]) then
        push(hq, hn)
        h = h + 1
      else
        push(times[r], units[r])
        r = r + 1
      end
    end
    redis.call('DEL', log)
    for s = 1, #merged, 1000 do
      redis.call('RPUSH', log, unpack(merged, s, math.min(s + 999, #merged)))
    end
    local c = {log, sum, 0, total, #merged, 0, 0, 0, 0, true, false}
    c[OLDEST], c[FIRST] = parse(merged[1])
    c[NEWEST], c[LAST] = parse(merged[#merged])
    store(c, window, now, false)
  end
end
local top = tonumber(ARGV[5])
if top > 0 then saw(KEYS[2], top, tonumber(ARGV[6])) end
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[7]))
return {0, epoch, redis.call('SCARD', KEYS[3]), replayed}
