-- Charge the tokens of a finished request to every token limit (a function of batch.lua).
--
-- keys: epoch, seen (this replica's), then log and sum of each token limit.
-- argv: known epoch, seq (of this charge), seen TTL (ms), tokens, then per limit: window (µs),
-- bucket width (µs).
-- Returns -1 if Redis lost the state the replica knew (nothing charged), 1 otherwise.
local function charge(keys, argv)
  if not same_epoch(keys[1], argv[1]) then return -1 end
  local now = now_us()
  local amount = tonumber(argv[4])
  for i = 1, (#keys - 2) / 2 do
    local log, sum = keys[2 * i + 1], keys[2 * i + 2]
    local window, width = tonumber(argv[2 * i + 3]), tonumber(argv[2 * i + 4])
    local total = load(log, sum, now - window)
    local last = add(log, (math.floor(now / width) + 1) * width, amount)
    store(log, sum, total + amount, last, window, now)
  end
  saw(keys[2], tonumber(argv[2]), tonumber(argv[3]))
  return 1
end
