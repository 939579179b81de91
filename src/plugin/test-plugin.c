/* The plugin host's units: the host functions over a call, the wire
 * protocol both ways, and what the decoders refuse. */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "plugin/plugin.h"
#include "plugin/wire.h"

static cloister_str S(const char *s)
{
    return (cloister_str){s, strlen(s)};
}

static plugin_call call;
static cloister_host host;

static void no_log(cloister_call *c, int level, cloister_str m)
{
    (void)c, (void)level, (void)m;
}

Test(plugin, host_functions_read_and_answer)
{
    plugin_host_table(&host, no_log);
    plugin_call_init(&call, CLOISTER_PHASE_REQUEST_HEADERS);
    cr_assert_eq(plugin_call_prop(&call, "user.name", "alice", 5), 0);
    cr_assert_eq(plugin_call_header(&call, "x-team", 6, "blue", 4), 0);
    cloister_str v;
    cr_assert_eq(host.get_header(&call, S("X-Team"), &v), 0);
    cr_assert(v.len == 4 && memcmp(v.ptr, "blue", 4) == 0);
    cr_assert_eq(host.get_header(&call, S("x-other"), &v), -ENOENT);
    cr_assert_eq(host.get_property(&call, S("user.name"), &v), 0);
    cr_assert_eq(host.get_body(&call, &v), -EINVAL, "no body outside the body phases");
    cr_assert_eq(host.set_header(&call, S("X-Added"), S("yes")), 0);
    cr_assert_eq(host.set_header(&call, S("x-cloister-user"), S("mallory")), -EINVAL, "identity headers are ours");
    cr_assert_eq(host.set_header(&call, S("x-bad"), S("a\r\nb")), -EINVAL);
    cr_assert_eq(host.deny(&call, 200, S("not a refusal")), -EINVAL);
    cr_assert_eq(host.deny(&call, 451, S("no\nway")), 0);
    cr_assert_str_eq(call.reason, "no?way");
    cr_assert_eq(call.n_ops, 1);
    cr_assert(call.ops[0].name.len == 7 && memcmp(call.ops[0].name.ptr, "x-added", 7) == 0, "lower-cased");
    plugin_call_init(&call, CLOISTER_PHASE_LOG);
    cr_assert_eq(host.set_header(&call, S("x-added"), S("yes")), -EINVAL, "no header changes in the log phase");
}

Test(plugin, wire_round_trip)
{
    plugin_host_table(&host, no_log);
    plugin_call_init(&call, CLOISTER_PHASE_EGRESS);
    plugin_call_prop(&call, "egress.host", "example.com", 11);
    plugin_call_header(&call, "a", 1, "b", 1);
    strbuf b;
    strbuf_init(&b, PLUGIN_FRAME_MAX + 4);
    cr_assert_eq(plugin_wire_call(&b, &call), 0);
    static plugin_call got;
    cr_assert_eq(plugin_wire_decode_call((const uint8_t *)b.data + 4, b.len - 4, &got), 0);
    cr_assert_eq(got.phase, CLOISTER_PHASE_EGRESS);
    cr_assert_eq(got.n_props, 1);
    cr_assert(got.props[0].value.len == 11 && memcmp(got.props[0].value.ptr, "example.com", 11) == 0);
    /* the sandbox answers: deny with a tag */
    host.tag(&got, S("purpose"), S("billing"));
    host.deny(&got, 403, S("no"));
    got.action = CLOISTER_DENY;
    strbuf_reset(&b);
    cr_assert_eq(plugin_wire_answer(&b, &got), 0);
    cr_assert_eq(plugin_wire_decode_answer((const uint8_t *)b.data + 4, b.len - 4, &call), 0);
    cr_assert_eq(call.action, CLOISTER_DENY);
    cr_assert_eq(call.status, 403);
    cr_assert_str_eq(call.reason, "no");
    cr_assert_eq(call.n_tags, 1);
    /* every cut of the frame is refused, never read past */
    for (size_t n = 0; n + 4 < b.len; n++)
        cr_assert_eq(plugin_wire_decode_answer((const uint8_t *)b.data + 4, n, &call), -EBADMSG, "cut at %zu", n);
    strbuf_free(&b);
}

