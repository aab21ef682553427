-- The dashboard in a real browser: `tide serve` on a free loopback port,
-- headless Chromium driven through chromedriver's WebDriver API. Skipped,
-- with the reason printed, only where Chromium is not installed.
local server = require "helpers.serve"
local webdriver = require "helpers.webdriver"

local why_not = webdriver.unavailable()

describe("the dashboard in headless Chromium", function()
    if why_not then
        io.stderr:write("dashboard_spec: skipped: ", why_not, "\n")
        pending("skipped: " .. why_not)
        return
    end

    local s, b
    setup(function()
        s = server.start(nil, "spec/fixtures/pipelines/dashboard.lua")
        b = webdriver.start()
    end)
    teardown(function()
        if b then b:quit() end
        if s then server.stop(s) end
    end)

    -- Counts shown in task `name`'s box, from its data attributes.
    local function counts_js(name, field)
        return "var g = document.querySelector('#dag .node[data-task=\"" .. name .. "\"]');"
            .. " var c = g && g.querySelector('text.counts');"
            .. " return c && c.getAttribute('data-" .. field .. "');"
    end

    -- Types a job into the form, submits it, and returns what it showed.
    local function submit(input)
        local box = b:find("#input")
        b:clear(box)
        b:type(box, input)
        b:eval("document.getElementById('submit-result').textContent = ''")
        b:click(b:find("#submit-button"))
        return b:wait("var t = document.getElementById('submit-result').textContent; return t || null")
    end

    it("draws the DAG and goes live", function()
        b:open(s.url .. "/")
        assert.equal("live", b:wait("var t = document.getElementById('status').textContent;"
            .. " return t == 'live' ? t : null"))
        local drawn = b:eval([[
            var out = {};
            document.querySelectorAll('#dag .node').forEach(function (g) {
                var r = g.querySelector('rect').getBBox();
                out[g.getAttribute('data-task')] = [r.x, r.y, r.width, r.height];
            });
            out.edges = document.querySelectorAll('#dag path.edge').length;
            return out;]])
        assert.equal(4, drawn.edges)
        for _, name in ipairs({ "fetch", "square", "half", "sum" }) do
            local r = drawn[name]
            assert.is_truthy(r, name .. " is not drawn")
            assert.is_true(r[3] > 0 and r[4] > 0, name .. " has no size")
        end
        -- fetch -> square/half -> sum: columns left to right.
        assert.is_true(drawn.fetch[1] < drawn.square[1] and drawn.square[1] < drawn.sum[1])
        assert.equal(drawn.square[1], drawn.half[1])
        assert.equal("0", b:eval(counts_js("sum", "done")))
    end)

    it("shows the pipeline version (the hash of its file) in the versions table", function()
        b:open(s.url .. "/")
        local hash = require("tide.core").xxh128(require("helpers.proc").slurp(
            "spec/fixtures/pipelines/dashboard.lua"))
        assert.equal(hash .. " (current)", b:wait("var td = document.querySelector('#versions td');"
            .. " return td ? td.textContent : null"))
    end)

    it("updates the live counts after a job is submitted through the form", function()
        -- fetch naps 3 s: long enough for a loaded machine's browser to
        -- poll the feed while it runs.
        assert.matches("^201 ", submit('{"n": 3, "sleep": 3}'))
        -- While fetch naps, the dashboard shows it running.
        assert.equal("1", b:wait("var v = (function () {" .. counts_js("fetch", "running")
            .. "})(); return v == '1' ? v : null", 10))
        assert.equal("1", b:wait("var v = (function () {" .. counts_js("sum", "done")
            .. "})(); return v == '1' ? v : null", 20))
        assert.equal("0", b:eval(counts_js("fetch", "running")))
        assert.equal("1", b:eval("return document.getElementById('jobs-done').textContent"))
    end)

    it("lists a failure with its traceback, and shows bad input in the form", function()
        assert.matches("^201 ", submit('{"n": 13}'))
        local text = b:wait([[
            var pre = document.querySelector('#failures li pre.traceback');
            return pre ? document.querySelector('#failures li').textContent : null]])
        assert.matches("task sum ETASK", text)
        assert.matches("unlucky thirteen", text)
        assert.matches("stack traceback", text)
        assert.equal("1", b:wait("var v = (function () {" .. counts_js("sum", "failed")
            .. "})(); return v == '1' ? v : null"))
        -- Garbage in the form: a clear message, nothing submitted.
        assert.matches("^The input is not JSON", submit("{oops"))
        assert.equal("2", b:eval("return document.getElementById('jobs-submitted').textContent"))
        -- A duplicate id comes back as the server's 409.
        assert.matches("^201 ", submit('{"n": 1}'))
        local box = b:find("#job-id")
        b:type(box, "twice")
        assert.matches("^201 ", submit('{"n": 1}'))
        assert.matches('^409 .*"EEXIST"', submit('{"n": 1}'))
        local shot = os.getenv("TIDE_DASHBOARD_PNG")
        if shot then b:screenshot(shot) end
    end)
end)
