--- The host-loop hub behind tide.fd(), tide.timeout(), tide.step() and
-- tide.run(): one epoll fd and one step for every open executor, so that a
-- host with a loop of their own can drive them all. Part of the executor.
--
-- Executors register themselves when made and leave when closed. The
-- registry is weak: an executor nobody references can go, and one the GC
-- already closed (dropped without ex:close()) is skipped and forgotten.
--
-- The registry and the fd live in a table that tide.core anchors in the
-- Lua registry (core.hub_state), not in this module: a host that reloads
-- tide (package.loaded cleared, require "tide" again) gets a new copy of
-- this file, which must still find the executors made before and the fd
-- it handed out, or they would be orphaned and the fd leaked.
--
-- After a fork, the executors of the parent cannot run here (their threads
-- and loops are the parent's), and the epoll set is shared with the
-- parent: the child forgets both and starts afresh.
local core = require "tide.core"
local errors = require "tide.errors"

local next, pairs, tostring = next, pairs, tostring

local M = {}

local state = core.hub_state() -- { open = weak set, fd = , gen = }


-- The state of this process: in a forked child, what came from the parent
-- is dropped first (its fd is closed here only; the parent keeps its own).
local function here()
    local gen = core.fork_gen()
    if state.gen ~= gen then
        if state.gen ~= nil then
            for ex in pairs(state.open) do state.open[ex] = nil end
            if state.fd then core.close_fd(state.fd) end
            state.fd = nil
        end
        state.gen = gen
    end
    return state
end


-- The open executors, skipping (and forgetting) those whose engine the GC
-- already closed: such an executor stays reachable from its engine's
-- runner until the engine's finalizer has run.
local function each_open()
    local open = here().open
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


--- Iterates over the open executors (for ex in hub.each()).
function M.each()
    return each_open()
end


--- Adds an executor to the hub.
function M.add(ex)
    local st = here()
    ex._fd = (ex._E.backend()) -- the loop's fd, fixed for its life
    st.open[ex] = true
    if st.fd then core.epoll_ctl(st.fd, ex._fd, true) end
end


--- Removes an executor (ex:close(), before its engine closes).
function M.remove(ex)
    local st = here()
    if st.open[ex] then
        st.open[ex] = nil
        if st.fd then core.epoll_ctl(st.fd, ex._fd, false) end
    end
end


--- The fd a host loop polls for readability before calling M.step; made
-- on first use and covering every open executor.
function M.fd()
    local st = here()
    if not st.fd then
        local fd, err = core.epoll_create()
        if not fd then return errors.fail("EIO", "tide.fd: " .. tostring(err)) end
        st.fd = fd
        for ex in each_open() do core.epoll_ctl(fd, ex._fd, true) end
    end
    return st.fd
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
