--- The entry of `require "tide"` for package paths that have a `?.lua`
-- entry but no `?/init.lua` one (the default of some hosts): the module
-- itself is tide/init.lua, reached here as "tide.init".
return require "tide.init"
