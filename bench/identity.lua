--- The pipeline of the JSONL line of `make bench` (bench/jsonl.sh): one
-- task returning its input, so that a run of `tide run` over a file is
-- what tide costs to read, decode, schedule, encode and write each line.
local tide = require "tide"

local p = tide.pipeline "identity"
p:task("identity", function(x) return x end)
return p
