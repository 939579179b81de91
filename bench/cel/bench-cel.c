/* Micro-benchmark of CEL evaluation: the median time of one evaluation of
 * typical policy expressions over a request context, measured in batches
 * (compile once, evaluate millions of times, reset the arena each time). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/timeutil.h"
#include "cel/cel.h"

#define BATCH 1000
#define BATCHES 2000

static const cel_value groups_items[] = {
    {.kind = CEL_STRING, .len = 5, .str = "staff"},
    {.kind = CEL_STRING, .len = 4, .str = "devs"},
    {.kind = CEL_STRING, .len = 6, .str = "oncall"},
};
static const cel_list groups = {3, groups_items};
static const cel_map_entry user_entries[] = {
    {{.kind = CEL_STRING, .len = 4, .str = "name"}, {.kind = CEL_STRING, .len = 5, .str = "alice"}},
    {{.kind = CEL_STRING, .len = 5, .str = "email"}, {.kind = CEL_STRING, .len = 15, .str = "alice@example.c"}},
    {{.kind = CEL_STRING, .len = 6, .str = "groups"}, {.kind = CEL_LIST, .list = &groups}},
};
static const cel_map user = {3, user_entries};
static const cel_map_entry header_entries[] = {
    {{.kind = CEL_STRING, .len = 10, .str = "user-agent"}, {.kind = CEL_STRING, .len = 4, .str = "curl"}},
    {{.kind = CEL_STRING, .len = 6, .str = "accept"}, {.kind = CEL_STRING, .len = 3, .str = "*/*"}},
};
static const cel_map headers = {2, header_entries};
static const cel_map_entry http_entries[] = {
    {{.kind = CEL_STRING, .len = 6, .str = "method"}, {.kind = CEL_STRING, .len = 3, .str = "GET"}},
    {{.kind = CEL_STRING, .len = 4, .str = "path"}, {.kind = CEL_STRING, .len = 13, .str = "/wiki/Welcome"}},
    {{.kind = CEL_STRING, .len = 4, .str = "host"}, {.kind = CEL_STRING, .len = 14, .str = "wiki.localhost"}},
    {{.kind = CEL_STRING, .len = 7, .str = "headers"}, {.kind = CEL_MAP, .map = &headers}},
};
static const cel_map http = {4, http_entries};
static const cel_map_entry request_entries[] = {
    {{.kind = CEL_STRING, .len = 4, .str = "http"}, {.kind = CEL_MAP, .map = &http}},
    {{.kind = CEL_STRING, .len = 2, .str = "ip"}, {.kind = CEL_STRING, .len = 8, .str = "10.1.2.3"}},
};
static const cel_map request = {2, request_entries};
static const cel_map_entry ctx_entries[] = {
    {{.kind = CEL_STRING, .len = 4, .str = "user"}, {.kind = CEL_MAP, .map = &user}},
    {{.kind = CEL_STRING, .len = 7, .str = "request"}, {.kind = CEL_MAP, .map = &request}},
};
static const cel_map ctx = {2, ctx_entries};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Prints the median and 99th percentile of one evaluation of SRC in ns. */
static int bench(cel_env *env, const char *src)
{
    cel_program *p = NULL;
    cel_error err;
    if (cel_compile(env, src, strlen(src), &p, &err) < 0) {
        fprintf(stderr, "bench-cel: %s: %s at %u:%u\n", src, err.message, err.line, err.column);
        return 1;
    }
    cel_arena *arena = cel_arena_new(0);
    cel_value vars[1] = {cel_map_value(&ctx)};
    cel_activation act = {.vars = vars, .nvars = 1, .now_sec = 1700000000};
    static uint64_t samples[BATCHES];
    cel_value v = cel_null();
    for (int b = 0; b < BATCHES; b++) {
        uint64_t t0 = time_mono_ns();
        for (int i = 0; i < BATCH; i++) {
            if (cel_eval(p, &act, arena, 10000, &v) < 0)
                return 1;
            cel_arena_reset(arena);
        }
        samples[b] = time_mono_ns() - t0;
    }
    qsort(samples, BATCHES, sizeof(samples[0]), cmp_u64);
    printf("%8.1f ns median  %8.1f ns p99  (%s)  %s\n", samples[BATCHES / 2] / (double)BATCH,
           samples[BATCHES * 99 / 100] / (double)BATCH, v.kind == CEL_BOOL ? (v.b ? "true" : "false") : "?", src);
    cel_arena_free(arena);
    cel_program_free(p);
    return 0;
}

int main(void)
{
    static const char *const exprs[] = {
        "\"devs\" in ctx.user.groups && ctx.request.http.method in [\"GET\",\"HEAD\"]",
        "ctx.request.http.path.startsWith(\"/admin\")",
        "ctx.request.http.headers['user-agent'] == 'curl' && ctx.user.email.endsWith('@example.c')",
        "cidr('10.0.0.0/8').containsIP(ctx.request.ip)",
        "ctx.user.groups.exists(g, g.startsWith('on'))",
        "ctx.request.http.path.matches('^/wiki/[A-Z][a-z]+$')",
    };
    cel_env *env = cel_env_new();
    if (!env || cel_env_declare(env, "ctx") < 0)
        return 1;
    printf("CEL evaluation, %d x %d evaluations each\n", BATCHES, BATCH);
    for (size_t i = 0; i < sizeof(exprs) / sizeof(exprs[0]); i++)
        if (bench(env, exprs[i]))
            return 1;
    cel_env_free(env);
    return 0;
}
