--- Native tasks: a C function (examples/native/dedup.c) computes each
-- record's deduplication key on the worker threads; the loop thread marks
-- the records whose content was seen before.
--
--   make && build/tide run examples/native/dedup.lua --input examples/native/records.jsonl
local tide = require "tide"

local p = tide.pipeline "dedup"

-- The content without the id: two records are duplicates when it is equal.
p:task("content", function(record)
    local c = {}
    for k, v in pairs(record) do
        if k ~= "id" then c[k] = v end
    end
    return tide.json.object(c)
end)

-- libdedup.so is built by make next to this file.
p:task("key", { after = "content", kind = "native", native = "libdedup.so:dedup_key" })

local first_of = {} -- key -> id of the first record with it (loop thread)

p:task("mark", { after = "key" }, function(k, ctx)
    local first = first_of[k.key]
    if not first then first_of[k.key] = ctx.id end
    return { key = k.key, duplicate_of = first }
end)

return p
