-- wrk script: send pre-built HTTP requests in turn, and print the window's numbers as one JSON line.
--
--   wrk -t1 -cN -dTs -s bench/wrk_post.lua URL -- request-file [request-file ...]
--
-- Each request file holds one complete HTTP/1.1 request (request line, headers, body), built by
-- bench/loadgen.py from real images, in both wire forms. wrk sends them round-robin, so this script
-- does no work per request beyond picking the next string.

local requests = {}
local next_index = 1

function init(args)
  for _, path in ipairs(args) do
    local file = assert(io.open(path, "rb"))
    requests[#requests + 1] = file:read("*a")
    file:close()
  end
  assert(#requests > 0, "give at least one request file after --")
end

function request()
  local wire = requests[next_index]
  next_index = next_index % #requests + 1
  return wire
end

function done(summary, latency, _)
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, errors.connect, errors.read, errors.write, errors.status,
    errors.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean,
    latency.max))
end
