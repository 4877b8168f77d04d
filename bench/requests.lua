-- wrk script for the bench: every request is built from one line of a pre-generated list.
-- Configured through the environment (setup() gets no script arguments):
--   BENCH_MODE   check | status | start | callback | seed (start each phone of the thread's
--                slice once, then stop the thread: the harness stops wrk when the service
--                counted them)
--   BENCH_LIST   file with one verification id (check, status) or phone (start) per line;
--                for callback, "<token> <callId> <phone>": New-Tel's callback for an inbound
--                call, POSTed without a Bearer key (the first approves, repeats are duplicates)
--   BENCH_PATH   if set, every request goes to this path instead (the baseline's /one, /two)
--                with the same method, headers and body
--   BENCH_ADDRS  if set, "host:port,host:port": thread i connects to address i (mod count),
--                so one wrk drives several service processes on different ports
-- Each thread walks its own slice of the list (start needs each phone used once).
-- done() prints one line "BENCH_RESULT {json}" with the aggregate figures.

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  local addrs = os.getenv("BENCH_ADDRS")
  if addrs and addrs ~= "" then
    local list = {}
    for hostport in string.gmatch(addrs, "[^,]+") do
      list[#list + 1] = hostport
    end
    local hostport = list[(counter - 1) % #list + 1]
    local host, port = string.match(hostport, "^(.+):(%d+)$")
    thread.addr = wrk.lookup(host, port)[1]
  end
end

local mode, items, n, i, last, path_override
-- wrk calls request() once on the first thread before the run, only to check the request:
-- in seed mode that call must not use up a phone.
local checked = false
local headers = {
  ["Authorization"] = "Bearer dev",
  ["Content-Type"] = "application/json",
}
local callback_headers = {
  ["Content-Type"] = "application/json",
}

function init(args)
  mode = os.getenv("BENCH_MODE")
  path_override = os.getenv("BENCH_PATH")
  if path_override == "" then
    path_override = nil
  end
  items = {}
  for line in io.lines(os.getenv("BENCH_LIST")) do
    items[#items + 1] = line
  end
  n = #items
  -- Each thread has its own Lua state: the thread count comes from the environment.
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  local t = tonumber(tid) or 1
  i = math.floor((t - 1) * n / nthreads)
  last = math.floor(t * n / nthreads)
end

function request()
  if mode == "seed" and not checked and tonumber(tid) == 1 then
    checked = true
    return wrk.format("GET", "/healthz")
  end
  if mode == "seed" and i >= last then
    wrk.thread:stop()
    return wrk.format("GET", "/healthz")
  end
  i = i % n + 1
  local item = items[i]
  local method, path, body
  if mode == "check" then
    -- Six digits never match a five-digit code: always a wrong code.
    method, path, body = "POST", "/v1/verifications/" .. item .. "/check", '{"code":"000000"}'
  elseif mode == "status" then
    method, path, body = "GET", "/v1/verifications/" .. item, nil
  elseif mode == "callback" then
    local token, call_id, phone = string.match(item, "^(%S+) (%S+) (%S+)$")
    method, path = "POST", "/callbacks/newtel/" .. token
    body = '{"callId":"' .. call_id .. '","clientNumber":"' .. phone .. '"}'
    return wrk.format(method, path_override or path, callback_headers, body)
  else
    method, path, body = "POST", "/v1/verifications", '{"phone":"' .. item .. '"}'
  end
  return wrk.format(method, path_override or path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
