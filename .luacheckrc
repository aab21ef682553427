-- luacheck configuration (make lint).
std = "luajit"
max_line_length = 120
unused_args = false
files["spec/**/*.lua"] = { std = "+busted" }
-- "not (x > y)" is deliberate where NaN must be rejected.
ignore = { "581" }
-- wrk scripts configure the global table wrk gives them.
files["bench/wrk_*.lua"] = { globals = { "wrk" } }
-- Files that run inside hosts read the host's global: Neovim's vim, the
-- nginx Lua module's ngx.
files["spec/fixtures/hosts/nvim_*.lua"] = { read_globals = { "vim" } }
files["spec/fixtures/hosts/ngx_*.lua"] = { read_globals = { "ngx" } }
