/* Policy decision benchmark: N policies of 10 rules (a mix of group, method,
 * path-prefix, header and CIDR conditions) attached to one service, decided
 * for a fixed sample of requests. Prints decisions/s, median and p99 latency.
 * With --emit FILE it also writes the rule set and the requests as JSON for
 * the peers (Cedar, cel-js) that bench/policy/peers.mjs runs.
 *
 *   bench-policy --policies N [--requests R] [--seconds S] [--emit FILE] */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "basic/macro.h"
#include "policy/policy.h"

#define RULES_PER_POLICY 10
#define GROUPS 30
#define USERS 200
#define TEAMS 20

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static unsigned rnd(unsigned n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state % n);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One generated rule, in the shape both CEL and Cedar are written from. */
typedef struct gen_rule {
    char policy[16];
    char name[16];
    bool deny;
    int priority;
    char cel[512];
    char cedar[512];
} gen_rule;

/* Writes rule K of policy P into R. */
static void gen(gen_rule *r, unsigned p, unsigned k)
{
    unsigned g = rnd(GROUPS), t = rnd(TEAMS), c = rnd(256);
    snprintf(r->policy, sizeof(r->policy), "p%u", p);
    snprintf(r->name, sizeof(r->name), "r%u", k);
    r->deny = false;
    r->priority = 0;
    switch (k) {
    case 0:
        snprintf(r->cel, sizeof(r->cel), "\"g%u\" in ctx.user.groups && ctx.request.http.method in [\"GET\", \"HEAD\"]", g);
        snprintf(r->cedar, sizeof(r->cedar), "context.groups.contains(\"g%u\") && [\"GET\", \"HEAD\"].contains(context.method)", g);
        break;
    case 1:
        r->deny = true;
        r->priority = -1;
        snprintf(r->cel, sizeof(r->cel), "ctx.request.http.path.startsWith(\"/p%u/admin\")", p);
        snprintf(r->cedar, sizeof(r->cedar), "context.path like \"/p%u/admin*\"", p);
        break;
    case 2:
        snprintf(r->cel, sizeof(r->cel), "ctx.request.http.headers[\"x-team\"] == \"team%u\" && ctx.request.http.method == \"POST\"", t);
        snprintf(r->cedar, sizeof(r->cedar), "context.team == \"team%u\" && context.method == \"POST\"", t);
        break;
    case 3:
        snprintf(r->cel, sizeof(r->cel), "cidr(\"10.%u.0.0/16\").containsIP(ctx.request.ip) && ctx.request.http.path.startsWith(\"/p%u/\")", c, p);
        snprintf(r->cedar, sizeof(r->cedar), "context.ip.isInRange(ip(\"10.%u.0.0/16\")) && context.path like \"/p%u/*\"", c, p);
        break;
    case 4:
        snprintf(r->cel, sizeof(r->cel), "\"g%u\" in ctx.user.groups && ctx.request.http.path.startsWith(\"/p%u/docs\")", g, p);
        snprintf(r->cedar, sizeof(r->cedar), "context.groups.contains(\"g%u\") && context.path like \"/p%u/docs*\"", g, p);
        break;
    case 5:
        r->deny = true;
        r->priority = 1;
        snprintf(r->cel, sizeof(r->cel), "ctx.request.http.method == \"DELETE\" && !(\"g%u\" in ctx.user.groups)", g);
        snprintf(r->cedar, sizeof(r->cedar), "context.method == \"DELETE\" && !context.groups.contains(\"g%u\")", g);
        break;
    case 6:
        snprintf(r->cel, sizeof(r->cel), "ctx.request.http.method == \"PUT\" && ctx.request.http.path.startsWith(\"/p%u/api\") && \"g%u\" in ctx.user.groups", p, g);
        snprintf(r->cedar, sizeof(r->cedar), "context.method == \"PUT\" && context.path like \"/p%u/api*\" && context.groups.contains(\"g%u\")", p, g);
        break;
    case 7:
        r->deny = true;
        r->priority = -2;
        snprintf(r->cel, sizeof(r->cel), "cidr(\"192.168.%u.0/24\").containsIP(ctx.request.ip)", c);
        snprintf(r->cedar, sizeof(r->cedar), "context.ip.isInRange(ip(\"192.168.%u.0/24\"))", c);
        break;
    case 8:
        snprintf(r->cel, sizeof(r->cel), "ctx.request.http.headers[\"x-team\"] == \"team%u\" && \"g%u\" in ctx.user.groups", t, g);
        snprintf(r->cedar, sizeof(r->cedar), "context.team == \"team%u\" && context.groups.contains(\"g%u\")", t, g);
        break;
    default:
        r->priority = 2;
        snprintf(r->cel, sizeof(r->cel), "ctx.request.http.path.startsWith(\"/p%u/public/\")", p);
        snprintf(r->cedar, sizeof(r->cedar), "context.path like \"/p%u/public/*\"", p);
        break;
    }
}

