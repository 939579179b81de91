-- wrk: POST /v1/kms/encrypt with a 32-byte plaintext and a context, the
-- small-payload operation a service does per request.
wrk.method = "POST"
wrk.path = "/v1/kms/encrypt"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("CLOISTER_TOKEN")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"key":"bench","plaintext":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=","context":{"tenant":"t1"}}'
