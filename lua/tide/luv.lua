--- tide in a libuv host: `require("tide.luv").attach(uv [, opts])` drives
-- every tide executor from the host's own loop, for any libuv binding
-- with luv's API (lua-luv's `require "luv"`, Neovim's `vim.loop`).
--
-- DESIGN
-- ------
-- Three handles on the host's loop, each of which calls one step:
--   * a poll handle on tide.fd(), readable when an executor has I/O, a
--     finished sync job, or work submitted or cancelled from outside;
--   * a timer, armed for tide.timeout() when that is positive (a sleep or
--     a retry falls due: timers do not make the fd readable);
--   * an idle handle, active while tide.timeout() is 0 (work is ready).
-- The idle handle is what keeps the host responsive: while it is active
-- libuv polls for I/O without blocking on every turn, so the host's own
-- callbacks run between two steps (each step runs at most about 1 ms of
-- tide's work). A timer re-armed with 0 would not do: libuv runs a timer
-- that falls due during its callback again in the same pass, and the
-- host's I/O would wait until tide ran out of work.
--
-- With opts.schedule (Neovim's vim.schedule), the handles only ask for a
-- step, which then runs where the host allows its own API, and they stay
-- quiet until it ran, so that a readable fd does not make the loop spin.
local tide = require "tide"

local type, pairs, tostring, error, pcall = type, pairs, tostring, error, pcall
local ceil = math.ceil

local M = {}

local OPTS = { schedule = true, on_error = true }


--- Attaches tide to the loop of `uv`. Returns a handle whose :close()
-- stops the handles (the executors stay open), or nil, rec when
-- tide.fd() cannot be made.
-- @param opts { schedule = fn (runs a function later where the host's API
--   may be called, e.g. vim.schedule), on_error = fn(err) (a step raised:
--   default, a line on stderr) }
-- @raise when uv is not a libuv binding or an option is bad
function M.attach(uv, opts)
    if type(uv) ~= "table" or type(uv.new_poll) ~= "function" or type(uv.new_idle) ~= "function" then
        error("tide.luv.attach: argument 1 must be a libuv binding (require 'luv', or vim.loop), got "
              .. type(uv), 2)
    end
    opts = opts or {}
    if type(opts) ~= "table" then
        error("tide.luv.attach: options must be a table, got " .. type(opts), 2)
    end
    for k in pairs(opts) do
        if not OPTS[k] then error("tide.luv.attach: unknown option '" .. tostring(k) .. "'", 2) end
    end
    local schedule, on_error = opts.schedule, opts.on_error
    if schedule ~= nil and type(schedule) ~= "function" then
        error("tide.luv.attach: schedule must be a function", 2)
    end
    if on_error ~= nil and type(on_error) ~= "function" then
        error("tide.luv.attach: on_error must be a function", 2)
    end
    on_error = on_error or function(err)
        io.stderr:write("tide.luv: a step failed: ", tostring(err), "\n")
    end
    local fd, rec = tide.fd()
    if not fd then return nil, rec end

    local poll, timer, idle = uv.new_poll(fd), uv.new_timer(), uv.new_idle()
    local closed, asked = false, false
    local wake -- the callback of the three handles

    -- Sets the handles for what tide needs next.
    local function rearm()
        if closed then return end
        local t = tide.timeout()
        if t == 0 then
            timer:stop()
            if not idle:is_active() then idle:start(wake) end
        else
            idle:stop()
            if t then timer:start(ceil(t * 1000), 0, wake) else timer:stop() end
        end
        if not poll:is_active() then poll:start("r", wake) end
    end

    local function step()
        asked = false
        if closed then return end
        local ok, err = pcall(tide.step)
        if not ok then on_error(err) end
        rearm()
    end

    if schedule then
        wake = function()
            if asked or closed then return end
            asked = true
            -- Quiet until the step ran: the fd stays readable meanwhile.
            poll:stop()
            idle:stop()
            schedule(step)
        end
    else
        wake = step
    end

    rearm()
    local handle = {}
    --- Stops driving tide from this loop (idempotent).
    function handle.close()
        if closed then return end
        closed = true
        for _, h in pairs({ poll, timer, idle }) do
            if not h:is_closing() then h:close() end
        end
    end
    --- Steps now (after submitting from a host callback, say): the same as
    -- what the handles do.
    function handle.step()
        if schedule then wake() else step() end
    end
    return handle
end

return M
