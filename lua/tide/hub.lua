--- The host-loop hub behind tide.fd(), tide.timeout(), tide.step() and
-- tide.run(): one epoll fd and one step for every open executor, so that a
-- host with a loop of its own can drive them all. Part of the executor.
--
-- Executors register themselves when made and leave when closed. The
-- registry is weak: an executor nobody references can go, and one the GC
-- already closed (dropped without ex:close()) is skipped and forgotten.
local core = require "tide.core"
local errors = require "tide.errors"

local setmetatable, next, tostring = setmetatable, next, tostring

local M = {}

local open = setmetatable({}, { __mode = "k" })
local hub_fd -- made on first use of M.fd()


-- The open executors, skipping (and forgetting) those whose engine the GC
-- already closed: such an executor stays reachable from its engine's
-- runner until the engine's finalizer has run.
local function each_open()
    return function(_, prev)
        local ex = next(open, prev)
        while ex and ex._E.closed() do
            local dead = ex
            ex = next(open, dead)
            open[dead] = nil
        end
        return ex
    end, nil, nil
end


--- Adds an executor to the hub.
function M.add(ex)
    open[ex] = true
    if hub_fd then
        ex._fd = (ex._E.backend())
        core.epoll_ctl(hub_fd, ex._fd, true)
    end
end


--- Removes an executor (ex:close()).
function M.remove(ex)
    if open[ex] then
        open[ex] = nil
        if hub_fd and ex._fd then core.epoll_ctl(hub_fd, ex._fd, false) end
    end
end


--- The fd a host loop polls for readability before calling M.step; made
-- on first use and covering every open executor.
function M.fd()
    if not hub_fd then
        local fd, err = core.epoll_create()
        if not fd then return errors.fail("EIO", "tide.fd: " .. tostring(err)) end
        hub_fd = fd
        for ex in each_open() do
            ex._fd = (ex._E.backend())
            core.epoll_ctl(hub_fd, ex._fd, true)
        end
    end
    return hub_fd
end


--- How long a host may wait for M.fd() before calling M.step: seconds,
-- 0 when work is ready, nil when only I/O can wake tide.
function M.timeout()
    local best
    for ex in each_open() do
        local _, ms = ex._E.backend()
        if ms >= 0 and (best == nil or ms < best) then best = ms end
    end
    return best and best / 1000 or nil
end


--- Runs what is ready in every open executor without blocking. Returns
-- whether work remains (jobs not finished), and how many jobs that is.
function M.step()
    local live = 0
    for ex in each_open() do live = live + ex._E.step() end
    return live > 0, live
end


--- Runs every open executor until all their jobs finished.
function M.run_all()
    local fd = M.fd()
    while M.step() do
        local t = M.timeout()
        core.poll(fd, t and math.ceil(t * 1000) or -1)
    end
    return true
end

return M
