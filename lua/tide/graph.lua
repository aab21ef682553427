--- DAG export: a compiled pipeline as Graphviz DOT, Mermaid text or a
-- self-contained HTML page with an SVG drawing, for `tide graph
-- PIPELINE.lua --format dot|mermaid|html`. The same page, with its live
-- parts, is the dashboard of `tide serve`.
local M = {}

local format, concat, ipairs, max = string.format, table.concat, ipairs, math.max


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


-- Text for HTML and SVG: the five characters that markup gives meaning.
local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }
local function esc(s)
    return (tostring(s):gsub("[&<>\"']", ESC))
end


-- Where each task goes: columns by longest path from a source (so every
-- edge points right), rows ordered by the mean row of the predecessors
-- (fewer crossings than declaration order), boxes sized to their text.
local NODE_H, ROW_GAP, COL_GAP, PAD, CHAR_W = 58, 22, 70, 20, 7.4

local function layout(p)
    local tasks = p.tasks
    local rank = {}
    local function rank_of(i)
        if rank[i] then return rank[i] end
        local r = 0
        for _, pi in ipairs(tasks[i].preds) do r = max(r, rank_of(pi) + 1) end
        rank[i] = r
        return r
    end
    local cols, ncols = {}, 0
    for i in ipairs(tasks) do
        local r = rank_of(i)
        cols[r] = cols[r] or {}
        cols[r][#cols[r] + 1] = i
        ncols = max(ncols, r + 1)
    end
    local row, w, label = {}, {}, {}
    for c = 0, ncols - 1 do
        local col = cols[c]
        local key = {}
        for k, i in ipairs(col) do
            local sum, n = 0, 0
            for _, pi in ipairs(tasks[i].preds) do sum, n = sum + row[pi], n + 1 end
            key[i] = n > 0 and sum / n or k
        end
        table.sort(col, function(a, b)
            if key[a] ~= key[b] then return key[a] < key[b] end
            return a < b
        end)
        for k, i in ipairs(col) do
            row[i] = k
            local t = tasks[i]
            label[i] = concat(describe(t), ", ")
            w[i] = max(#t.name, #label[i], 26) * CHAR_W + 2 * PAD
        end
    end
    local x, tallest = {}, 0
    local cx = PAD
    for c = 0, ncols - 1 do
        local cw = 0
        for _, i in ipairs(cols[c]) do cw = max(cw, w[i]) end
        tallest = max(tallest, #cols[c])
        for _, i in ipairs(cols[c]) do x[i] = cx + (cw - w[i]) / 2 end
        cx = cx + cw + COL_GAP
    end
    local y = {}
    for c = 0, ncols - 1 do
        local offset = (tallest - #cols[c]) * (NODE_H + ROW_GAP) / 2
        for k, i in ipairs(cols[c]) do y[i] = PAD + offset + (k - 1) * (NODE_H + ROW_GAP) end
    end
    return { x = x, y = y, w = w, label = label,
             width = max(cx - COL_GAP + PAD, 200),
             height = tallest * (NODE_H + ROW_GAP) - ROW_GAP + 2 * PAD }
end


--- The pipeline as an SVG drawing. Task i is the group with id "t<i>"
-- (its name in data-task); its text with class "counts" and id "c<i>"
-- is empty, for the dashboard to fill.
function M.svg(p)
    p:compile()
    local L = layout(p)
    local out = {
        format('<svg xmlns="http://www.w3.org/2000/svg" id="dag" width="%d" height="%d" '
               .. 'viewBox="0 0 %d %d" role="img" aria-label="%s">',
               L.width, L.height, L.width, L.height, esc("pipeline " .. p.name)),
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" '
            .. 'markerHeight="9" markerUnits="userSpaceOnUse" orient="auto">'
            .. '<path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
    }
    for i, t in ipairs(p.tasks) do
        for _, si in ipairs(t.succs) do
            local x1, y1 = L.x[i] + L.w[i], L.y[i] + NODE_H / 2
            local x2, y2 = L.x[si], L.y[si] + NODE_H / 2
            local mx = (x1 + x2) / 2
            local cls = t.map and "edge each" or t.route and "edge route" or "edge"
            out[#out + 1] = format('<path class="%s" d="M%.1f,%.1f C%.1f,%.1f %.1f,%.1f %.1f,%.1f" '
                                   .. 'marker-end="url(#arrow)" data-from="%s" data-to="%s"/>',
                                   cls, x1, y1, mx, y1, mx, y2, x2 - 2, y2,
                                   esc(t.name), esc(p.tasks[si].name))
            if t.map then
                out[#out + 1] = format('<text class="edge-label" x="%.1f" y="%.1f">each</text>',
                                       mx, (y1 + y2) / 2 - 4)
            end
        end
    end
    for i, t in ipairs(p.tasks) do
        local kind = t.route and "router" or t.map and "map" or t.gather and "gather" or "task"
        local x, y, w = L.x[i], L.y[i], L.w[i]
        out[#out + 1] = format('<g class="node %s" id="t%d" data-task="%s">', kind, i, esc(t.name))
        out[#out + 1] = format('<rect x="%.1f" y="%.1f" width="%.1f" height="%d" rx="%d"/>',
                               x, y, w, NODE_H, t.route and 16 or 5)
        out[#out + 1] = format('<text class="name" x="%.1f" y="%.1f">%s</text>',
                               x + PAD / 2, y + 18, esc(t.name))
        out[#out + 1] = format('<text class="desc" x="%.1f" y="%.1f">%s</text>',
                               x + PAD / 2, y + 33, esc(L.label[i]))
        out[#out + 1] = format('<text class="counts" id="c%d" x="%.1f" y="%.1f"></text>',
                               i, x + PAD / 2, y + 49)
        out[#out + 1] = "</g>"
    end
    out[#out + 1] = "</svg>"
    return concat(out, "\n")
end


local STYLE = [[
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 20px; align-items: baseline; }
header h1 { font-size: 18px; margin: 0; }
main { padding: 10px 20px; }
section { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 10px 14px; margin: 0 0 14px; }
h2 { font-size: 15px; margin: 0 0 8px; }
#dag-box { overflow: auto; }
.node rect { fill: #fff; stroke: #47607f; stroke-width: 1.5; }
.node.map rect { stroke-width: 3; }
.node.router rect { fill: #fff8e6; }
.node.gather rect { fill: #eef6ee; }
.node.busy rect { fill: #e3efff; }
.node.failing rect { stroke: #c0392b; }
.node text { font: 12px system-ui, sans-serif; fill: #1d2330; }
.node text.name { font-weight: 600; font-size: 13px; }
.node text.desc { fill: #5f6b7a; }
.node text.counts { font-family: ui-monospace, monospace; font-size: 11px; }
.edge { fill: none; stroke: #7b8796; stroke-width: 1.5; }
.edge.each { stroke-width: 3; }
.edge.route { stroke-dasharray: 5 4; }
.edge-label { font: 11px system-ui, sans-serif; fill: #5f6b7a; text-anchor: middle; }
marker path { fill: #7b8796; }
table { border-collapse: collapse; }
td, th { padding: 2px 12px 2px 0; text-align: left; }
textarea { width: 100%; max-width: 600px; height: 60px; font-family: ui-monospace, monospace; }
pre { background: #f3f4f6; padding: 6px; overflow: auto; max-height: 240px; margin: 4px 0; }
#failures li { margin-bottom: 8px; }
.muted { color: #5f6b7a; }
]]

-- The dashboard's script: polls /v1/stats, fills in the counts, the job
-- table, the schedules and the failures, and submits the form to /v1/jobs. Text from the
-- server only ever goes in through textContent.
local SCRIPT = [[
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var token = params.get("token");
  if (token) history.replaceState(null, "", location.pathname);
  function headers(extra) {
    var h = extra || {};
    if (token) h["Authorization"] = "Bearer " + token;
    return h;
  }
  var status = document.getElementById("status");
  function text(id, v) { document.getElementById(id).textContent = v; }
  function render(s) {
    s.tasks.forEach(function (t, k) {
      var c = document.getElementById("c" + (k + 1));
      if (!c) return;
      c.textContent = "run " + t.running + " \u00b7 ok " + t.done + " \u00b7 fail " +
        t.failed + " \u00b7 retry " + t.retrying;
      ["running", "done", "failed", "retrying"].forEach(function (f) {
        c.setAttribute("data-" + f, String(t[f]));
      });
      var g = document.getElementById("t" + (k + 1));
      g.classList.toggle("busy", t.running > 0);
      g.classList.toggle("failing", t.failed > 0);
    });
    ["submitted", "in_flight", "queued", "done", "failed", "cancelled"].forEach(function (f) {
      text("jobs-" + f, String(s.jobs[f]));
    });
    text("lag", (s.loop_lag * 1000).toFixed(1) + " ms");
    var vrows = document.getElementById("versions");
    vrows.textContent = "";
    (s.versions || []).forEach(function (v) {
      var tr = document.createElement("tr");
      [v.version + (v.current ? " (current)" : ""), v.submitted, v.in_flight, v.done, v.failed,
       v.cancelled].forEach(function (x) {
        var td = document.createElement("td");
        td.textContent = String(x);
        tr.appendChild(td);
      });
      vrows.appendChild(tr);
    });
    var rows = document.getElementById("schedules");
    rows.textContent = "";
    (s.schedules || []).forEach(function (sc) {
      var tr = document.createElement("tr");
      [sc.name, sc.expr, sc.tz, sc.catchup, sc.next || "never",
       sc.next_in === null ? "-" : sc.next_in.toFixed(1) + " s", sc.last || "-",
       sc.submitted + " / " + sc.skipped + " / " + sc.failed].forEach(function (v) {
        var td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      });
      rows.appendChild(tr);
    });
    var list = document.getElementById("failures");
    list.textContent = "";
    s.failures.forEach(function (f) {
      var li = document.createElement("li");
      var head = document.createElement("div");
      var e = f.error || {};
      head.textContent = "job " + f.id + ": task " + (e.task || "?") + " " + (e.code || "") +
        " after " + (e.attempts || 1) + " attempt(s): " + (e.message || "");
      li.appendChild(head);
      if (e.traceback) {
        var pre = document.createElement("pre");
        pre.className = "traceback";
        pre.textContent = e.traceback;
        li.appendChild(pre);
      }
      if (f.logs && f.logs.length) {
        var logs = document.createElement("pre");
        logs.className = "logs";
        logs.textContent = f.logs.map(function (l) {
          return "[" + l.task + " #" + l.attempt + "] " + l.line;
        }).join("\n");
        li.appendChild(logs);
      }
      list.appendChild(li);
    });
    if (!s.failures.length) {
      var none = document.createElement("li");
      none.className = "muted";
      none.textContent = "none";
      list.appendChild(none);
    }
  }
  function poll() {
    fetch("/v1/stats", { headers: headers(), cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (s) { status.textContent = "live"; render(s); })
      .catch(function (e) { status.textContent = "disconnected (" + e.message + ")"; })
      .then(function () { setTimeout(poll, 500); });
  }
  document.getElementById("submit").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var out = document.getElementById("submit-result");
    var input;
    try { input = JSON.parse(document.getElementById("input").value); }
    catch (e) { out.textContent = "The input is not JSON: " + e.message; return; }
    var body = { input: input };
    var id = document.getElementById("job-id").value.trim();
    if (id) body.id = id;
    fetch("/v1/jobs", { method: "POST", headers: headers({ "Content-Type": "application/json" }),
                        body: JSON.stringify(body) })
      .then(function (r) { return r.text().then(function (t) { out.textContent = r.status + " " + t; }); })
      .catch(function (e) { out.textContent = "failed: " + e.message; });
  });
  poll();
})();
]]


--- The pipeline as one self-contained HTML page (no external resources).
-- opts.live adds the dashboard: job counts, live per-task counts, recent
-- failures and a submit form, fed by /v1/stats and /v1/jobs of the
-- server that serves the page.
function M.html(p, opts)
    local live = opts and opts.live
    local out = {
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>tide: " .. esc(p.name) .. "</title>",
        "<style>" .. STYLE .. "</style></head><body>",
        "<header><h1>" .. esc(p.name) .. '</h1><span id="status">'
            .. (live and "connecting" or "offline picture (tide graph)") .. "</span></header>",
        "<main>",
        '<section><h2>Pipeline</h2><div id="dag-box">' .. M.svg(p) .. "</div></section>",
    }
    if live then
        out[#out + 1] = [[
<section><h2>Jobs</h2><table><tr>
<th>submitted</th><th>in flight</th><th>queued tasks</th><th>done</th><th>failed</th>
<th>cancelled</th><th>loop lag</th></tr><tr>
<td id="jobs-submitted">-</td><td id="jobs-in_flight">-</td><td id="jobs-queued">-</td><td id="jobs-done">-</td>
<td id="jobs-failed">-</td><td id="jobs-cancelled">-</td><td id="lag">-</td></tr></table></section>
<section><h2>Versions</h2><table><thead><tr><th>version (hash of the file)</th><th>submitted</th>
<th>in flight</th><th>done</th><th>failed</th><th>cancelled</th></tr></thead>
<tbody id="versions"></tbody></table></section>
<section><h2>Schedules</h2><table><thead><tr><th>name</th><th>cron</th><th>tz</th><th>catchup</th>
<th>next fire</th><th>in</th><th>last fire</th><th>submitted / skipped / failed</th></tr></thead>
<tbody id="schedules"></tbody></table></section>
<section><h2>Submit a job</h2><form id="submit">
<label>Input (JSON)<br><textarea id="input" name="input">null</textarea></label><br>
<label>Id (optional) <input id="job-id" name="id"></label>
<button type="submit" id="submit-button">Submit</button></form>
<pre id="submit-result"></pre></section>
<section><h2>Recent failures</h2><ol id="failures"><li class="muted">none</li></ol></section>]]
        out[#out + 1] = "<script>" .. SCRIPT .. "</script>"
    end
    out[#out + 1] = "</main></body></html>"
    return concat(out, "\n") .. "\n"
end

return M
