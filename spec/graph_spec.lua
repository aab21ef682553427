-- Specs of DAG export (tide.graph): DOT and Mermaid text, SVG and HTML.
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
        assert.has_error(function() graph.html(p) end)
    end)

    -- The boxes of an SVG drawing by task name: x, y, width.
    local function boxes(svg)
        local out = {}
        for name, x, y, w in svg:gmatch('data%-task="([^"]*)">\n<rect x="([%d.]+)" y="([%d.]+)" width="([%d.]+)"') do
            out[name] = { x = tonumber(x), y = tonumber(y), w = tonumber(w) }
        end
        return out
    end

    it("draws every task as a box and every edge left to right in SVG", function()
        local svg = graph.svg(sample())
        assert.matches("^<svg ", svg)
        assert.matches("</svg>$", svg)
        local b = boxes(svg)
        local n = 0
        for _ in pairs(b) do n = n + 1 end
        assert.equal(6, n)
        local edges = 0
        for from, to in svg:gmatch('class="edge[^"]*" d="[^"]*" marker%-end="url%(#arrow%)" '
                                   .. 'data%-from="([^"]*)" data%-to="([^"]*)"') do
            edges = edges + 1
            assert.is_true(b[from].x + b[from].w < b[to].x, from .. " -> " .. to .. " points left")
        end
        assert.equal(6, edges)
        -- Siblings share a column and do not overlap.
        assert.equal(b.a.x + b.a.w / 2, b.b.x + b.b.w / 2)
        assert.is_true(math.abs(b.a.y - b.b.y) >= 58)
        assert.matches('class="node map" id="t1"', svg)
        assert.matches('class="node router" id="t2"', svg)
        assert.matches('class="edge each"', svg)
        assert.matches('class="edge route"', svg)
        for i = 1, 6 do assert.matches('<text class="counts" id="c' .. i .. '"', svg) end
    end)

    it("escapes names for SVG and HTML, so a task name cannot inject markup", function()
        local p = tide.pipeline "<b>pipe</b>"
        p:task('<script>alert("x")</script>', function(x) return x end)
        local html = graph.html(p)
        assert.is_nil(html:find("<script>alert", 1, true))
        assert.is_nil(html:find("<b>pipe", 1, true))
        assert.is_truthy(html:find("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;", 1, true))
    end)

    it("writes a self-contained HTML page; the live one adds the dashboard", function()
        local offline = graph.html(sample())
        assert.matches("^<!DOCTYPE html>", offline)
        assert.is_truthy(offline:find(graph.svg(sample()), 1, true))
        -- No external resources: nothing is loaded from elsewhere.
        assert.is_nil(offline:find("src=", 1, true))
        assert.is_nil(offline:find("href=", 1, true))
        assert.is_nil(offline:find("<script", 1, true))
        local live = graph.html(sample(), { live = true })
        assert.is_nil(live:find("src=", 1, true))
        for _, id in ipairs({ "submit", "failures", "jobs-submitted", "status" }) do
            assert.is_truthy(live:find('id="' .. id .. '"', 1, true), id)
        end
        assert.is_truthy(live:find('fetch("/v1/stats"', 1, true))
    end)
end)
