--- Error records: the one shape every failure takes (DESIGN.md §2).
-- `rec = { code, task, message, traceback, attempts }`, and
-- `tostring(rec)` gives `"CODE: message"`.
local M = {}

local json = require("tide.core").json

local setmetatable, getmetatable, tostring, type = setmetatable, getmetatable, tostring, type
local byte, sub, concat = string.byte, string.sub, table.concat

local mt = {}
mt.__index = mt
mt.__tostring = function(rec)
    return tostring(rec.code) .. ": " .. tostring(rec.message)
end
M.mt = mt


--- Makes an error record.
function M.new(code, message, task, attempts, traceback)
    return setmetatable({ code = code, message = message, task = task,
                          attempts = attempts, traceback = traceback }, mt)
end


--- True when v is an error record.
function M.is(v)
    return type(v) == "table" and getmetatable(v) == mt
end


--- The failure triple for runtime errors: nil, rec, rec.code.
function M.fail(code, message, task)
    local rec = M.new(code, message, task)
    return nil, rec, code
end


--- s with every byte that is not part of valid UTF-8 replaced by U+FFFD.
local function lossy_utf8(s)
    local out, i, n = {}, 1, #s
    while i <= n do
        local c = byte(s, i)
        local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2
            or (c >= 0xE0 and c <= 0xEF) and 3 or (c >= 0xF0 and c <= 0xF4) and 4 or 0
        local ok = len > 0 and i + len - 1 <= n
        for k = i + 1, i + len - 1 do
            if not ok then break end
            local cc = byte(s, k)
            ok = cc >= 0x80 and cc <= 0xBF
        end
        if ok then
            out[#out + 1] = sub(s, i, i + len - 1)
            i = i + len
        else
            out[#out + 1] = "\239\191\189"
            i = i + 1
        end
    end
    return concat(out)
end

--- Text made valid UTF-8 (invalid bytes become U+FFFD), so that it can
-- always go into a JSON record: messages and tracebacks may hold bytes
-- of user data cut anywhere.
M.utf8 = json.repair_utf8 or function(s)
    if json.check(s) and json.encode(s) then return s end
    return lossy_utf8(s)
end
local utf8 = M.utf8


local function text(v)
    if v == nil then return nil end
    return utf8(tostring(v))
end


--- A plain table with the record's fields (for JSON output). Its
-- strings are valid UTF-8, so it always encodes.
function M.plain(rec, with_traceback)
    return { code = text(rec.code), task = text(rec.task), message = text(rec.message),
             attempts = rec.attempts, map_index = rec.map_index,
             traceback = with_traceback and text(rec.traceback) or nil }
end


--- The record as JSON text (see plain); never fails.
function M.json(rec, with_traceback)
    local s = json.encode(json.object(M.plain(rec, with_traceback)))
    return s or '{"code":"EVALUE","message":"the error record cannot be encoded"}'
end

return M
