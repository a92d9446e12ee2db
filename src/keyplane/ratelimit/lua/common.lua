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

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Counter c from its log alone: drop the entries at or before c.cutoff, add up the rest. Its sum
-- must then be written (c.dirty), with a new TTL (c.had false), unless neither key was there.
local function rebuild(c)
  local entries = redis.call('LRANGE', c.log, 0, -1)
  c.dirty = c.had or #entries > 0
  local total, first, q, n = 0, nil, nil, nil
  for i, e in ipairs(entries) do
    q, n = parse(e)
    if q > c.cutoff then
      if not first then
        first, c.oldest, c.first = i, q, n
      end
      total = total + n
    end
  end
  if not first then
    if #entries > 0 then redis.call('DEL', c.log) end
    c.total, c.length, c.newest = 0, 0, nil
  else
    if first > 1 then redis.call('LTRIM', c.log, first - 1, -1) end
    c.total, c.length, c.newest, c.last = total, #entries - first + 1, q, n
  end
  c.had = false
  return c
end

-- The counter at keys log and sum, its entries at or before cutoff dropped: a table of its total,
-- length, oldest entry (time and units: oldest, first), newest (newest, last), whether its sum
-- must be rewritten (dirty) and whether the sum was there with the right TTL (had).
local function load(log, sum, cutoff)
  local c = {log = log, sum = sum, cutoff = cutoff, dirty = false, had = false}
  local v = redis.call('GET', sum)
  if not v then return rebuild(c) end
  c.had = true
  c.total, c.length, c.oldest, c.first, c.newest, c.last = parse(v)
  if not c.last then return rebuild(c) end
  while c.oldest <= cutoff do
    local e = redis.call('LPOP', log)
    if not e or e ~= fmt(c.oldest, c.first) then  -- packs as written: compares as bytes
      if e then redis.call('LPUSH', log, e) end
      return rebuild(c)
    end
    c.total, c.length, c.dirty = c.total - c.first, c.length - 1, true
    if c.length == 0 then
      c.newest = nil
      break
    end
    e = redis.call('LINDEX', log, 0)
    if not e then return rebuild(c) end
    c.oldest, c.first = parse(e)
  end
  return c
end

-- Add n units at time q to counter c; return whether they made a new newest entry. A q not after
-- the newest entry merges into it (keeps the log sorted and only ever makes units count longer).
local function add(c, q, n)
  if c.newest and q <= c.newest then
    if not redis.pcall('LSET', c.log, -1, fmt(c.newest, c.last + n)).err then
      if c.length == 1 then c.first = c.last + n end
      c.total, c.last, c.dirty = c.total + n, c.last + n, true
      return false
    end
    rebuild(c)  -- the log is gone: what it held is lost, as a lost log's entries always are
  end
  if redis.call('RPUSH', c.log, fmt(q, n)) ~= c.length + 1 then
    rebuild(c)  -- the new entry is in the log: the rebuilt counter holds it
    return true
  end
  if c.length == 0 then c.oldest, c.first = q, n end
  c.total, c.length, c.newest, c.last, c.dirty = c.total + n, c.length + 1, q, n, true
  return true
end

-- Write counter c's sum back and expire both keys when the newest entry leaves the window.
-- `keep`: the sum key is there and its newest entry is the one it was last stored with, so both
-- keys already expire at the right time (the expiry is absolute: newest + window).
local function store(c, window, now, keep)
  if c.total <= 0 then
    redis.call('DEL', c.log, c.sum)
    return
  end
  local v = fmt(c.total, c.length, c.oldest, c.first, c.newest, c.last)
  if keep then
    redis.call('SET', c.sum, v, 'KEEPTTL')
    return
  end
  local ttl = math.ceil((c.newest + window - now) / 1000) + 1
  redis.call('SET', c.sum, v, 'PX', ttl)
  redis.call('PEXPIRE', c.log, ttl)
end

-- The time of the entry whose departure takes `excess` units out of counter c's window. Each
-- entry holds at least one unit, so the first `excess` entries are enough.
local function release(c, excess)
  if excess <= c.first then return c.oldest end
  local seen = 0
  for _, e in ipairs(redis.call('LRANGE', c.log, 0, excess - 1)) do
    local q, n = parse(e)
    seen = seen + n
    if seen >= excess then return q end
  end
  error('rate-limit log ' .. c.log .. ' holds less than its sum')
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
