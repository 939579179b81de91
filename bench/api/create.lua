-- wrk script: POST a new resource per request (unique names per thread):
-- a Group (BENCH_KIND=groups, default; groups feed policy decisions, so each
-- write makes the next decision rebuild the policy set) or an
-- AttestationPolicy (BENCH_KIND=attestationpolicies; no policy input).
local counter = 0

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  token = os.getenv("CLOISTER_TOKEN")
  run = os.getenv("BENCH_RUN") or "r"
  kind = os.getenv("BENCH_KIND") or "groups"
end

function request()
  counter = counter + 1
  local name = string.format("b%s-%d-%d", run, thread_id, counter)
  local body
  if kind == "groups" then
    body = '{"apiVersion":"cloister.dev/v1","kind":"Group","metadata":{"name":"' .. name ..
           '"},"spec":{"policies":["devs-read"]}}'
  else
    body = '{"apiVersion":"cloister.dev/v1","kind":"AttestationPolicy","metadata":{"name":"' .. name ..
           '"},"spec":{"types":["sandbox"]}}'
  end
  return wrk.format("POST", "/v1/" .. kind, {["Authorization"] = "Bearer " .. token,
                                            ["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status ~= 201 then
    errors = (errors or 0) + 1
  end
end

function done(summary, latency, requests)
  io.write(string.format("non-2xx or failed: %d\n", summary.errors.status + summary.errors.connect +
                         summary.errors.read + summary.errors.write + summary.errors.timeout))
end
