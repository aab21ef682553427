--- tide in Neovim: `local ex = require("tide.nvim").setup(opts)`.
--
-- One executor for the editor, driven by the luv adapter (tide.luv) on
-- vim.loop through vim.schedule, so that task bodies, subscribers and
-- watchers run on Neovim's main loop, where the whole vim.api may be
-- called (never in a "fast event"). A VimLeavePre autocommand cancels
-- what still runs, steps once more so that the cancellations are handed
-- out, and closes the executor (which ends and reaps the processes of
-- tide.exec). The command :TideJobs lists the jobs not finished.
--
-- Sync tasks run on `threads` worker threads (default: the cores but one,
-- so that the editor keeps a core), each with a plain LuaJIT state: no
-- `vim` there.
local tide = require "tide"
local core = require "tide.core"
local luv_adapter = require "tide.luv"

local type, pairs, tostring, error, ipairs = type, pairs, tostring, error, ipairs
local max = math.max

local M = {}

local OPTS = {
    threads = true, concurrency = true, task_timeout = true, retention = true,
    max_results = true, command = true,
}

local current -- { ex =, drive = } while set up


--- Makes the editor's executor (once: later calls return the same one).
-- @param opts { threads = n (default: cores - 1, at least 1), command =
--   name of the job-listing command (default "TideJobs"; false: none),
--   concurrency, task_timeout, retention, max_results (as tide.executor) }
-- @return the executor, or nil, rec when tide.fd() cannot be made
-- @raise outside Neovim, or on a bad option
function M.setup(opts)
    local vim = _G.vim
    if type(vim) ~= "table" or type(vim.loop) ~= "table" or type(vim.schedule) ~= "function" then
        error("tide.nvim.setup: not running inside Neovim (no vim.loop)", 2)
    end
    opts = opts or {}
    if type(opts) ~= "table" then error("tide.nvim.setup: options must be a table, got " .. type(opts), 2) end
    for k in pairs(opts) do
        if not OPTS[k] then error("tide.nvim.setup: unknown option '" .. tostring(k) .. "'", 2) end
    end
    local command = opts.command
    if command == nil then command = "TideJobs" end
    if command ~= false and (type(command) ~= "string" or not command:match("^%u%w*$")) then
        error("tide.nvim.setup: command must be a user command name (e.g. 'TideJobs') or false", 2)
    end
    if current then return current.ex end

    local ok, ex = pcall(tide.executor, {
        threads = opts.threads or max(1, core.cores() - 1),
        concurrency = opts.concurrency, task_timeout = opts.task_timeout,
        retention = opts.retention, max_results = opts.max_results,
    })
    if not ok then error((tostring(ex):gsub("^tide%.executor", "tide.nvim.setup")), 2) end
    local drive, rec = luv_adapter.attach(vim.loop, {
        schedule = vim.schedule,
        on_error = function(err)
            vim.schedule(function() vim.notify("tide: " .. tostring(err), vim.log.levels.ERROR) end)
        end,
    })
    if not drive then
        ex:close()
        return nil, rec
    end
    current = { ex = ex, drive = drive }

    local group = vim.api.nvim_create_augroup("tide", { clear = true })
    vim.api.nvim_create_autocmd("VimLeavePre", {
        group = group,
        desc = "tide: cancel the jobs, end tide.exec processes, close the executor",
        callback = function() M.shutdown() end,
    })
    if command then
        vim.api.nvim_create_user_command(command, function() M.list() end,
                                         { desc = "tide: list the jobs not finished" })
    end
    return ex
end


--- The editor's executor, or nil before setup.
function M.executor()
    return current and current.ex
end


--- Prints the jobs not finished ("id status", sorted by id) and a total.
function M.list()
    if not current then
        print("tide: not set up (require('tide.nvim').setup())")
        return
    end
    local jobs = current.ex:jobs()
    table.sort(jobs, function(a, b) return tostring(a.id) < tostring(b.id) end)
    local lines = {}
    for _, j in ipairs(jobs) do lines[#lines + 1] = tostring(j.id) .. " " .. j.status end
    lines[#lines + 1] = ("tide: %d job(s) not finished"):format(#jobs)
    print(table.concat(lines, "\n"))
end


--- Cancels every job, steps so that the cancellations are handed out,
-- stops the adapter and closes the executor (tide.exec processes are
-- ended and reaped). Returns how many jobs were cancelled. Idempotent.
function M.shutdown()
    if not current then return 0 end
    local c = current
    current = nil
    local n = c.ex:cancel_all()
    for _ = 1, 10 do
        if not tide.step() then break end
    end
    c.drive:close()
    c.ex:close()
    return n
end

return M
