--- The README's "From Lua" example runs as written: the spec takes the
-- block from README.md, runs it with a stock luajit from the repository
-- root and checks each line it prints against the block's `-->` comments.
local proc = require "helpers.proc"

describe("README.md", function()
    it("'From Lua' runs as written and prints what its comments say", function()
        local text = assert(proc.slurp("README.md"))
        local at = assert(text:find("the specs run this one as written", 1, true), "marker missing")
        local code = assert(text:match("```lua\n(.-)```", at), "no lua block after the marker")
        local want = {}
        for line in code:gmatch("[^\n]+") do
            local c = line:match("%-%->%s*(.-)%s*$")
            if c then want[#want + 1] = (c:gsub("%s+", " ")) end
        end
        assert.is_true(#want >= 3)
        local path = os.tmpname()
        proc.write(path, code)
        finally(function() os.remove(path) end)
        local h = io.popen("luajit "
                           .. proc.shquote(path) .. " 2>&1; echo \"exit=$?\"")
        local out = h:read("*a")
        h:close()
        assert.matches("exit=0\n$", out, out)
        local got = {}
        for line in out:gmatch("[^\n]+") do
            if not line:match("^exit=") then got[#got + 1] = (line:gsub("%s+", " ")) end
        end
        assert.same(want, got)
    end)
end)
