-- Charge the tokens of a finished request to every token limit.
--
-- KEYS: epoch, seen (this replica's), then log and sum of each token limit.
-- ARGV: known epoch, seq (of this charge), seen TTL (ms), tokens, then per limit: window (µs),
-- bucket width (µs).
-- Returns -1 if Redis lost the state the replica knew (nothing charged), 1 otherwise.
if not same_epoch(KEYS[1], ARGV[1]) then return -1 end
local now = now_us()
local amount = tonumber(ARGV[4])
for i = 1, (#KEYS - 2) / 2 do
  local log, sum = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local window, width = tonumber(ARGV[2 * i + 3]), tonumber(ARGV[2 * i + 4])
  local total = load(log, sum, now - window)
  local last = add(log, (math.floor(now / width) + 1) * width, amount)
  store(log, sum, total + amount, last, window, now)
end
saw(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]))
return 1
