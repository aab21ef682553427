--- Memory workload: a 3-task pipeline that `make bench` runs with
-- `tide run` over millions of generated inputs from stdin.
local tide = require "tide"

local p = tide.pipeline "mem"
p:task("parse", function(x) return { n = x, sq = x * x } end)
p:task("score", { after = "parse" }, function(r) return r.sq % 97 + r.n % 13 end)
p:task("label", { after = "score" }, function(s) return s > 50 and "high" or "low" end)
return p
