-- "cached": a small hot set of identifiers, requested again and again.
-- wrk -s hot.lua URL -- PREFIX LETTER WIDTH HOT UNIVERSE [SEED]
-- The HOT identifiers are spread over 0..UNIVERSE-1 (n = i * 7919 mod UNIVERSE);
-- their requests are formatted once, in init.
local requests = {}
local hot = 0

function init(args)
  local prefix, letter, width = args[1], args[2], tonumber(args[3])
  local universe = tonumber(args[5])
  hot = tonumber(args[4])
  math.randomseed(tonumber(args[6] or "1"))
  local path = "/api/handles/" .. prefix .. "/" .. letter .. "%0" .. width .. "d"
  for i = 1, hot do
    requests[i] = wrk.format("GET", string.format(path, ((i - 1) * 7919) % universe))
  end
end

function request()
  return requests[math.random(hot)]
end
