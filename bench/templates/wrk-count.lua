-- wrk script of the deploy-under-load extra: counts responses by their
-- X-Version header (which release answered) and by status, over all threads,
-- and prints them after wrk's own summary, one per line:
--
--   zdbench version v2 41237
--   zdbench status 200 81544
--
-- A response without X-Version counts under "-". wrk's summary lines are
-- untouched, so bench/zdbench/wrk.py reads them as for any other run.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  versions = {}
  statuses = {}
end

local function version_of(headers)
  local v = headers["x-version"] or headers["X-Version"]
  if v then
    return v
  end
  for name, value in pairs(headers) do
    if string.lower(name) == "x-version" then
      return value
    end
  end
  return "-"
end

function response(status, headers, body)
  local v = version_of(headers)
  versions[v] = (versions[v] or 0) + 1
  statuses[status] = (statuses[status] or 0) + 1
end

local function add(into, counts)
  for key, n in pairs(counts or {}) do
    into[key] = (into[key] or 0) + n
  end
end

function done(summary, latency, requests)
  local v, s = {}, {}
  for _, thread in ipairs(threads) do
    add(v, thread:get("versions"))
    add(s, thread:get("statuses"))
  end
  for key, n in pairs(v) do
    io.write(string.format("zdbench version %s %d\n", key, n))
  end
  for key, n in pairs(s) do
    io.write(string.format("zdbench status %d %d\n", key, n))
  end
end
