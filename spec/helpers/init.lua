-- busted helper: makes `require "tide"` load this checkout's modules and
-- the core module of the build under test (TIDE_BUILD, default build).
local build = os.getenv("TIDE_BUILD") or "build"
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = build .. "/lib/?.so;" .. package.cpath
