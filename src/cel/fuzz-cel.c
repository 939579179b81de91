/* libFuzzer target: compile the input as a CEL expression (lenient, with a
 * few variables bound) and evaluate it under a small cost limit. */
#include <stddef.h>
#include <stdint.h>

#include "cel/cel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cel_env *env;
    static cel_arena *arena;
    if (!env) {
        env = cel_env_new();
        arena = cel_arena_new(1u << 20);
        if (!env || !arena)
            return 0;
        cel_env_set_lenient(env, true);
        cel_env_declare(env, "x");
        cel_env_declare(env, "ctx");
    }
    cel_program *p = NULL;
    cel_error err;
    if (cel_compile(env, (const char *)data, size, &p, &err) < 0)
        return 0;
    static const cel_value groups_items[] = {
        {.kind = CEL_STRING, .len = 4, .str = "devs"},
        {.kind = CEL_STRING, .len = 6, .str = "admins"},
    };
    static const cel_list groups = {2, groups_items};
    static const cel_map_entry user_entries[] = {
        {{.kind = CEL_STRING, .len = 4, .str = "name"}, {.kind = CEL_STRING, .len = 5, .str = "alice"}},
        {{.kind = CEL_STRING, .len = 6, .str = "groups"}, {.kind = CEL_LIST, .list = &groups}},
    };
    static const cel_map user = {2, user_entries};
    static const cel_map_entry ctx_entries[] = {
        {{.kind = CEL_STRING, .len = 4, .str = "user"}, {.kind = CEL_MAP, .map = &user}},
    };
    static const cel_map ctx = {1, ctx_entries};
    cel_value vars[2] = {cel_int(42), cel_map_value(&ctx)};
    cel_activation act = {.vars = vars, .nvars = 2, .now_sec = 1700000000};
    cel_value v;
    if (cel_eval(p, &act, arena, 10000, &v) == 0) {
        strbuf out;
        strbuf_init(&out, 1u << 16);
        cel_value_format(&v, &out);
        strbuf_free(&out);
    }
    cel_arena_reset(arena);
    cel_program_free(p);
    return 0;
}
