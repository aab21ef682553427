-- Specs of packaging: `make install PREFIX=...` and the rockspec, each into
-- a temporary prefix, then used from there: the binary, the Lua module
-- under a stock luajit, and the header and library from a C compiler.
local proc = require "helpers.proc"

local q = proc.shquote

local function sh(cmd)
    local h = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
    local out = h:read("*a")
    h:close()
    local rc = tonumber(out:match("rc=(%d+)%s*$"))
    return rc, out:gsub("rc=%d+%s*$", "")
end

local PIPE = [[local t = require "tide"; local p = t.pipeline "x"; ]]
    .. [[p:task("a", function(v) t.sleep(0.001) return v * 2 end); ]]
    .. [[local o = t.run(p, {1, 2, 3}); io.write(o[1], o[2], o[3])]]

describe("packaging", function()
    local build = os.getenv("TIDE_BUILD") or "build"

    it("make install puts the binary, libraries, header and Lua module under PREFIX", function()
        local pfx = proc.tmpdir()
        finally(function() proc.rmrf(pfx) end)
        local rc, out = sh("make -s install BUILD=" .. q(build) .. " PREFIX=" .. q(pfx))
        assert.equal(0, rc, out)
        for _, f in ipairs({ "bin/tide", "lib/libtide.a", "lib/libtide.so", "include/tide.h",
                             "lib/lua/5.1/tide/core.so", "share/lua/5.1/tide/init.lua",
                             "share/lua/5.1/tide/executor.lua" }) do
            assert.is_truthy(io.open(pfx .. "/" .. f), "missing " .. f)
        end
        rc, out = sh(q(pfx .. "/bin/tide") .. " version")
        assert.equal(0, rc)
        assert.matches("^tide %d", out)
        -- A stock luajit finds the module through the prefix alone.
        rc, out = sh("cd / && LUA_PATH=" .. q(pfx .. "/share/lua/5.1/?.lua;" .. pfx .. "/share/lua/5.1/?/init.lua")
            .. " LUA_CPATH=" .. q(pfx .. "/lib/lua/5.1/?.so") .. " luajit -e " .. q(PIPE))
        assert.equal(0, rc, out)
        assert.equal("246", out)
        -- A C host compiles against the installed header and library.
        local exe = pfx .. "/host"
        -- Under make check the library is built with sanitizers: link them.
        local san = os.getenv("TIDE_SAN_FLAGS") or ""
        rc, out = sh("cc -std=c11 -D_GNU_SOURCE " .. san .. " -o " .. q(exe) .. " examples/embed/host.c"
            .. " -I" .. q(pfx .. "/include") .. " " .. q(pfx .. "/lib/libtide.a")
            .. " $(pkg-config --libs luajit libuv yajl sqlite3) -lhttp_parser -lm -ldl -lpthread")
        assert.equal(0, rc, out)
        rc, out = sh(q(exe) .. " examples/embed/wordcount.lua '\"a b a\"'")
        assert.equal(0, rc, out)
        assert.matches('1 done OK {"distinct":2,"words":3}', out, 1, true)
    end)

    it("the rockspec builds and installs the module into a tree", function()
        if sh("command -v luarocks") ~= 0 then
            pending("luarocks is not installed (scripts/deps.sh installs it)")
            return
        end
        local tree = proc.tmpdir()
        finally(function() proc.rmrf(tree) end)
        local rc, out = sh("luarocks lint tide-scm-1.rockspec")
        assert.equal(0, rc, out)
        rc, out = sh("luarocks make --tree " .. q(tree) .. " tide-scm-1.rockspec")
        assert.equal(0, rc, out)
        rc, out = sh("cd / && LUA_PATH=" .. q(tree .. "/share/lua/5.1/?.lua;" .. tree .. "/share/lua/5.1/?/init.lua")
            .. " LUA_CPATH=" .. q(tree .. "/lib/lua/5.1/?.so") .. " luajit -e " .. q(PIPE))
        assert.equal(0, rc, out)
        assert.equal("246", out)
    end)
end)
