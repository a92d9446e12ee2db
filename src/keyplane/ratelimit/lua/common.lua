-- Shared by every rate-limit script (prepended to each when the limiter loads them).
--
-- A counter is a list `...:log` of entries "<µs>" or "<µs>:<units>", oldest first, plus
-- `...:sum` holding their total. Times are Redis's own clock (TIME), in microseconds.

local function parse(e)
  local i = string.find(e, ':', 1, true)
  if i then
    return tonumber(string.sub(e, 1, i - 1)), tonumber(string.sub(e, i + 1))
  end
  return tonumber(e), 1
end

local function fmt(q, n)
  if n == 1 then return string.format('%.0f', q) end
  return string.format('%.0f:%.0f', q, n)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Drop the entries at or before cutoff; return the units still counted, whether the sum key
-- must be rewritten, and whether it was there (it then has the log's TTL). A sum key lost apart
-- from its log is rebuilt from the log.
local function load(log, sum, cutoff)
  local total = tonumber(redis.call('GET', sum))
  local had = total ~= nil
  local dirty = false
  while true do
    local e = redis.call('LINDEX', log, 0)
    if not e then
      return 0, had, had
    end
    local q, n = parse(e)
    if q > cutoff then break end
    redis.call('LPOP', log)
    dirty = true
    if total then total = total - n end
  end
  if not total then
    total = 0
    for _, e in ipairs(redis.call('LRANGE', log, 0, -1)) do
      local _, n = parse(e)
      total = total + n
    end
    dirty = true
  end
  return total, dirty, had
end

-- Append n units at time q and return the newest entry's time, and whether it is new; a q not
-- after the newest entry merges into it (keeps the log sorted and only ever makes units count
-- longer).
local function add(log, q, n)
  local tail = redis.call('LINDEX', log, -1)
  if tail then
    local tq, tn = parse(tail)
    if q <= tq then
      redis.call('LSET', log, -1, fmt(tq, tn + n))
      return tq, false
    end
  end
  redis.call('RPUSH', log, fmt(q, n))
  return q, true
end

local function newest(log)
  local tail = redis.call('LINDEX', log, -1)
  if tail then
    local q = parse(tail)
    return q
  end
  return nil
end

-- Write the total back and expire both keys when the newest entry (at time last) leaves the
-- window. `keep`: the sum key is there and the newest entry is the one it was last stored with,
-- so both keys already expire at the right time (the expiry is absolute: last + window).
local function store(log, sum, total, last, window, now, keep)
  if total <= 0 then
    redis.call('DEL', log, sum)
    return
  end
  if keep then
    redis.call('SET', sum, total, 'KEEPTTL')
    return
  end
  local ttl = math.ceil((last + window - now) / 1000) + 1
  redis.call('SET', sum, total, 'PX', ttl)
  redis.call('PEXPIRE', log, ttl)
end

-- The time of the entry whose departure takes `excess` units out of the window. Each entry holds
-- at least one unit, so the first `excess` entries are enough.
local function release(log, excess)
  local seen = 0
  for _, e in ipairs(redis.call('LRANGE', log, 0, excess - 1)) do
    local q, n = parse(e)
    seen = seen + n
    if seen >= excess then return q end
  end
  error('rate-limit log ' .. log .. ' holds less than its sum')
end

-- Remember that every admission and charge of the replica up to `seq` is counted here.
local function saw(key, seq, ttl)
  local seen = tonumber(redis.call('GET', key))
  if not seen or seen < seq then
    redis.call('SET', key, seq, 'PX', ttl)
  else
    redis.call('PEXPIRE', key, ttl)
  end
end
