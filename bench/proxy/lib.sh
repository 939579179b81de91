# Shared by the proxy benchmarks (run.sh, trace.sh): what they configure in
# cloisterd. Source it after bench/lib.sh.
#
# proxy_bench_configure WORK UPSTREAM_PORT
#     applies, with the CLI $cli (CLOISTER_SERVER and CLOISTER_CA set), the
#     bench's Group, User, Credential, 10-rule Policy and Service `static`
#     (to http://127.0.0.1:UPSTREAM_PORT; manifests in WORK/bench.yaml), and
#     sets $credential to a token of the Credential `bench` and $token to an
#     access token of the user `bench` exchanged for it.
#
# proxy_bench_token API_URL CA CREDENTIAL
#     prints a fresh access token for CREDENTIAL (they expire after 15
#     minutes: a longer run exchanges the credential again).

proxy_bench_configure() {
    local work=$1 up_port=$2
    cat >"$work/bench.yaml" <<EOF
apiVersion: cloister.dev/v1
kind: Group
metadata: {name: devs}
spec: {}
---
apiVersion: cloister.dev/v1
kind: User
metadata: {name: bench}
spec: {type: human, groups: [devs]}
---
apiVersion: cloister.dev/v1
kind: Credential
metadata: {name: bench}
spec: {user: bench, type: authToken}
---
# 10 rules; a GET of /index.html by a member of devs goes past the first 9
# (the denies first, then an allow it does not match) to the last one
apiVersion: cloister.dev/v1
kind: Policy
metadata: {name: bench-rules}
spec:
  rules:
  - {effect: deny, priority: 0, condition: {match: 'ctx.request.http.path.startsWith("/admin")'}}
  - {effect: deny, priority: 0, condition: {match: 'ctx.request.http.path.startsWith("/internal")'}}
  - {effect: deny, priority: 0, condition: {match: 'ctx.request.http.method == "DELETE"'}}
  - {effect: deny, priority: 0, condition: {all: [{match: 'ctx.request.http.method in ["PUT", "PATCH"]'}, {not: {match: '"admins" in ctx.user.groups'}}]}}
  - {effect: deny, priority: 0, condition: {match: '"x-debug" in ctx.request.http.headers && ctx.request.http.headers["x-debug"] != "0"'}}
  - {effect: deny, priority: 0, condition: {any: [{match: 'ctx.request.http.path.startsWith("/.git")'}, {match: 'ctx.request.http.path.endsWith(".env")'}]}}
  - {effect: deny, priority: 0, condition: {match: 'ctx.user.type == "workload" && ctx.request.http.method != "GET"'}}
  - {effect: deny, priority: 1, condition: {match: 'ctx.request.http.query.contains("debug=")'}}
  - {effect: allow, priority: 1, condition: {match: '"admins" in ctx.user.groups'}}
  - {effect: allow, priority: 2, condition: {match: '"devs" in ctx.user.groups && ctx.request.http.method in ["GET", "HEAD"]'}}
---
apiVersion: cloister.dev/v1
kind: Service
metadata: {name: static}
spec:
  upstream: {url: "http://127.0.0.1:$up_port"}
  policies: [bench-rules]
EOF
    "$cli" apply -f "$work/bench.yaml" >/dev/null
    credential=$("$cli" token create bench -o json |
        /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
    token=$(proxy_bench_token "$BENCH_URL" "$BENCH_CA" "$credential")
}

proxy_bench_token() {
    curl -fsS --cacert "$2" -X POST "$1/v1/auth/token" -d "{\"token\":\"$3\"}" |
        /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}