Test(plugin, garbage_refused)
{
    static const uint8_t wrong_type[] = {PLUGIN_FRAME_CALL, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    cr_assert_eq(plugin_wire_decode_answer(wrong_type, sizeof(wrong_type), &call), -EBADMSG);
    static const uint8_t bad_status[] = {PLUGIN_FRAME_ANSWER, 1, 200, 0, 0, 0, 0, 0, 0, 0};
    cr_assert_eq(plugin_wire_decode_answer(bad_status, sizeof(bad_status), &call), -EBADMSG, "a deny with 200");
    static const uint8_t too_many_ops[] = {PLUGIN_FRAME_ANSWER, 0, 0, 0, 0, 0, 0xff, 0xff};
    cr_assert_eq(plugin_wire_decode_answer(too_many_ops, sizeof(too_many_ops), &call), -EBADMSG);
    static const uint8_t trailing[] = {PLUGIN_FRAME_ANSWER, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7};
    cr_assert_eq(plugin_wire_decode_answer(trailing, sizeof(trailing), &call), -EBADMSG, "bytes left over");
    static const uint8_t bad_phase[] = {PLUGIN_FRAME_CALL, 9, 0, 0, 0, 0, 0, 0, 0, 0};
    cr_assert_eq(plugin_wire_decode_call(bad_phase, sizeof(bad_phase), &call), -EBADMSG);
}

Test(plugin, a_sandbox_cannot_smuggle_headers)
{
    /* frames written by a plugin of its own, past the sandbox's host functions */
    static const struct {
        const char *name, *value;
    } bad[] = {{"x-ok", "a\r\nx-injected: 1"}, {"x-cloister-user", "admin"}, {"bad name", "v"}, {"", "v"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        plugin_call_init(&call, CLOISTER_PHASE_REQUEST_HEADERS);
        call.ops[0] = (plugin_op){PLUGIN_OP_SET, S(bad[i].name), S(bad[i].value)};
        call.n_ops = 1;
        strbuf b;
        strbuf_init(&b, 1 << 20);
        cr_assert_eq(plugin_wire_answer(&b, &call), 0);
        static plugin_call got;
        cr_assert_eq(plugin_wire_decode_answer((const uint8_t *)b.data + 4, b.len - 4, &got), -EBADMSG, "%s: %s",
                     bad[i].name, bad[i].value);
        strbuf_free(&b);
    }
}

Test(plugin, names_and_directory)
{
    cr_assert(plugin_name_valid("claims-auth"));
    cr_assert(!plugin_name_valid("../etc/passwd"));
    cr_assert(!plugin_name_valid("Upper"));
    cr_assert(!plugin_name_valid(""));
    void *h;
    const cloister_plugin *p;
    char err[PLUGIN_ERROR_MAX];
    cr_assert_eq(plugin_library_open("/nonexistent-dir", "noop", &h, &p, err, sizeof(err)), -ENOENT);
    cr_assert(strstr(err, "plugin noop"), "%s", err);
    cr_assert_eq(plugin_library_open("/tmp", "../x", &h, &p, err, sizeof(err)), -EINVAL);
}

/* The built test plugins: plugins/testing beside this test's executable
 * (the build tree's root). */
static void testing_dir(char *out, size_t size)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert(n > 0);
    self[n] = 0;
    snprintf(out, size, "%s/plugins/testing", dirname(self));
}

Test(plugin, load_checks_the_abi_version)
{
    char dir[PATH_MAX + 32], err[PLUGIN_ERROR_MAX];
    testing_dir(dir, sizeof(dir));
    void *h;
    const cloister_plugin *p;
    cr_assert_eq(plugin_library_open(dir, "noop", &h, &p, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(p->abi_version, CLOISTER_PLUGIN_ABI_VERSION);
    dlclose(h);
    cr_assert_eq(plugin_library_open(dir, "abi-v2", &h, &p, err, sizeof(err)), -EPROTO);
    cr_assert(strstr(err, "plugin abi-v2: ABI version mismatch: this host expects version 1, the plugin has version 2"),
              "%s", err);
}

Test(plugin, trusted_instances_run_in_process_and_are_shared)
{
    char dir[PATH_MAX + 32], err[PLUGIN_ERROR_MAX];
    testing_dir(dir, sizeof(dir));
    cr_assert_eq(plugin_host_configure(dir, "noop,abi-v2", NULL), 0);
    plugin_instance *a, *b, *c;
    cr_assert_eq(plugin_instance_get("noop", "{}", 100, &a, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(plugin_instance_get("noop", "{}", 100, &b, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(a, b, "one instance per plugin, config and timeout");
    cr_assert(plugin_instance_in_process(a));
    plugin_call_init(&call, CLOISTER_PHASE_REQUEST_HEADERS);
    cr_assert_eq(plugin_instance_run(a, &call, err, sizeof(err)), PLUGIN_OUTCOME_OK);
    cr_assert_eq(call.action, CLOISTER_CONTINUE);
    plugin_instance_unref(a);
    plugin_instance_unref(b);
    cr_assert_eq(plugin_instance_get("abi-v2", "{}", 100, &c, err, sizeof(err)), -EPROTO);
    cr_assert(strstr(err, "ABI version mismatch"), "%s", err);
    cr_assert_eq(plugin_instance_get("crash", "{}", 100, &c, err, sizeof(err)), -ENOENT, "untrusted, no runner");
    cr_assert(strstr(err, "not trusted"), "%s", err);
}
