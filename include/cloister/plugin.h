/* Cloister's plugin ABI, version 1 (docs/plugins.md).
 *
 * A plugin is a shared object exporting one symbol, CLOISTER_PLUGIN_SYMBOL,
 * a function returning a constant cloister_plugin: its size and ABI
 * version first (the host refuses a plugin whose version it does not speak
 * or whose struct is smaller than the version's), then its callbacks. The
 * same plugin runs in the proxy's process (trusted) or in a sandbox the
 * runner starts (untrusted), where a small host speaks the phases to the
 * proxy over a Unix socket; the plugin cannot tell the difference.
 *
 * Phases (after proxy-wasm): request headers, request body, response
 * headers, response body, log (the request has ended), egress (an
 * enclave's outbound connection). Each phase callback returns CONTINUE or
 * DENY; a callback left NULL is not called for its phase.
 *
 * Rules: no h2o or jansson types cross this line; strings are a pointer and
 * a length (not NUL-terminated); what the host passes is valid only during
 * the call; the instance must be safe to call from several threads at once
 * (the proxy has one event loop per thread). */
#ifndef CLOISTER_PLUGIN_H
#define CLOISTER_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CLOISTER_PLUGIN_ABI_VERSION 1u
#define CLOISTER_PLUGIN_SYMBOL "cloister_plugin_v1"

/* Bytes and their length; not NUL-terminated. */
typedef struct cloister_str {
    const char *ptr;
    size_t len;
} cloister_str;

typedef enum cloister_phase {
    CLOISTER_PHASE_REQUEST_HEADERS = 0,
    CLOISTER_PHASE_REQUEST_BODY = 1,
    CLOISTER_PHASE_RESPONSE_HEADERS = 2,
    CLOISTER_PHASE_RESPONSE_BODY = 3,
    CLOISTER_PHASE_LOG = 4,
    CLOISTER_PHASE_EGRESS = 5,
    CLOISTER_PHASE_COUNT_ = 6,
} cloister_phase;

typedef enum cloister_action {
    CLOISTER_CONTINUE = 0,
    CLOISTER_DENY = 1, /* with the status and reason given to host->deny (else 403) */
} cloister_action;

/* One phase invocation: opaque, valid during the callback only. */
typedef struct cloister_call cloister_call;

/* What the host offers a plugin, passed to init. Functions return 0, or a
 * negative errno (-ENOENT: no such header or property; -E2BIG: over a cap;
 * -EINVAL: not in this phase). */
typedef struct cloister_host {
    uint32_t size;        /* sizeof(cloister_host) of the host's version */
    uint32_t abi_version; /* CLOISTER_PLUGIN_ABI_VERSION */
    /* The value of header NAME (any case; repeated ones: the first) of the
     * request, or in the response phases of the response. */
    int (*get_header)(cloister_call *call, cloister_str name, cloister_str *ret_value);
    /* The number of headers, and the I-th of them (names in lower case). */
    size_t (*header_count)(cloister_call *call);
    int (*header_at)(cloister_call *call, size_t i, cloister_str *ret_name, cloister_str *ret_value);
    /* A property of the call: "request.id", "request.method",
     * "request.path", "request.host", "source.ip", "service.name",
     * "user.name", "user.email", "response.status", "enclave.name",
     * "egress.host", "egress.port", "decision". */
    int (*get_property)(cloister_call *call, cloister_str name, cloister_str *ret_value);
    /* The body in the body phases (as much as the host buffered). */
    int (*get_body)(cloister_call *call, cloister_str *ret_body);
    /* Header changes (headers phases): set replaces every NAME, remove
     * drops them. Identity headers (x-cloister-*) cannot be set. */
    int (*set_header)(cloister_call *call, cloister_str name, cloister_str value);
    int (*remove_header)(cloister_call *call, cloister_str name);
    /* The status (400..599) and reason a DENY answers with. */
    int (*deny)(cloister_call *call, int status, cloister_str reason);
    /* A tag recorded with the decision (egress: in its audit entry). */
    int (*tag)(cloister_call *call, cloister_str key, cloister_str value);
    /* A line in the host's log (level: 0 debug, 1 info, 2 warn, 3 error). */
    void (*log)(cloister_call *call, int level, cloister_str message);
} cloister_host;

typedef cloister_action (*cloister_phase_fn)(void *instance, cloister_call *call);

typedef struct cloister_plugin {
    uint32_t size;        /* sizeof(cloister_plugin) of the plugin's version */
    uint32_t abi_version; /* CLOISTER_PLUGIN_ABI_VERSION */
    const char *name;     /* for logs */
    /* Makes an instance of CONFIG (JSON text) talking to HOST (valid for
     * the instance's life). Returns 0 and *RET_INSTANCE, or a negative errno
     * with a reason in ERR (ERR_SIZE bytes, NUL-terminated). */
    int (*init)(const cloister_host *host, cloister_str config, void **ret_instance, char *err, size_t err_size);
    void (*destroy)(void *instance);
    /* One callback per phase (cloister_phase order); NULL: not handled. */
    cloister_phase_fn phases[CLOISTER_PHASE_COUNT_];
} cloister_plugin;

/* The one symbol a plugin exports (its name is CLOISTER_PLUGIN_SYMBOL). */
typedef const cloister_plugin *(*cloister_plugin_entry)(void);
__attribute__((visibility("default"))) const cloister_plugin *cloister_plugin_v1(void);

#ifdef __cplusplus
}
#endif

#endif
