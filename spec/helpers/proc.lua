--- Runs the tide binary (TIDE_BUILD/tide) as a real process for e2e specs.
local M = {}

M.build = os.getenv("TIDE_BUILD") or "build"
M.bin = M.build .. "/tide"


local function shquote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.shquote = shquote


local function slurp(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end
M.slurp = slurp


--- Runs `tide ARGS...` with optional stdin text. Returns
-- { code = exit code, stdout = text, stderr = text }.
function M.tide(args, stdin, env)
    local tmp = os.tmpname()
    local cmd = {}
    for k, v in pairs(env or {}) do cmd[#cmd + 1] = k .. "=" .. shquote(v) end
    cmd[#cmd + 1] = shquote(M.bin)
    for _, a in ipairs(args) do cmd[#cmd + 1] = shquote(a) end
    if stdin then
        local f = assert(io.open(tmp .. ".in", "wb"))
        f:write(stdin)
        f:close()
        cmd[#cmd + 1] = "<" .. shquote(tmp .. ".in")
    else
        cmd[#cmd + 1] = "</dev/null"
    end
    cmd[#cmd + 1] = ">" .. shquote(tmp .. ".out") .. " 2>" .. shquote(tmp .. ".err")
    local line = table.concat(cmd, " ") .. "; echo $? >" .. shquote(tmp .. ".rc")
    os.execute(line)
    local r = {
        code = tonumber(slurp(tmp .. ".rc")),
        stdout = slurp(tmp .. ".out") or "",
        stderr = slurp(tmp .. ".err") or "",
    }
    for _, ext in ipairs({ "", ".in", ".out", ".err", ".rc" }) do os.remove(tmp .. ext) end
    return r
end


--- Splits text into non-empty lines.
function M.lines(s)
    local t = {}
    for l in s:gmatch("[^\n]+") do t[#t + 1] = l end
    return t
end


--- A fresh temporary directory (removed by M.rmrf).
--- The names in dir (with dot files), sorted; {} when it does not exist.
function M.ls(dir)
    local names = {}
    local h = io.popen("ls -A " .. shquote(dir) .. " 2>/dev/null")
    for name in h:lines() do names[#names + 1] = name end
    h:close()
    table.sort(names)
    return names
end


function M.tmpdir()
    local p = os.tmpname()
    os.remove(p)
    assert(os.execute("mkdir -p " .. shquote(p)))
    return p
end


function M.rmrf(p)
    os.execute("rm -rf " .. shquote(p))
end


function M.write(path, text)
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
end


--- One HTTP request with curl: method, url, body (text or nil) and
-- header lines. Returns the status and the body of the answer.
function M.curl(method, url, body, headers)
    -- Under make check LD_PRELOAD carries the sanitizer runtime, which
    -- makes curl itself hang: the client runs without it. A server that
    -- never answers fails the spec after a minute instead of hanging it.
    local cmd = { "env -u LD_PRELOAD curl -s -m 60 -o - -w '\\n%{http_code}' -X", method }
    for _, h in ipairs(headers or {}) do
        cmd[#cmd + 1] = "-H " .. shquote(h)
    end
    local tmp
    if body then
        -- Through a file: a command line cannot hold a large body.
        tmp = os.tmpname()
        M.write(tmp, body)
        cmd[#cmd + 1] = "--data-binary @" .. shquote(tmp)
    end
    cmd[#cmd + 1] = shquote(url)
    local h = io.popen(table.concat(cmd, " "))
    local out = h:read("*a")
    h:close()
    if tmp then os.remove(tmp) end
    local text, status = out:match("^(.*)\n(%d+)$")
    return tonumber(status), text
end

return M
