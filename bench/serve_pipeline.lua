--- The trivial pipeline of the serve benchmark: one task adding 1.
local tide = require "tide"

local p = tide.pipeline "serve-bench"
p:task("inc", function(x) return x + 1 end)
return p
