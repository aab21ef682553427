--- W1 as a pipeline file (the shape of workload W1 in bench/tide.lua):
-- a chain of 4 trivial tasks, t0 -> t1 -> t2 -> t3, each `x + 1`.
-- bench/journal.sh runs it with `tide run`, without and with --journal.
local tide = require "tide"

local p = tide.pipeline "w1"
p:task("t0", function(x) return x + 1 end)
p:task("t1", { after = "t0" }, function(x) return x + 1 end)
p:task("t2", { after = "t1" }, function(x) return x + 1 end)
p:task("t3", { after = "t2" }, function(x) return x + 1 end)
return p
