--- Error records: the one shape every failure takes.
-- `rec = { code, task, message, traceback, attempts, map_index, id }`,
-- and `tostring(rec)` gives `"CODE task: message"` (`"CODE: message"`
-- when no task is known).
--
-- Runtime failures return exactly two values, `nil, rec`: LuaJIT's assert
-- raises its last argument when the message is not a string, so
-- `assert(ex:result(id))` raises the record itself, and its __tostring
-- makes that readable.
local M = {}

local json = require("tide.core").json

local setmetatable, getmetatable, tostring, type = setmetatable, getmetatable, tostring, type

local mt = {}
mt.__index = mt
mt.__tostring = function(rec)
    local task = rec.task
    return tostring(rec.code) .. (task ~= nil and (" " .. tostring(task)) or "") .. ": " .. tostring(rec.message)
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


--- The failure return of runtime errors: nil, rec.
function M.fail(code, message, task)
    return nil, M.new(code, message, task)
end


--- Text made valid UTF-8 (each bad sequence becomes U+FFFD), so that it
-- can always go into a JSON record: messages and tracebacks may hold bytes
-- of user data cut anywhere.
M.utf8 = json.repair_utf8
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
