-- "zipf": ranks drawn from Zipf(S) over UNIVERSE identifiers (rank r, 1-based,
-- with probability proportional to r^-S) by inverse CDF: the cumulative
-- weights are computed once in init, each request binary-searches them.
-- Ranks are scattered over the identifiers (n = (r - 1) * 7919 mod UNIVERSE)
-- so the hot records are not neighbours in the table.
-- wrk -s zipf.lua URL -- PREFIX LETTER WIDTH UNIVERSE S [SEED]
local path
local cdf = {}
local universe = 1

function init(args)
  local prefix, letter, width = args[1], args[2], tonumber(args[3])
  universe = tonumber(args[4])
  local s = tonumber(args[5])
  math.randomseed(tonumber(args[6] or "1"))
  path = "/api/handles/" .. prefix .. "/" .. letter .. "%0" .. width .. "d"
  local total = 0
  for r = 1, universe do
    total = total + r ^ -s
    cdf[r] = total
  end
  for r = 1, universe do
    cdf[r] = cdf[r] / total
  end
end

local function rank()
  local u = math.random()
  local lo, hi = 1, universe
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] <= u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  return wrk.format("GET", string.format(path, ((rank() - 1) * 7919) % universe))
end
