-- wrk's side of bench/consume.py's bulk storm (bench/README.md, `consume`): each request
-- is one client's bulk read of its 20 secrets, on a fresh connection (a restarting
-- client), the clients taken in turn. The token comes from the environment, never the
-- command line. Prints one JSON line: responses, values read, the run's length.
local clients = tonumber(os.getenv("SECRETMIRROR_BENCH_CLIENTS"))
wrk.headers["Authorization"] = "Bearer " .. os.getenv("SECRETMIRROR_BENCH_TOKEN")
wrk.headers["Connection"] = "close"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

sent, ok, bad, values = 0, 0, 0, 0

function request()
  sent = sent + 1
  local prefix = string.format("app%03d-", sent % clients)
  return wrk.format("GET", "/api/v1/secrets?values=true&limit=1000&name_prefix=" .. prefix)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    local _, found = string.gsub(body, '"values": {"', "")
    values = values + found
  else
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local t = threads[1]
  local e = summary.errors
  io.write(string.format(
    '{"ok": %d, "bad": %d, "values": %d, "duration_us": %d, "socket_errors": %d}\n',
    t:get("ok"), t:get("bad"), t:get("values"), summary.duration,
    e.connect + e.read + e.write + e.timeout))
end