/* One generated request and the values its policy_request borrows. */
typedef struct gen_req {
    char user[16], method[8], path[64], team[16], ip[24];
    char groups[2][8];
    cel_value group_items[2];
    cel_list group_list;
    cel_map_entry header;
    cel_map headers;
    policy_request req;
} gen_req;

static void gen_request(gen_req *q, unsigned n_policies)
{
    static const char *const methods[] = {"GET", "GET", "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE"};
    static const char *const dirs[] = {"docs", "api", "admin", "public", "x"};
    snprintf(q->user, sizeof(q->user), "u%u", rnd(USERS));
    snprintf(q->method, sizeof(q->method), "%s", methods[rnd(ELEMENTSOF(methods))]);
    snprintf(q->path, sizeof(q->path), "/p%u/%s/item%u", rnd(n_policies), dirs[rnd(ELEMENTSOF(dirs))], rnd(100));
    snprintf(q->team, sizeof(q->team), "team%u", rnd(TEAMS));
    if (rnd(10) == 0)
        snprintf(q->ip, sizeof(q->ip), "192.168.%u.5", rnd(256));
    else
        snprintf(q->ip, sizeof(q->ip), "10.%u.1.2", rnd(256));
    for (unsigned i = 0; i < 2; i++) {
        snprintf(q->groups[i], sizeof(q->groups[i]), "g%u", rnd(GROUPS));
        q->group_items[i] = cel_cstring(q->groups[i]);
    }
}

