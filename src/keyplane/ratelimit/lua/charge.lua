-- Charge the tokens of a finished request to every token limit (a function of batch.lua).
--
-- KEYS[first], KEYS[first + 1]: the log and sum of the first token limit, then those of each
-- next one; `now`: the batch's time (µs).
-- op: its fields from batch.lua; from op[6] on: tokens, then per limit: window (µs), bucket width
-- (µs).
local function charge(first, n, op, now)
  local amount = op[6]
  for i = 1, n do
    local window, width = op[2 * i + 5], op[2 * i + 6]
    local c = load(KEYS[first + 2 * i - 2], KEYS[first + 2 * i - 1], now - window)
    local pushed = add(c, (math.floor(now / width) + 1) * width, amount)
    store(c, window, now, c[HAD] and not pushed)
  end
end
