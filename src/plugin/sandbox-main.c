/* cloister-plugin-sandbox: an untrusted plugin's host inside the sandbox
 * the runner starts (runner/plugins.c). The plugin directory is the
 * sandbox's read-only /app; argv[1] names the plugin; fd 3 is the proxy's
 * connection. It reads INIT, loads and initialises the plugin, answers
 * READY, then answers each CALL (wire.h) until the proxy hangs up. A call
 * running past its timeout (plus a second's grace) ends the process: the
 * proxy has given up on it already. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "plugin/plugin.h"
#include "plugin/wire.h"

#define SOCKET_FD 3
#define PLUGIN_DIR "/app"

/* A plugin's log line: to stderr, which the runner keeps. */
static void sandbox_log(cloister_call *call, int level, cloister_str message)
{
    (void)call;
    static const char *const names[] = {"debug", "info", "warn", "error"};
    fprintf(stderr, "plugin sandbox: %s: %.*s\n", names[level < 0 ? 0 : level > 3 ? 3 : level], (int)message.len,
            message.ptr);
}

static int send_frame(strbuf *b)
{
    int r = plugin_write_all(SOCKET_FD, b->data, b->len, 0);
    strbuf_reset(b);
    return r;
}

/* Arms (MS > 0) or disarms the watchdog of a call. */
static void watchdog(uint32_t ms)
{
    struct itimerval t = {.it_value = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000}};
    setitimer(ITIMER_REAL, &t, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: cloister-plugin-sandbox NAME (fd 3: the proxy's connection)\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, SIG_DFL);
    uint8_t *buf = NULL;
    size_t cap = 0;
    strbuf out;
    strbuf_init(&out, PLUGIN_FRAME_MAX + 4);
    ssize_t n = plugin_read_frame(SOCKET_FD, &buf, &cap, 0);
    uint32_t timeout_ms;
    cloister_str config;
    if (n < 0 || plugin_wire_decode_init(buf, (size_t)n, &timeout_ms, &config) < 0) {
        fprintf(stderr, "plugin sandbox: no valid INIT frame\n");
        return 1;
    }
    char err[PLUGIN_ERROR_MAX] = "";
    void *handle;
    const cloister_plugin *plugin;
    void *instance = NULL;
    cloister_host host;
    plugin_host_table(&host, sandbox_log);
    /* the config is NUL-terminated for the plugin's JSON parser's sake */
    char *config_text = strndup(config.ptr, config.len);
    if (!config_text)
        snprintf(err, sizeof(err), "out of memory");
    else if (plugin_library_open(PLUGIN_DIR, argv[1], &handle, &plugin, err, sizeof(err)) == 0) {
        char why[256] = "";
        if (plugin->init(&host, (cloister_str){config_text, config.len}, &instance, why, sizeof(why)) < 0 ||
            !instance) {
            why[sizeof(why) - 1] = 0;
            snprintf(err, sizeof(err), "plugin %.63s: its init refused the configuration: %.180s", argv[1],
                     why[0] ? why : "no reason given");
            instance = NULL;
        }
    }
    if (plugin_wire_ready(&out, instance != NULL, err) < 0 || send_frame(&out) < 0 || !instance)
        return 1;
    plugin_call *call = malloc(sizeof(*call));
    if (!call)
        return 1;
    for (;;) {
        n = plugin_read_frame(SOCKET_FD, &buf, &cap, 0);
        if (n == -EPIPE)
            break; /* the proxy hung up */
        if (n < 0 || plugin_wire_decode_call(buf, (size_t)n, call) < 0) {
            fprintf(stderr, "plugin sandbox: a frame the protocol refuses; exiting\n");
            return 1;
        }
        cloister_phase_fn fn = plugin->phases[call->phase];
        if (fn) {
            watchdog(timeout_ms + 1000);
            call->action = fn(instance, call) == CLOISTER_DENY ? CLOISTER_DENY : CLOISTER_CONTINUE;
            watchdog(0);
        }
        if (plugin_wire_answer(&out, call) < 0 || send_frame(&out) < 0)
            return 1;
    }
    if (plugin->destroy)
        plugin->destroy(instance);
    free(call);
    free(buf);
    free(config_text);
    strbuf_free(&out);
    return 0;
}
