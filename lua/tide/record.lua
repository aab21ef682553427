--- The result record: the one JSON shape a finished job takes, wherever it
-- goes (stdout of `tide run`, failed.jsonl, the HTTP API, the C API):
--
--   {"id":ID,"status":"done","output":OUTPUT}
--   {"id":ID,"status":"failed"|"cancelled","error":{ERROR RECORD},"input":INPUT}
--
-- A failure carries the input of its job (the executor puts it in the
-- error record as rec.input when the job ends), so that any failure
-- record can be run again (`tide replay`, a re-run of failed.jsonl). It
-- is left out only when the job had no input or the input cannot be
-- encoded. The error record's strings
-- are made valid UTF-8 first (errors.plain), so a failure always encodes.
-- Built by concatenation: the parts are JSON text already.
local core = require "tide.core"
local errors = require "tide.errors"

local encode = core.json.encode
local tostring, type = tostring, type

local M = {}


--- The id as JSON text.
function M.id(id)
    return encode(tostring(id))
end


--- A done record from the id's JSON text and the output's JSON text.
function M.done(sid, output_json)
    return '{"id":' .. sid .. ',"status":"done","output":' .. output_json .. '}'
end


--- A failure record: status "failed" or "cancelled", `rec` an error record
-- (anything else becomes an ETASK record with its text), `traceback` true
-- to keep it, `input_json` the input's JSON text to add (or nil).
function M.failed(sid, status, rec, traceback, input_json)
    if not errors.is(rec) then rec = errors.new("ETASK", tostring(rec)) end
    local s = '{"id":' .. sid .. ',"status":"' .. status .. '","error":' .. errors.json(rec, traceback)
    if input_json then s = s .. ',"input":' .. input_json end
    return s .. '}'
end


--- The record of a finished job from its values: status ("done",
-- "failed", "cancelled") and value (the output, or the error record).
-- An output that cannot be encoded gives a failure record (EVALUE): the
-- executor refuses such outputs when the attempt ends, so this is a
-- guard, not a path.
function M.encode(id, status, value, traceback)
    local sid = M.id(id)
    if status == "done" then
        local out, err = encode(value)
        if out then return M.done(sid, out) end
        return M.failed(sid, "failed", errors.new("EVALUE", "the output cannot be encoded: " .. tostring(err)),
                        traceback)
    end
    local input_json = nil
    if type(value) == "table" and value.input ~= nil then input_json = encode(value.input) end
    return M.failed(sid, status, value, traceback, input_json)
end

return M
