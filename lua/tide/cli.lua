--- The tide command line (placeholder while the engine lands).
local M = {}
function M.main(args)
    io.stderr:write("tide: cli not ready\n")
    return 2
end
return M
