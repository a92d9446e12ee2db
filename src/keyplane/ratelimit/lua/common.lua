-- Shared by every rate-limit script (prepended to each when the limiter loads them).
--
-- A counter is a list `...:log` of entries, oldest first, each the MessagePack integers <µs> and
-- <units> one after the other, plus a string `...:sum` of six such integers: the log's total,
-- its length, its oldest entry (µs, units) and its newest (µs, units), so that reading a counter
-- is one GET and the log is touched only to change it. MessagePack, not text: cmsgpack reads and
-- writes numbers ~10x faster than string.match and string.format. Times are Redis's own clock
-- (TIME), in microseconds. The log is the truth: a sum lost, or found out of step with its log
-- (the log lost apart from it), is rebuilt from the log.

local parse, fmt = cmsgpack.unpack, cmsgpack.pack

-- A counter as the scripts hold it: an array (a table with named fields costs twice as much to
-- make, and a decision makes one per limit), indexed by these.
local LOG, SUM, CUTOFF, TOTAL, LENGTH, OLDEST, FIRST, NEWEST, LAST, DIRTY, HAD =
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Counter c from its log alone: drop the entries at or before c[CUTOFF], add up the rest. Its
-- sum must then be written (c[DIRTY]), with a new TTL (c[HAD] false), unless neither key was.
local function rebuild(c)
  local entries = redis.call('LRANGE', c[LOG], 0, -1)
  c[DIRTY] = c[HAD] or #entries > 0
  local total, first, q, n = 0, nil, nil, nil
  for i, e in ipairs(entries) do
    q, n = parse(e)
    if q > c[CUTOFF] then
      if not first then
        first, c[OLDEST], c[FIRST] = i, q, n
      end
      total = total + n
    end
  end
  if not first then
    if #entries > 0 then redis.call('DEL', c[LOG]) end
    c[TOTAL], c[LENGTH], c[NEWEST] = 0, 0, nil
  else
    if first > 1 then redis.call('LTRIM', c[LOG], first - 1, -1) end
    c[TOTAL], c[LENGTH], c[NEWEST], c[LAST] = total, #entries - first + 1, q, n
  end
  c[HAD] = false
  return c
end

-- The counter at keys log and sum, its entries at or before cutoff dropped: a table of its total,
-- length, oldest entry (time and units: oldest, first), newest (newest, last), whether its sum
-- must be rewritten (dirty) and whether the sum was there with the right TTL (had).
local function load(log, sum, cutoff)
  local c = {log, sum, cutoff, 0, 0, 0, 0, false, 0, false, false}
  local v = redis.call('GET', sum)
  if not v then return rebuild(c) end
  c[HAD] = true
  c[TOTAL], c[LENGTH], c[OLDEST], c[FIRST], c[NEWEST], c[LAST] = parse(v)
  if not c[LAST] then return rebuild(c) end
  while c[OLDEST] <= cutoff do
    local e = redis.call('LPOP', log)
    if not e or e ~= fmt(c[OLDEST], c[FIRST]) then  -- packs as written: compares as bytes
      if e then redis.call('LPUSH', log, e) end
      return rebuild(c)
    end
    c[TOTAL], c[LENGTH], c[DIRTY] = c[TOTAL] - c[FIRST], c[LENGTH] - 1, true
    if c[LENGTH] == 0 then
      c[NEWEST] = nil
      break
    end
    e = redis.call('LINDEX', log, 0)
    if not e then return rebuild(c) end
    c[OLDEST], c[FIRST] = parse(e)
  end
  return c
end

-- Add n units at time q to counter c; return whether they made a new newest entry. A q not after
-- the newest entry merges into it (keeps the log sorted and only ever makes units count longer).
local function add(c, q, n)
  if c[NEWEST] and q <= c[NEWEST] then
    if not redis.pcall('LSET', c[LOG], -1, fmt(c[NEWEST], c[LAST] + n)).err then
      if c[LENGTH] == 1 then c[FIRST] = c[LAST] + n end
      c[TOTAL], c[LAST], c[DIRTY] = c[TOTAL] + n, c[LAST] + n, true
      return false
    end
    rebuild(c)  -- the log is gone: what it held is lost, as a lost log's entries always are
  end
  if redis.call('RPUSH', c[LOG], fmt(q, n)) ~= c[LENGTH] + 1 then
    rebuild(c)  -- the new entry is in the log: the rebuilt counter holds it
    return true
  end
  if c[LENGTH] == 0 then c[OLDEST], c[FIRST] = q, n end
  c[TOTAL], c[LENGTH], c[NEWEST], c[LAST], c[DIRTY] = c[TOTAL] + n, c[LENGTH] + 1, q, n, true
  return true
end

-- Write counter c's sum back and expire both keys when the newest entry leaves the window.
-- `keep`: the sum key is there and its newest entry is the one it was last stored with, so both
-- keys already expire at the right time (the expiry is absolute: newest + window).
local function store(c, window, now, keep)
  if c[TOTAL] <= 0 then
    redis.call('DEL', c[LOG], c[SUM])
    return
  end
  local v = fmt(c[TOTAL], c[LENGTH], c[OLDEST], c[FIRST], c[NEWEST], c[LAST])
  if keep then
    redis.call('SET', c[SUM], v, 'KEEPTTL')
    return
  end
  local ttl = math.ceil((c[NEWEST] + window - now) / 1000) + 1
  redis.call('SET', c[SUM], v, 'PX', ttl)
  redis.call('PEXPIRE', c[LOG], ttl)
end

-- The time of the entry whose departure takes `excess` units out of counter c's window. Each
-- entry holds at least one unit, so the first `excess` entries are enough.
local function release(c, excess)
  if excess <= c[FIRST] then return c[OLDEST] end
  local seen = 0
  for _, e in ipairs(redis.call('LRANGE', c[LOG], 0, excess - 1)) do
    local q, n = parse(e)
    seen = seen + n
    if seen >= excess then return q end
  end
  error('rate-limit log ' .. c[LOG] .. ' holds less than its sum')
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
