-- luacheck configuration (make lint).
std = "luajit"
max_line_length = 120
unused_args = false
files["spec/**/*.lua"] = { std = "+busted" }
-- "not (x > y)" is deliberate where NaN must be rejected.
ignore = { "581" }
-- wrk scripts configure the global table wrk gives them.
files["bench/wrk_*.lua"] = { globals = { "wrk" } }