/* Points Q's policy_request at its strings (after Q stopped moving). */
static void bind_request(gen_req *q)
{
    policy_request_init(&q->req);
    policy_request_set_string(&q->req, POLICY_VAR_USER_NAME, q->user);
    policy_request_set_string(&q->req, POLICY_VAR_SERVICE_NAME, "app");
    policy_request_set_string(&q->req, POLICY_VAR_HTTP_METHOD, q->method);
    policy_request_set_string(&q->req, POLICY_VAR_HTTP_PATH, q->path);
    policy_request_set_string(&q->req, POLICY_VAR_REQUEST_IP, q->ip);
    q->group_list = (cel_list){2, q->group_items};
    q->req.vars[POLICY_VAR_USER_GROUPS] = cel_list_value(&q->group_list);
    q->header = (cel_map_entry){cel_cstring("x-team"), cel_cstring(q->team)};
    q->headers = (cel_map){1, &q->header};
    q->req.vars[POLICY_VAR_HTTP_HEADERS] = cel_map_value(&q->headers);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Writes the rules and requests for the peers. Returns 0 or -errno. */
static int emit(const char *file, const gen_rule *rules, size_t n_rules, const gen_req *reqs, size_t n_reqs)
{
    json_t *jr = json_array(), *jq = json_array();
    for (size_t i = 0; i < n_rules; i++)
        json_array_append_new(jr, json_pack("{s:s, s:s, s:s, s:i, s:s, s:s}", "policy", rules[i].policy, "name",
                                            rules[i].name, "effect", rules[i].deny ? "deny" : "allow", "priority",
                                            rules[i].priority, "cel", rules[i].cel, "cedar", rules[i].cedar));
    for (size_t i = 0; i < n_reqs; i++)
        json_array_append_new(jq, json_pack("{s:s, s:[s,s], s:s, s:s, s:s, s:s}", "user", reqs[i].user, "groups",
                                            reqs[i].groups[0], reqs[i].groups[1], "method", reqs[i].method, "path",
                                            reqs[i].path, "team", reqs[i].team, "ip", reqs[i].ip));
    json_t *out = json_pack("{s:o, s:o}", "rules", jr, "requests", jq);
    int r = json_dump_file(out, file, JSON_COMPACT) < 0 ? -EIO : 0;
    json_decref(out);
    return r;
}

int main(int argc, char **argv)
{
    unsigned n_policies = 100, n_requests = 1000;
    double seconds = 2;
    const char *emit_file = NULL;
    static const struct option options[] = {
        {"policies", required_argument, NULL, 'p'}, {"requests", required_argument, NULL, 'r'},
        {"seconds", required_argument, NULL, 's'},  {"emit", required_argument, NULL, 'e'}, {},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
        if (c == 'p')
            n_policies = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 'r')
            n_requests = (unsigned)strtoul(optarg, NULL, 10);
        else if (c == 's')
            seconds = strtod(optarg, NULL);
        else if (c == 'e')
            emit_file = optarg;
        else
            return 2;
    }
    if (n_policies == 0 || n_requests == 0 || n_policies > 100000 || n_requests > 1000000)
        return 2;

    size_t n_rules = (size_t)n_policies * RULES_PER_POLICY;
    gen_rule *rules = calloc(n_rules, sizeof(*rules));
    gen_req *reqs = calloc(n_requests, sizeof(*reqs));
    if (!rules || !reqs)
        return 1;
    json_t *policies = json_array(), *attached = json_array();
    for (unsigned p = 0; p < n_policies; p++) {
        json_t *jr = json_array();
        for (unsigned k = 0; k < RULES_PER_POLICY; k++) {
            gen_rule *r = &rules[p * RULES_PER_POLICY + k];
            gen(r, p, k);
            json_array_append_new(jr, json_pack("{s:s, s:s, s:i, s:{s:s}}", "name", r->name, "effect",
                                                r->deny ? "deny" : "allow", "priority", r->priority, "condition",
                                                "match", r->cel));
        }
        json_t *doc = json_pack("{s:s, s:{s:s}, s:{s:o}}", "kind", "Policy", "metadata", "name", rules[p * RULES_PER_POLICY].policy,
                                "spec", "rules", jr);
        if (policy_validate_document(doc, NULL) < 0) {
            fprintf(stderr, "generated policy %u does not validate\n", p);
            return 1;
        }
        json_array_append_new(policies, doc);
        json_array_append_new(attached, json_string(rules[p * RULES_PER_POLICY].policy));
    }
    json_t *services = json_pack("[{s:{s:s}, s:{s:o}}]", "metadata", "name", "app", "spec", "policies", attached);
    policy_set *set;
    uint64_t t0 = now_ns();
    if (policy_set_new(policies, NULL, NULL, NULL, services, &set) < 0)
        return 1;
    uint64_t build_ns = now_ns() - t0;
    json_decref(policies);
    json_decref(services);
    for (unsigned i = 0; i < n_requests; i++)
        gen_request(&reqs[i], n_policies);
    for (unsigned i = 0; i < n_requests; i++)
        bind_request(&reqs[i]);
    if (emit_file && emit(emit_file, rules, n_rules, reqs, n_requests) < 0) {
        fprintf(stderr, "cannot write %s\n", emit_file);
        return 1;
    }

    cel_arena *arena = cel_arena_new(POLICY_ARENA_MAX);
    size_t cap = 1u << 22, n = 0, allowed = 0;
    uint64_t *lat = malloc(cap * sizeof(uint64_t));
    if (!arena || !lat)
        return 1;
    policy_decision d;
    for (unsigned i = 0; i < n_requests; i++) /* warm the combination cache */
        policy_decide(set, &reqs[i].req, arena, &d);
    uint64_t start = now_ns(), deadline = start + (uint64_t)(seconds * 1e9);
    while (n < cap) {
        const policy_request *q = &reqs[n % n_requests].req;
        uint64_t a = now_ns();
        if (policy_decide(set, q, arena, &d) < 0)
            return 1;
        uint64_t b = now_ns();
        lat[n++] = b - a;
        allowed += d.allow;
        if (b >= deadline)
            break;
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    qsort(lat, n, sizeof(uint64_t), cmp_u64);
    printf("{\"engine\":\"cloister\",\"policies\":%u,\"rules\":%zu,\"decisions\":%zu,\"per_sec\":%.0f,"
           "\"median_ns\":%llu,\"p99_ns\":%llu,\"allowed_pct\":%.1f,\"build_ms\":%.1f}\n",
           n_policies, n_rules, n, (double)n / elapsed, (unsigned long long)lat[n / 2],
           (unsigned long long)lat[(size_t)((double)n * 0.99)], 100.0 * (double)allowed / (double)n,
           (double)build_ns / 1e6);
    free(lat);
    cel_arena_free(arena);
    policy_set_unref(set);
    free(rules);
    free(reqs);
    return 0;
}
