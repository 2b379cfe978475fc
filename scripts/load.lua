-- wrk script for scripts/load-test.sh: reads of the rollouts being driven at the same time.
-- 8 in 10 requests GET one rollout, 1 in 10 its events, 1 in 10 the list (limit 100), ids at random.
-- Environment: VANE_TOKEN (viewer or operator), LOAD_IDS (a file with one rollout id per line).

local ids = {}
local headers = { ["Authorization"] = "Bearer " .. (os.getenv("VANE_TOKEN") or "") }
local n = 0

for line in io.lines(os.getenv("LOAD_IDS")) do
  ids[#ids + 1] = line
end

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

function init(args)
  math.randomseed(os.time() * 100 + (seed or 0))
end

function request()
  n = n + 1
  local id = ids[math.random(#ids)]
  local path
  if n % 10 == 0 then
    path = "/api/v1/rollouts?limit=100"
  elseif n % 10 == 5 then
    path = "/api/v1/rollouts/" .. id .. "/events"
  else
    path = "/api/v1/rollouts/" .. id
  end
  return wrk.format("GET", path, headers)
end
