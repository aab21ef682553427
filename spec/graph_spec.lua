-- Specs of DAG export (tide.graph): DOT and Mermaid text.
local tide = require "tide"
local graph = require "tide.graph"

local function sample()
    tide.limiter("graph-api", { concurrency = 2 })
    local p = tide.pipeline "sample"
    p:task("split", { map = true }, function(x) return x end)
    p:task("pick", { after = "split", route = true }, function() return "a" end)
    p:task("a", { after = "pick", limit = "graph-api", retry = 2, timeout = 5 }, function(x) return x end)
    p:task("b", { after = "pick" }, function(x) return x end)
    p:task("join", { after = { "a", "b" } }, function(x) return x end)
    p:task("all", { after = "join", gather = true, errors = "collect" }, function(x) return x end)
    return p
end

describe("tide.graph", function()
    it("writes DOT with every task, its shape and options, and every edge", function()
        local dot = graph.dot(sample())
        assert.matches('^digraph "sample" {\n', dot)
        for _, line in ipairs({
            '"split" [label="split\\nmap", shape=parallelogram];',
            '"pick" [label="pick\\nrouter", shape=diamond];',
            '"a" [label="a\\nlimit graph-api, retry 2, timeout 5s", shape=box];',
            '"all" [label="all\\ngather (collect)", shape=invtrapezium];',
            '"split" -> "pick" [style=bold, label="each"];',
            '"pick" -> "a" [style=dashed];',
            '"pick" -> "b" [style=dashed];',
            '"a" -> "join";',
            '"b" -> "join";',
            '"join" -> "all";',
        }) do
            assert.is_truthy(dot:find("  " .. line .. "\n", 1, true), "missing: " .. line)
        end
        local _, edges = dot:gsub(" %-> ", "")
        assert.equal(6, edges)
    end)

    it("escapes names for DOT and Mermaid", function()
        local p = tide.pipeline 'quo"te'
        p:task('say "hi"', function(x) return x end)
        assert.is_truthy(graph.dot(p):find('"say \\"hi\\"" [label="say \\"hi\\""', 1, true))
        assert.is_truthy(graph.mermaid(p):find('t1["say #quot;hi#quot;"]', 1, true))
    end)

    it("writes a Mermaid flowchart", function()
        local m = graph.mermaid(sample())
        assert.equal([[
flowchart LR
  t1[/"split<br/>map"/]
  t2{"pick<br/>router"}
  t3["a<br/>limit graph-api, retry 2, timeout 5s"]
  t4["b"]
  t5["join"]
  t6[\"all<br/>gather (collect)"/]
  t1 ==>|each| t2
  t2 -.-> t3
  t2 -.-> t4
  t3 --> t5
  t4 --> t5
  t5 --> t6
]], m)
    end)

    it("raises on a pipeline that does not compile", function()
        local p = tide.pipeline "broken"
        p:task("a", { after = "nope" }, print)
        assert.has_error(function() graph.dot(p) end)
    end)
end)
