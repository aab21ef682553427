--- Tracing one context at a time: what each of its tasks got, returned or
-- raised, on which attempt, and how long it took.
--
-- DESIGN
-- ------
-- A tracer is nothing but a subscriber of the executor's lifecycle events
-- (ex:on: context_start, task_start, task_end, retry, context_end),
-- filtered to the ids it was asked to trace. It is attached only when
-- something is traced, so a run without tracing has no hooks, and the
-- runner keeps its fast path (runner.update_flags turns the general path
-- on only while task hooks exist).
--
-- Each event becomes one line, written through `write`:
--   jsonl  one JSON object per event (keys sorted):
--          {"event":"task_end","id":"7","task":"parse","attempt":1,
--           "status":"failed","error":{...},"ms":0.12,"at_ms":0.40}
--   text   a line a person reads: "[7 +0.40 ms] parse #1 failed in 0.12 ms: ..."
-- `at_ms` is the time since the context started, `ms` the duration of the
-- attempt (task_end) or of the whole context (context_end).
local core = require "tide.core"
local errors = require "tide.errors"

local json = core.json
local hrtime = core.hrtime
local format, tostring, type, pairs, ipairs, setmetatable = string.format, tostring, type, pairs, ipairs, setmetatable

local M = {}

M.EVENTS = { "context_start", "task_start", "task_end", "retry", "context_end" }

-- Longest rendering of a value in the text form; a person reading a trace
-- wants to recognise the value, and the JSONL form keeps it whole.
local TEXT_VALUE_MAX = 400


-- A value as JSON text, or a Lua rendering of it when it has no JSON form
-- (a function, a cycle): a trace shows what it can rather than nothing.
local function json_text(v)
    if v == nil then return "null" end
    local s = json.encode(v)
    if s then return s end
    return json.encode(tostring(v)) or '"?"'
end


local function short(v)
    local s = json_text(v)
    if #s > TEXT_VALUE_MAX then s = s:sub(1, TEXT_VALUE_MAX) .. "..." end
    return s
end


local Tracer = {}
Tracer.__index = Tracer


--- A tracer. `opts`: write = function(line) (the line ends with "\n"),
-- format = "text" or "jsonl", ids = a list of ids to trace (more can be
-- added with tracer:add; none traces nothing until then).
function M.new(opts)
    if type(opts) ~= "table" or type(opts.write) ~= "function" then
        error("trace.new: opts.write must be a function", 2)
    end
    if opts.format ~= "text" and opts.format ~= "jsonl" then
        error("trace.new: opts.format must be \"text\" or \"jsonl\"", 2)
    end
    local self = setmetatable({ write = opts.write, format = opts.format, ids = {},
                                started = {}, attempts = {}, hooks = nil, ex = nil }, Tracer)
    for _, id in ipairs(opts.ids or {}) do self:add(id) end
    return self
end


--- Traces the context with this id (its id as the executor knows it).
function Tracer:add(id)
    self.ids[tostring(id)] = true
end


--- Stops tracing id.
function Tracer:remove(id)
    id = tostring(id)
    self.ids[id], self.started[id] = nil, nil
end


-- Writes one event: `t` holds its fields (values still Lua values).
function Tracer:_emit(t)
    if self.format == "jsonl" then
        t.error_text = nil -- the text form's rendering; the record is in t.error
        for _, k in ipairs({ "input", "output" }) do
            if t[k] ~= nil and json.encode(t[k]) == nil then t[k] = tostring(t[k]) end
        end
        local s = json.encode(json.object(t))
        self.write((s or json.encode(json.object({ event = t.event, id = t.id,
                                                     error = "the trace event cannot be encoded" })))
                   .. "\n")
        return
    end
    local task = t.task
    if task and t.map_index then task = format("%s[%d]", task, t.map_index) end
    local head = format("[%s +%.3f ms] ", t.id, t.at_ms or 0)
    local line
    if t.event == "context_start" then
        line = "context start, input " .. short(t.input)
    elseif t.event == "task_start" then
        line = format("%s #%d start, input %s", task, t.attempt, short(t.input))
    elseif t.event == "task_end" and t.status == "done" then
        line = format("%s #%d done in %.3f ms%s, output %s", task, t.attempt, t.ms,
                      t.from and (" (from the " .. t.from .. ")") or "", short(t.output))
    elseif t.event == "task_end" then
        line = format("%s #%d failed in %.3f ms: %s", task, t.attempt, t.ms, t.error_text)
        if t.error.traceback then line = line .. "\n    " .. t.error.traceback:gsub("\n", "\n    ") end
    elseif t.event == "retry" then
        line = format("%s #%d will be retried in %g s", task, t.attempt, t.delay or 0)
    else
        line = format("context %s in %.3f ms", t.status, t.ms)
        if t.status == "done" then line = line .. ", output " .. short(t.output)
        else line = line .. ": " .. t.error_text end
    end
    self.write(head .. line .. "\n")
