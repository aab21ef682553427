--- The clock of p:schedule: one timer per schedule, armed for its next
-- fire, and the catchup policy applied to the fires missed while nothing
-- ran. What a fire does is the caller's `fire` function: `tide serve`
-- submits the job and journals the fire (serve.lua), `tide worker`
-- submits it through Redis once across the workers (schedule_redis.lua).
--
-- A timer sleeps at most MAX_SLEEP seconds before it looks at the wall
-- clock again: the loop's timers run on the monotonic clock, which a
-- change of the wall clock or a suspended machine leaves behind. A wall
-- clock found more than BEHIND seconds past the next fire is downtime,
-- made up by the policy, while a smaller lag is a late timer whose fires
-- are all made. catchup = "all" makes up at most MAX_CATCHUP fires at
-- once; the later ones are skipped, with a line on the log.
local core = require "tide.core"
local cron = require "tide.cron"

local format, floor = string.format, math.floor

local M = {}

M.MAX_SLEEP = 300
M.BEHIND = 60
M.MAX_CATCHUP = 1000

local Clock = {}
Clock.__index = Clock


-- Makes up the fires of st in (after, upto] by its catchup policy.
local function catch_up(self, st, after, upto)
    local s = st.s
    local first = cron.next(s.cron, after, s.zone)
    if not first or first > upto then return end
    if s.catchup == "latest" then
        self.fire(st, cron.latest(s.cron, after, upto, s.zone), true)
    elseif s.catchup == "all" then
        local t, n = first, 0
        while t and t <= upto do
            if n == M.MAX_CATCHUP then
                self.log(format("schedule '%s': more than %d fires were missed; those from %s on are "
                                .. "skipped", s.name, M.MAX_CATCHUP, cron.iso(t)))
                break
            end
            self.fire(st, t, true)
            n = n + 1
            t = cron.next(s.cron, t, s.zone)
        end
    else
        self.log(format("schedule '%s': the fires missed since %s are skipped (catchup = \"none\")",
                        s.name, cron.iso(first)))
    end
end


local arm

local function on_timer(self, st)
    st.timer:close()
    st.timer = nil
    if st.stopped then return end
    local now = core.cache_now()
    if st.next and now >= st.next then
        if now - st.next > M.BEHIND then
            -- The wall clock leapt (or the machine slept): downtime.
            catch_up(self, st, st.next - 1, floor(now))
            st.next = cron.next(st.s.cron, floor(now), st.s.zone)
        else
            while st.next and st.next <= now and not st.stopped do
                self.fire(st, st.next, false)
                st.next = cron.next(st.s.cron, st.next, st.s.zone)
            end
        end
    end
    arm(self, st)
end


arm = function(self, st)
    if st.stopped or not st.next then return end
    local delay = math.min(M.MAX_SLEEP, math.max(0.001, st.next - core.cache_now()))
    st.timer = self.ex:timer(delay, function() on_timer(self, st) end)
end


--- Starts the schedules of pipeline p on executor ex's loop.
-- @param o { fire = function(st, t, late) (makes the fire at Unix time
--   t; st.s is the schedule, st.last is set here first), last = { [name]
--   = the last fire time made, from wherever the caller keeps it } or
--   nil, log = function(message) }
-- @return the clock: .list holds one state per schedule { s, next, last,
--   submitted, skipped, failed } (the caller's fire keeps the counts);
--   clock:stop() closes its timers
function M.start(ex, p, o)
    local self = setmetatable({ ex = ex, list = {}, log = o.log }, Clock)
    self.fire = function(st, t, late)
        st.last = t
        return o.fire(st, t, late)
    end
    local now = floor(core.cache_now())
    for _, s in ipairs(rawget(p, "schedules") or {}) do
        local st = { s = s, submitted = 0, skipped = 0, failed = 0 }
        self.list[#self.list + 1] = st
        local last = o.last and o.last[s.name]
        if last then
            st.last = last
            catch_up(self, st, last, now)
        end
        st.next = cron.next(s.cron, now, s.zone)
        self.log(format("schedule '%s' (%s, %s, catchup %s): next fire at %s", s.name, s.expr, s.tz,
                        s.catchup, st.next and cron.iso(st.next) or "never"))
        arm(self, st)
    end
    return self
end


--- Stops every schedule: no fire is made after this.
function Clock:stop()
    for _, st in ipairs(self.list) do
        st.stopped = true
        if st.timer then
            st.timer:close()
            st.timer = nil
        end
    end
end

return M
