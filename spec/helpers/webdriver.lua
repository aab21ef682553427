--- A W3C WebDriver client over curl, enough to drive headless Chromium
-- through Debian's chromedriver: start, open, run a script, find, type,
-- click, quit. Every call that fails raises with the driver's message.
local proc = require "helpers.proc"
local json = require("tide.core").json

local q = proc.shquote
local M = {}
local Session = {}
Session.__index = Session

M.CHROMIUM, M.DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

-- The element reference key of the W3C protocol.
local ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


--- Why the browser cannot run here, or nil when it can.
function M.unavailable()
    for _, path in ipairs({ M.CHROMIUM, M.DRIVER }) do
        if not proc.slurp(path) then
            return path .. " is not installed (apt-get install chromium chromium-driver)"
        end
    end
    return nil
end


-- One request to the driver; returns the decoded "value".
local function call(base, method, path, body)
    local _, out = proc.curl(method, base .. path, body and json.encode(body) or "{}",
                             { "Content-Type: application/json" })
    out = out or ""
    local res = json.decode(out)
    if type(res) ~= "table" then
        error("webdriver: " .. method .. " " .. path .. ": not JSON: " .. out, 2)
    end
    local v = res.value
    if type(v) == "table" and v.error then
        error("webdriver: " .. method .. " " .. path .. ": " .. v.error .. ": " .. tostring(v.message), 2)
    end
    return v
end


--- Starts chromedriver on a free loopback port and a headless Chromium
-- session in it.
function M.start()
    local log = os.tmpname()
    local h = io.popen("env -u LD_PRELOAD " .. M.DRIVER .. " --port=0 >" .. q(log) .. " 2>&1 & echo $!")
    local pid = h:read("*l")
    h:close()
    local port
    for _ = 1, 100 do
        port = (proc.slurp(log) or ""):match("started successfully on port (%d+)")
        if port then break end
        os.execute("sleep 0.05")
    end
    if not port then
        os.execute("kill " .. pid .. " 2>/dev/null")
        error("chromedriver did not start: " .. (proc.slurp(log) or ""))
    end
    local base = "http://127.0.0.1:" .. port
    local ok, v = pcall(call, base, "POST", "/session", {
        capabilities = { alwaysMatch = {
            browserName = "chrome",
            ["goog:chromeOptions"] = {
                binary = M.CHROMIUM,
                args = { "--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--disable-background-networking",
                         "--no-first-run", "--window-size=1200,900" },
            },
        } },
    })
    if not ok then
        os.execute("kill " .. pid .. " 2>/dev/null")
        os.remove(log)
        error(v, 2)
    end
    return setmetatable({ pid = pid, log = log, base = base .. "/session/" .. v.sessionId,
                          driver = base }, Session)
end

function Session:open(url) return call(self.base, "POST", "/url", { url = url }) end

--- Runs `script` (a function body: it may `return` a value) in the page.
function Session:eval(script, ...)
    return call(self.base, "POST", "/execute/sync", { script = script, args = json.array({ ... }) })
end

function Session:find(css)
    return call(self.base, "POST", "/element", { using = "css selector", value = css })[ELEMENT]
end

function Session:clear(el) return call(self.base, "POST", "/element/" .. el .. "/clear") end
function Session:type(el, text) return call(self.base, "POST", "/element/" .. el .. "/value", { text = text }) end
function Session:click(el) return call(self.base, "POST", "/element/" .. el .. "/click") end

--- Evaluates `script` until it returns something truthy (within
-- `timeout` seconds, 10 by default); returns that, or nil and the last
-- value when time ran out.
function Session:wait(script, timeout)
    local v
    for _ = 1, (timeout or 10) * 10 do
        v = self:eval(script)
        if v and v ~= json.null then return v end
        os.execute("sleep 0.1")
    end
    return nil, v
end

--- Saves a PNG of the window to `path` (for a person to look at).
function Session:screenshot(path)
    local b64 = call(self.base, "GET", "/screenshot")
    local tmp = os.tmpname()
    proc.write(tmp, b64)
    os.execute("base64 -d " .. q(tmp) .. " > " .. q(path))
    os.remove(tmp)
end

--- Ends the session and the driver.
function Session:quit()
    pcall(call, self.base, "DELETE", "")
    os.execute("kill " .. self.pid .. " 2>/dev/null")
    os.remove(self.log)
end

return M
