-- Specs of kind = "native": C functions from shared libraries, on the
-- worker threads. Small libraries are compiled here with the system cc.
local tide = require "tide"

local tmp

local function cc(name, source)
    local c = tmp .. "/" .. name .. ".c"
    local f = assert(io.open(c, "w"))
    f:write(source)
    f:close()
    local so = tmp .. "/" .. name .. ".so"
    local ok = os.execute("cc -std=c11 -shared -fPIC -Isrc -o " .. so .. " " .. c)
    assert(ok == true or ok == 0, "cc failed for " .. name)
    return so
end

local LIB = [[
#include <string.h>
#include "tide.h"
TIDE_EXPORT_ABI;
int echo(tide_call *c);
int echo(tide_call *c) {
    size_t n;
    const char *j = tide_call_input_json(c, &n);
    if (n == 6 && memcmp(j, "\"fail\"", 6) == 0) return tide_call_error(c, "asked to fail");
    if (n == 5 && memcmp(j, "\"bad\"", 5) == 0) return tide_call_output_json(c, "{oops", 5);
    return tide_call_output_json(c, j, n);
}
int raw(tide_call *c) {
    size_t n;
    const void *v = tide_call_input_value(c, &n);
    return tide_call_output_value(c, v, n);
}
]]

describe('kind = "native"', function()
    setup(function()
        tmp = os.tmpname()
        os.remove(tmp)
        os.execute("mkdir -p " .. tmp)
        cc("echo", LIB)
        cc("noabi", "int echo(void *c) { (void)c; return 0; }\n")
        cc("oldabi", "const int tide_abi_version = 999; int echo(void *c) { (void)c; return 0; }\n")
    end)
    teardown(function() os.execute("rm -rf " .. tmp) end)

    local function pipe(lib, sym)
        local p = tide.pipeline "native"
        p:task("n", { kind = "native", native = tmp .. "/" .. lib .. ".so:" .. sym })
        return p
    end

    it("runs the C function on the input, as JSON or as the binary value", function()
        local inputs = { 1, "text", { a = { 1, 2 } }, tide.json.array({}), 2 ^ 53 }
        local outs, errs = tide.run(pipe("echo", "echo"), inputs)
        assert.is_nil(next(errs))
        assert.same(inputs, outs)
        local raw = tide.run(pipe("echo", "raw"), { -0.0, "x\0y" })
        assert.equal(-math.huge, 1 / raw[1])
        assert.equal("x\0y", raw[2])
    end)

    it("fails the attempt with the library's message, or on output that is not JSON", function()
        local _, errs = tide.run(pipe("echo", "echo"), { "fail", "bad" })
        assert.equal("ETASK", errs[1].code)
        assert.equal("asked to fail", errs[1].message)
        assert.equal("n", errs[1].task)
        assert.matches("output is not JSON", errs[2].message)
    end)

    it("reports a missing library, symbol or ABI when the pipeline is compiled", function()
        local function err_of(lib, sym)
            local ok, err = pcall(pipe(lib, sym).compile, pipe(lib, sym))
            assert.is_false(ok)
            return err
        end
        assert.matches("cannot load native library '" .. tmp .. "/nope.so'", err_of("nope", "echo"))
        assert.matches("native library '" .. tmp .. "/echo.so' has no symbol 'missing'", err_of("echo", "missing"))
        assert.matches("is not a tide native library", err_of("noabi", "echo"))
        assert.matches("was built for tide ABI 999, this tide has 1", err_of("oldabi", "echo"))
        assert.matches("spec/native_spec.lua:%d+: pipeline 'native': task 'n': ", err_of("echo", "missing"))
    end)

    it("rejects a bad native option at the call", function()
        assert.has_error(function() tide.pipeline("x"):task("n", { kind = "native", native = "nocolon" }) end)
        assert.has_error(function() tide.pipeline("x"):task("n", { native = "a.so:f" }, print) end)
        assert.has_error(function()
            tide.pipeline("x"):task("n", { kind = "native", native = "a.so:f", map = true })
        end)
    end)
end)