end


-- Milliseconds, to the microsecond: finer digits are noise to a reader.
local function ms(seconds)
    return math.floor(seconds * 1e6 + 0.5) / 1000
end


-- The time since context id started, in ms (0 when its start was not seen).
function Tracer:_at(id, now)
    local t0 = self.started[id]
    return t0 and ms(now - t0) or 0
end


--- Subscribes to ex's lifecycle events. Raises when already attached.
function Tracer:attach(ex)
    if self.ex then error("tracer:attach: already attached", 2) end
    local ids, started, attempts = self.ids, self.started, self.attempts
    local h = {}
    h.context_start = function(id, input)
        id = tostring(id)
        if not ids[id] then return end
        local now = hrtime()
        started[id] = now
        self:_emit({ event = "context_start", id = id, input = input, at_ms = 0 })
    end
    h.task_start = function(id, task, attempt, map_index, input)
        id = tostring(id)
        if not ids[id] then return end
        local now = hrtime()
        attempts[id .. "\0" .. task .. "\0" .. tostring(map_index)] = now
        self:_emit({ event = "task_start", id = id, task = task, attempt = attempt,
                     map_index = map_index, input = input, at_ms = self:_at(id, now) })
    end
    h.task_end = function(id, task, attempt, output, rec, map_index, from)
        id = tostring(id)
        if not ids[id] then return end
        local now = hrtime()
        local key = id .. "\0" .. task .. "\0" .. tostring(map_index)
        local t0 = attempts[key]
        attempts[key] = nil
        local t = { event = "task_end", id = id, task = task, attempt = attempt, map_index = map_index,
                    ms = t0 and ms(now - t0) or 0, from = from, at_ms = self:_at(id, now) }
        if rec ~= nil then
            -- The record of an attempt is named after its task and attempt
            -- only once the attempt's failure is handled, after this event.
            local plain = errors.plain(rec, true)
            plain.task, plain.attempts = plain.task or task, plain.attempts or attempt
            t.status, t.error = "failed", json.object(plain)
            t.error_text = format("%s %s: %s", tostring(plain.code), task, tostring(plain.message))
        else
            t.status, t.output = "done", output
        end
        self:_emit(t)
    end
    h.retry = function(id, task, attempt, rec, delay)
        id = tostring(id)
        if not ids[id] then return end
        self:_emit({ event = "retry", id = id, task = task, attempt = attempt, delay = delay,
                     error = json.object(errors.plain(rec, false)), at_ms = self:_at(id, hrtime()) })
    end
    h.context_end = function(id, status, value)
        id = tostring(id)
        if not ids[id] then return end
        local now = hrtime()
        local t = { event = "context_end", id = id, status = status, at_ms = self:_at(id, now) }
        t.ms = t.at_ms
        if status == "done" then
            t.output = value
        else
            local rec = errors.is(value) and value or errors.new("ETASK", tostring(value))
            t.error, t.error_text = json.object(errors.plain(rec, true)), tostring(rec)
        end
        started[id] = nil
        self:_emit(t)
    end
    for _, event in ipairs(M.EVENTS) do ex:on(event, h[event]) end
    self.hooks, self.ex = h, ex
    return self
end


--- Removes the tracer's hooks from its executor: the runner goes back to
-- its fast path when no other task hooks are left.
function Tracer:detach()
    local ex, h = self.ex, self.hooks
    if not ex then return end
    for event, fn in pairs(h) do ex:off(event, fn) end
    self.ex, self.hooks = nil, nil
end


--- The default format for a trace written to fd: text on a terminal,
-- JSONL otherwise (a file or a pipe is read by programs).
function M.format_for(fd)
    return core.isatty(fd) and "text" or "jsonl"
end

return M
