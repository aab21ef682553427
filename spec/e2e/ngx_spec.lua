-- End-to-end spec of require("tide.ngx") in a real nginx with the Lua
-- module (Debian's nginx and libnginx-mod-http-lua): nginx runs on a
-- free loopback port with its own prefix and configuration in a temporary
-- directory, and loads tide from this build tree through a package path
-- with no ?/init.lua entry. TIDE_NGINX_MODULES names another directory
-- holding ndk_http_module.so and ngx_http_lua_module.so (a module unpacked
-- from its .deb, not installed).
local proc = require "helpers.proc"
local json = require("tide.core").json

local q = proc.shquote
local NGINX = "/usr/sbin/nginx"
local MODULES = os.getenv("TIDE_NGINX_MODULES") or "/usr/lib/nginx/modules"

local function ok(cmd)
    local r = os.execute(cmd)
    return r == 0 or r == true
end

local function abspath(p)
    if p:sub(1, 1) == "/" then return p end
    local h = io.popen("pwd")
    local cwd = h:read("*l")
    h:close()
    return cwd .. "/" .. p
end

local function free_port()
    local socket = require "socket"
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return port
end

local CONF = [[
user root;
worker_processes 2;
daemon off;
master_process on;
error_log @DIR@/error.log info;
pid @DIR@/nginx.pid;
load_module @MODULES@/ndk_http_module.so;
load_module @MODULES@/ngx_http_lua_module.so;
events { worker_connections 128; }
http {
    access_log off;
    client_body_temp_path @DIR@/body;
    lua_package_path "@ROOT@/lua/?.lua;@ROOT@/spec/fixtures/hosts/?.lua;;";
    lua_package_cpath "@BUILD@/lib/?.so;;";
    lua_shared_dict spec 1m;
    init_by_lua_block {
        -- The master: tide.ngx refuses to make the executor here...
        local ok, err = pcall(require("tide.ngx").init_worker)
        ngx.shared.spec:set("master", tostring(err))
        -- ...and an executor made here anyway (threads started) must not
        -- hang the workers it is copied into, and raise when used there.
        local p = require("ngx_pipelines").compute
        MASTER_EX = require("tide").executor { threads = 1 }
        local out = MASTER_EX:result(MASTER_EX:submit(p, 3), 10)
        ngx.shared.spec:set("master_job", out and out.square or -1)
    }
    init_worker_by_lua_block {
        require("tide.ngx").init_worker { threads = 1 }
        -- Glue written by hand, as users did before tide.ngx: an executor
        -- of its own, stepped by a timer, polled by the request.
        HAND_EX = require("tide").executor { threads = 1 }
        ngx.timer.every(0.002, function() HAND_EX:step() end)
    }
    server {
        listen 127.0.0.1:@PORT@;
        location /job {
            content_by_lua_block {
                local tn = require "tide.ngx"
                local p = require("ngx_pipelines")[ngx.var.arg_p or "compute"]
                local input = tonumber(ngx.var.arg_n) or ngx.var.arg_n
                local id = tn.submit(p, input)
                local out, err = tn.wait(id, 10)
                if out == nil then
                    ngx.say(require("cjson").encode({ code = err.code, message = err.message }))
                else
                    ngx.say(require("cjson").encode({ output = out }))
                end
            }
        }
        location /hand {
            content_by_lua_block {
                local p = require("ngx_pipelines")[ngx.var.arg_p]
                local id = HAND_EX:submit(p, tonumber(ngx.var.arg_n) or ngx.var.arg_n)
                for _ = 1, 1000 do
                    local out, err = HAND_EX:result(id, 0)
                    if out ~= nil then ngx.say(require("cjson").encode({ output = out })) return end
                    if err.code ~= "EAGAIN" then
                        ngx.say(require("cjson").encode({ code = err.code, message = err.message }))
                        return
                    end
                    ngx.sleep(0.005)
                end
                ngx.say("{}")
            }
        }
        location /master {
            content_by_lua_block {
                ngx.say(ngx.shared.spec:get("master"))
                ngx.say(ngx.shared.spec:get("master_job"))
                local ok, err = pcall(MASTER_EX.submit, MASTER_EX, require("ngx_pipelines").compute, 1)
                ngx.say(tostring(ok), " ", tostring(err))
            }
        }
    }
}
]]

describe("tide.ngx in nginx with the Lua module", function()
    local dir, port, pid

    local function get(path)
        return proc.curl("GET", "http://127.0.0.1:" .. port .. path)
    end

    local function alive(p)
        return ok("kill -0 " .. p .. " 2>/dev/null")
    end

    setup(function()
        if not (ok("test -x " .. NGINX) and ok("test -f " .. MODULES .. "/ngx_http_lua_module.so")) then
            return
        end
        dir = proc.tmpdir()
        port = free_port()
        local root = abspath(".")
        local build = abspath(os.getenv("TIDE_BUILD") or "build")
        local conf = CONF:gsub("@(%u+)@", { DIR = dir, MODULES = MODULES, ROOT = root, BUILD = build,
                                            PORT = tostring(port) })
        proc.write(dir .. "/nginx.conf", conf)
        -- Started in the background, bounded: the spec stops it (below).
        os.execute("cd " .. q(dir) .. " && (timeout 120 " .. NGINX .. " -p " .. q(dir) .. " -c "
            .. q(dir .. "/nginx.conf") .. " >" .. q(dir .. "/stdout") .. " 2>&1 &)")
        for _ = 1, 100 do
            pid = tonumber(proc.slurp(dir .. "/nginx.pid") or "")
            if pid and get("/master") == 200 then break end
            os.execute("sleep 0.1")
        end
    end)

    teardown(function()
        if pid and alive(pid) then os.execute("kill -TERM " .. pid) end
        if dir then proc.rmrf(dir) end
    end)

    local function need_nginx()
        if not dir then
            pending("nginx or its Lua module is not installed (scripts/deps.sh installs them)")
            return false
        end
        assert.is_number(pid, "nginx did not start: " .. (proc.slurp(dir .. "/stdout") or "")
            .. (proc.slurp(dir .. "/error.log") or ""))
        return true
    end

    it("serves a location that submits a job and waits for its result", function()
        if not need_nginx() then return end
        for n = 1, 12 do
            local status, body = get("/job?n=" .. n)
            assert.equal(200, status, body)
            assert.same({ output = { n = n, square = n * n, ngx = false } }, json.decode(body))
        end
        local log = proc.slurp(dir .. "/error.log") or ""
        assert.matches("tide body ran for n=12 in worker %d+", log)
    end)

    it("refuses to make the executor in the master; one made there raises in a worker", function()
        if not need_nginx() then return end
        local status, body = get("/master")
        assert.equal(200, status)
        local lines = proc.lines(body)
        assert.matches("tide.ngx.init_worker: call it from init_worker_by_lua %(phase 'init'%)", lines[1])
        assert.equal("9", lines[2]) -- the master's own job ran in the master
        assert.matches("^false .*ex:submit: this executor was made in process %d+ before a fork", lines[3])
    end)

    it("fails a body that calls nginx's yielding functions (foreign yield); the worker lives on", function()
        if not need_nginx() then return end
        for _ = 1, 3 do
            local status, body = get("/job?p=sleepy&n=1")
            assert.equal(200, status, body)
            local r = json.decode(body)
            assert.equal("EVALUE", r.code)
            assert.matches("foreign yield: 'sleep' at .*ngx_pipelines%.lua:%d+ suspended the task body", r.message)
            status, body = get("/job?p=socket&n=" .. port)
            assert.equal(200, status, body)
            r = json.decode(body)
            assert.equal("EVALUE", r.code)
            assert.matches("foreign yield: 'connect'", r.message)
            -- The worker is alive and tide goes on in it.
            status, body = get("/job?n=5")
            assert.equal(200, status, body)
            assert.equal(25, json.decode(body).output.square)
        end
        local log = proc.slurp(dir .. "/error.log") or ""
        assert.is_nil(log:match("exited on signal"), log)
    end)

    it("fails a foreign yield under hand-written glue too (the worker crashed on signal 11 before)", function()
        if not need_nginx() then return end
        for _ = 1, 4 do
            local status, body = get("/hand?p=sleepy&n=1")
            assert.equal(200, status, body)
            local r = json.decode(body)
            assert.equal("EVALUE", r.code, body)
            assert.matches("foreign yield: 'sleep'", r.message)
            status, body = get("/hand?p=compute&n=4")
            assert.equal(200, status, body)
            assert.equal(16, json.decode(body).output.square)
        end
        local log = proc.slurp(dir .. "/error.log") or ""
        assert.is_nil(log:match("exited on signal"), log)
    end)

    it("lets in-flight jobs finish when nginx quits gracefully, and its workers exit promptly", function()
        if not need_nginx() then return end
        local out = dir .. "/slow.out"
        -- A request whose job sleeps 0.5 s, then the quit 0.1 s into it.
        os.execute("(env -u LD_PRELOAD curl -s -m 20 " .. q("http://127.0.0.1:" .. port .. "/job?p=slow&n=x")
            .. " >" .. q(out) .. " &)")
        os.execute("sleep 0.15")
        os.execute("kill -QUIT " .. pid)
        local t0 = os.time()
        while alive(pid) and os.time() - t0 < 15 do os.execute("sleep 0.1") end
        assert.is_false(alive(pid), "nginx did not exit within 15 s")
        assert.same({ output = "x done" }, json.decode(proc.slurp(out) or "null"))
        local log = proc.slurp(dir .. "/error.log") or ""
        assert.is_nil(log:match("exited on signal"), log)
    end)
end)
