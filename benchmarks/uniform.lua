-- "miss": identifiers drawn uniformly from 0..UNIVERSE-1, so with a million
-- identifiers nearly every request misses a cache of a tenth of them.
-- wrk -s uniform.lua URL -- PREFIX LETTER WIDTH UNIVERSE [SEED]
local path
local universe = 1

function init(args)
  local prefix, letter, width = args[1], args[2], tonumber(args[3])
  universe = tonumber(args[4])
  math.randomseed(tonumber(args[5] or "1"))
  path = "/api/handles/" .. prefix .. "/" .. letter .. "%0" .. width .. "d"
end

function request()
  return wrk.format("GET", string.format(path, math.random(0, universe - 1)))
end
