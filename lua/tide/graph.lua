--- DAG export: a compiled pipeline as Graphviz DOT or Mermaid text, for
-- `tide graph PIPELINE.lua --format dot|mermaid`.
local M = {}

local format, concat, ipairs = string.format, table.concat, ipairs


-- What a task is, in a few words: its kind and the options that shape the
-- graph (map, gather, router, when, limiter, batch, retry, timeout).
local function describe(t)
    local parts = {}
    if t.kind ~= "async" then parts[#parts + 1] = t.kind end
    if t.map then parts[#parts + 1] = "map" end
    if t.gather then parts[#parts + 1] = t.errors == "collect" and "gather (collect)" or "gather" end
    if t.route then parts[#parts + 1] = "router" end
    if t.when then parts[#parts + 1] = "when" end
    if t.limit then parts[#parts + 1] = "limit " .. t.limit end
    if t.batch then parts[#parts + 1] = "batch " .. t.batch.size end
    if t.retry and t.retry.times > 0 then parts[#parts + 1] = "retry " .. t.retry.times end
    if t.timeout then parts[#parts + 1] = "timeout " .. t.timeout .. "s" end
    return parts
end
M.describe = describe


-- A DOT string literal.
local function dq(s)
    return '"' .. s:gsub('[\\"]', "\\%0"):gsub("\n", "\\n") .. '"'
end


--- The pipeline as a DOT digraph. Maps and routers are drawn as
-- parallelograms and diamonds; edges into a map's children are bold and
-- edges a router chooses between are dashed.
function M.dot(p)
    p:compile()
    local out = { "digraph " .. dq(p.name) .. " {",
                  "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];',
                  '  edge [fontname="Helvetica"];' }
    for _, t in ipairs(p.tasks) do
        local label = t.name
        local parts = describe(t)
        if #parts > 0 then label = label .. "\n" .. concat(parts, ", ") end
        local shape = t.route and "diamond" or t.map and "parallelogram"
            or t.gather and "invtrapezium" or "box"
        out[#out + 1] = format("  %s [label=%s, shape=%s];", dq(t.name), dq(label), shape)
    end
    for _, t in ipairs(p.tasks) do
        for _, si in ipairs(t.succs) do
            local attrs = {}
            if t.map then attrs[#attrs + 1] = 'style=bold, label="each"' end
            if t.route then attrs[#attrs + 1] = "style=dashed" end
            local a = #attrs > 0 and (" [" .. concat(attrs, ", ") .. "]") or ""
            out[#out + 1] = format("  %s -> %s%s;", dq(t.name), dq(p.tasks[si].name), a)
        end
    end
    out[#out + 1] = "}"
    return concat(out, "\n") .. "\n"
end


-- Mermaid node ids must be plain: t1, t2, ... with the name as the label.
local function mq(s)
    return '"' .. s:gsub('"', "#quot;") .. '"'
end


--- The pipeline as a Mermaid flowchart.
function M.mermaid(p)
    p:compile()
    local out = { "flowchart LR" }
    for i, t in ipairs(p.tasks) do
        local label = t.name
        local parts = describe(t)
        if #parts > 0 then label = label .. "<br/>" .. concat(parts, ", ") end
        local open, close = "[", "]"
        if t.route then open, close = "{", "}"
        elseif t.map then open, close = "[/", "/]"
        elseif t.gather then open, close = "[\\", "/]" end
        out[#out + 1] = format("  t%d%s%s%s", i, open, mq(label), close)
    end
    for i, t in ipairs(p.tasks) do
        for _, si in ipairs(t.succs) do
            local arrow = t.map and " ==>|each| " or t.route and " -.-> " or " --> "
            out[#out + 1] = format("  t%d%st%d", i, arrow, si)
        end
    end
    return concat(out, "\n") .. "\n"
end

return M
