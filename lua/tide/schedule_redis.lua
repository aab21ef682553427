--- The schedules of a pipeline under `tide worker`: every worker of the
-- pipeline keeps the schedules' clock (schedule.lua), and each fire time
-- is submitted to the jobs stream once across all of them.
--
-- DESIGN
-- ------
-- A fire is one script, FIRE, run by every worker that reaches that fire
-- time: it compares the time with the schedule's last fire kept in Redis
-- (tide:{NAME}:schedule:SNAME, Unix seconds) and, only when the time is
-- later, stores it and adds the job with XADD, in one step. The first
-- worker's script submits the job; the others find the time taken and
-- submit nothing. Each worker makes its fires in increasing time order,
-- so a fire time is never passed over: a worker can only skip a time t
-- because the last fire is already >= t, and the first script to store a
-- time >= t came from a worker that tried t before (or whose catchup
-- policy drops t on purpose). The same key is the memory of the catchup
-- policies: a fleet that starts again reads it and makes up the fires
-- missed since, whichever worker was the last to fire.
--
-- The job carries the id "<schedule>@<ISO time>" and the run
-- "schedule:<schedule>", so its result goes to the stream
-- tide:{NAME}:res:schedule:SNAME; each fire trims that stream to about
-- RESULTS_KEPT entries. The schedule's function runs on every worker at
-- each fire (the input a losing worker computed is dropped): it should
-- compute the input, not act.
local core = require "tide.core"
local cron = require "tide.cron"
local redis = require "tide.redis"
local distributed = require "tide.distributed"
local schedule = require "tide.schedule"

local json = core.json
local format, tostring = string.format, tostring

local M = {}

M.RESULTS_KEPT = 1000

-- KEYS: last fire, jobs, results. ARGV: fire time, job id, run, hash,
-- input (JSON, or "" for a fire whose function returned nil: the time is
-- taken, nothing is submitted), results kept. Returns 1 (this call took
-- the fire) or 0 (it was taken already).
M.FIRE = redis.script([==[
local last = tonumber(redis.call('GET', KEYS[1]))
if last and last >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[2], '*', 'id', ARGV[2], 'run', ARGV[3], 'hash', ARGV[4], 'input', ARGV[5])
  redis.call('XTRIM', KEYS[3], 'MAXLEN', '~', ARGV[6])
end
return 1
]==])


--- The Redis keys of schedule `sname` of pipeline `name`: { last, run,
-- results }.
function M.keys(name, sname)
    local k = distributed.keys(name)
    local run = "schedule:" .. sname
    return { last = "tide:{" .. name .. "}:schedule:" .. sname, run = run, results = k.res .. run,
             jobs = k.jobs }
end


--- Starts the schedules of p for a worker: a client of its own on ex's
-- loop, the last fires read from Redis (running ex's loop until they
-- come), then the clock. Returns nil when p has no schedules; else the
-- handle { clock, stop(), close() }, or nil, message (Redis cannot be
-- reached or answered with an error: exit 3).
-- @param hash the hash of the pipeline file (the jobs carry it)
-- @param log function(message)
function M.start(ex, url, p, hash, log)
    local list = rawget(p, "schedules")
    if not list or #list == 0 then return nil end
    local cmd, cerr = distributed.connect_checked(ex, url, 2)
    if not cmd then return nil, cerr end
    local args = {}
    for i, s in ipairs(list) do args[i] = M.keys(p.name, s.name).last end
    local got, rerr
    cmd:send(function(v, rec) got, rerr = v, rec end, "MGET", unpack(args))
    ex:run()
    if not got then
        cmd:close()
        return nil, "reading the last fires of the schedules: " .. tostring(rerr)
    end
    local last = {}
    for i, s in ipairs(list) do last[s.name] = got[i] and tonumber(got[i]) or nil end

    local function fire(st, t, late)
        local s = st.s
        local iso = cron.iso(t)
        local ok, input = pcall(s.fn, t, { name = s.name, time = t, iso = iso, late = late })
        local text
        if not ok then
            st.failed = st.failed + 1
            return log(format("schedule '%s': the fire at %s is skipped: its function failed: %s", s.name,
                              iso, tostring(input)))
        elseif input == nil then
            text = ""
        else
            text = json.encode(input)
            if not text then
                st.failed = st.failed + 1
                return log(format("schedule '%s': the fire at %s is skipped: its input cannot be encoded "
                                  .. "as JSON", s.name, iso))
            end
        end
        local k = M.keys(p.name, s.name)
        cmd:eval(M.FIRE, { k.last, k.jobs, k.results },
                 { format("%d", t), s.name .. "@" .. iso, k.run, hash, text, M.RESULTS_KEPT },
                 function(v, rec)
            if rec then
                st.failed = st.failed + 1
                log(format("schedule '%s': the fire at %s could not be submitted: %s", s.name, iso,
                           tostring(rec)))
            elseif v == 1 and text ~= "" then
                st.submitted = st.submitted + 1
            elseif v == 1 then
                st.skipped = st.skipped + 1
            end
        end)
    end

    local clock = schedule.start(ex, p, { fire = fire, last = last, log = log })
    return {
        clock = clock,
        -- No fire after this (a worker that stops taking jobs).
        stop = function() clock:stop() end,
        -- After the loop ran out: fires in flight have their replies.
        close = function()
            clock:stop()
            cmd:close()
        end,
    }
end

return M
