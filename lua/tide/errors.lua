--- Error records: the one shape every failure takes (DESIGN.md §2).
-- `rec = { code, task, message, traceback, attempts }`, and
-- `tostring(rec)` gives `"CODE: message"`.
local M = {}

local setmetatable, getmetatable, tostring, type = setmetatable, getmetatable, tostring, type

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


--- A plain table with the record's fields (for JSON output).
function M.plain(rec, with_traceback)
    return { code = rec.code, task = rec.task, message = rec.message,
             attempts = rec.attempts, map_index = rec.map_index,
             traceback = with_traceback and rec.traceback or nil }
end

return M
