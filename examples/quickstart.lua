--- Quickstart: price orders item by item, with fan-out, retries and a gather.
--
--   build/tide run examples/quickstart.lua --input examples/data/quickstart.jsonl
--
-- Each input line is an order:
--   {"id":"order-1","items":[{"sku":"A","qty":2,"price":3.5}, ...]}
-- `split` fans the order out into one child context per item (`map = true`),
-- `price` prices one item, `total` gathers the priced items back in item
-- order (`gather = true`), and `receipt` shapes the result of the order.
--
-- An item with `"flaky": N` stands for a price service that times out on
-- the first N calls: `price` fails its first N attempts and succeeds on the
-- next one (see the `[order-N price]` lines on stderr). An item with a
-- quantity below 1 is invalid: that is not worth retrying (`retry.on`), so
-- its order fails at once and its error record is printed instead of a
-- receipt (and `tide run` exits with 1).
local tide = require "tide"

local floor = math.floor

local p = tide.pipeline "quickstart"

-- One child context per item; ctx.map_index is the item's 1-based position.
p:task("split", { map = true }, function(order)
    return order.items
end)

p:task("price", {
    after = "split",
    retry = {
        times = 2, -- up to 3 attempts
        -- Seconds to wait before the next attempt; `attempt` is the number of
        -- the attempt that just failed.
        interval = function(ctx, attempt, err)
            local wait = 0.01 * attempt
            ctx.log(("attempt %d failed (%s); retrying in %.2f s"):format(attempt, err.message, wait))
            return wait
        end,
        -- Only transient failures are retried.
        on = function(err)
            return err.message:find("invalid item", 1, true) == nil
        end,
    },
}, function(item, ctx)
    if type(item.qty) ~= "number" or item.qty < 1 then
        error(("invalid item %s: quantity must be at least 1, got %s"):format(
            tostring(item.sku), tostring(item.qty)))
    end
    if item.flaky and ctx.attempt <= item.flaky then
        error(("price service timed out for %s (attempt %d)"):format(item.sku, ctx.attempt))
    end
    -- Money in whole cents, so that sums are exact.
    local cents = floor(item.price * 100 + 0.5) * item.qty
    return { sku = item.sku, qty = item.qty, cents = cents, attempts = ctx.attempt }
end)

-- Receives the outputs of `price` for every item, in item order.
p:task("total", { after = "price", gather = true }, function(priced)
    local cents, units, retries = 0, 0, 0
    for _, line in ipairs(priced) do
        cents = cents + line.cents
        units = units + line.qty
        retries = retries + line.attempts - 1
    end
    return { lines = #priced, units = units, cents = cents, retries = retries }
end)

p:task("receipt", { after = "total" }, function(t, ctx)
    return {
        order = ctx.id,
        lines = t.lines,
        units = t.units,
        total = t.cents / 100,
        retries = t.retries,
    }
end)

return p
