-- wrk script: GET one existing resource per request.
function init(args)
  token = os.getenv("CLOISTER_TOKEN")
end

function request()
  return wrk.format("GET", "/v1/groups/bench-target", {["Authorization"] = "Bearer " .. token})
end

function done(summary, latency, requests)
  io.write(string.format("non-2xx or failed: %d\n", summary.errors.status + summary.errors.connect +
                         summary.errors.read + summary.errors.write + summary.errors.timeout))
end
