--- The pipeline examples/embed/host.c runs: counts the words of a text,
-- sleeping a little so that the host's loop has to step the engine.
local tide = require "tide"

local p = tide.pipeline "wordcount"

p:task("words", function(text)
    if type(text) ~= "string" then error("expected a text, got " .. type(text)) end
    local words = {}
    for w in text:gmatch("%S+") do words[#words + 1] = w end
    return words
end)

p:task("count", { after = "words" }, function(words)
    tide.sleep(0.01)
    local counts = {}
    for _, w in ipairs(words) do counts[w] = (counts[w] or 0) + 1 end
    return { words = #words, distinct = (function()
        local n = 0
        for _ in pairs(counts) do n = n + 1 end
        return n
    end)() }
end)

return p
