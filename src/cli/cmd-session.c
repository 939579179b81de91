/* login, logout, whoami: the saved session and who the server says we are. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/timeutil.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "resource/resource.h"

/* Reads a token from stdin: its first line, surrounding whitespace removed.
 * Returns a heap string the caller wipes and frees, or NULL. */
static char *read_token_stdin(void)
{
    char *data = NULL;
    size_t len;
    if (read_fd(STDIN_FILENO, 16 * 1024, &data, &len) < 0)
        return NULL;
    size_t start = 0, end = strcspn(data, "\r\n");
    while (start < end && (data[start] == ' ' || data[start] == '\t'))
        start++;
    while (end > start && (data[end - 1] == ' ' || data[end - 1] == '\t'))
        end--;
    char *token = strndup(data + start, end - start);
    explicit_bzero(data, len);
    free(data);
    return token;
}

/* Cleanup for heap strings holding a token: wipe, then free. */
static void wipe_free(char **p)
{
    if (*p) {
        explicit_bzero(*p, strlen(*p));
        free(*p);
    }
}

/* Prints the whoami answer V for people: user, email, groups, credential. */
static void print_identity(const cli_ctx *ctx, const json_t *v)
{
    static const char *const fields[] = {"user", "email", "groups", "credential"};
    for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
        const json_t *f = json_object_get(v, fields[i]);
        char text[1024] = "", clean[1024];
        if (json_is_string(f))
            snprintf(text, sizeof(text), "%s", json_string_value(f));
        else if (json_is_array(f)) {
            size_t j, o = 0;
            const json_t *g;
            json_array_foreach(f, j, g) {
                if (json_is_string(g) && o < sizeof(text))
                    o += (size_t)snprintf(text + o, sizeof(text) - o, "%s%s", j ? "," : "",
                                          json_string_value(g));
            }
        }
        printf("%-12s%s\n", fields[i], text[0] ? text_sanitize(text, clean, sizeof(clean)) : "<none>");
    }
    printf("%-12s%s\n", "server", ctx->server);
}

/* Prints a whoami answer in the chosen output format; returns an exit status. */
static int print_answer(const cli_ctx *ctx, const json_t *v)
{
    int r = 0;
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(v);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(v);
    else
        print_identity(ctx, v);
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

/* Saves the session of a login answer TOKENS (access_token, refresh_token,
 * session) after asking the server who it belongs to, and says so. Returns
 * an exit status. WHAT names the endpoint for messages. */
static int save_login(cli_ctx *ctx, const json_t *tokens, const char *what)
{
    const char *access = json_string_value(json_object_get(tokens, "access_token"));
    const char *refresh = json_string_value(json_object_get(tokens, "refresh_token"));
    const char *sid = json_string_value(json_object_get(tokens, "session"));
    if (!access || !refresh || !sid || !cli_token_valid(access) || !cli_token_valid(refresh))
        return cli_error("the server's answer to %s holds no usable tokens", what);
    json_auto_t *who = NULL;
    api_error err;
    if (api_request(ctx, (char *)access, "GET", "/whoami", NULL, &who, &err) < 0)
        return api_error_print(&err);
    if (!json_is_string(json_object_get(who, "user")))
        return cli_error("the server's answer to /v1/whoami names no user");

    /* Save the CA as an absolute path: the session is used from anywhere. */
    _cleanup_free_ char *ca = NULL;
    if (ctx->ca && !(ca = realpath(ctx->ca, NULL)))
        return cli_error("cannot resolve the CA file %s: %m", ctx->ca);
    cli_session s = {.server = ctx->server, .ca = ca, .access_token = (char *)access,
                     .refresh_token = (char *)refresh, .session_id = (char *)sid};
    int r = session_save(&s);
    if (r < 0) {
        _cleanup_free_ char *path = NULL;
        session_path(&path);
        return cli_error("cannot save the session to %s: %s", path ? path : "$XDG_CONFIG_HOME",
                         strerror(-r));
    }
    if (ctx->output != CLI_OUTPUT_TEXT)
        return print_answer(ctx, who);
    char clean[512];
    printf("logged in to %s as %s\n", ctx->server,
           text_sanitize(json_string_value(json_object_get(who, "user")), clean, sizeof(clean)));
    return CLI_EXIT_OK;
}

/* Exchanges the credential TOKEN for a session (POST /v1/auth/token) and
 * saves it; the credential token itself is never saved. */
static int login_token(cli_ctx *ctx, const char *token)
{
    json_auto_t *exchange = json_pack("{s:s}", "token", token), *tokens = NULL;
    api_error err;
    if (!exchange)
        return cli_error("out of memory");
    int r = api_request(ctx, NULL, "POST", "/auth/token", exchange, &tokens, &err);
    explicit_bzero((char *)json_string_value(json_object_get(exchange, "token")), strlen(token));
    if (r < 0) {
        if (err.status == 401)
            return cli_error("the server refused the token: %s", err.message);
        return api_error_print(&err);
    }
    r = save_login(ctx, tokens, "/v1/auth/token");
    const char *k;
    json_t *v;
    json_object_foreach(tokens, k, v) if (json_is_string(v))
        explicit_bzero((char *)json_string_value(v), json_string_length(v));
    return r;
}

/* A listening socket on 127.0.0.1 and an ephemeral port, for the browser's
 * redirect back to us (RFC 8252, 7.3). Returns the fd or a negative errno. */
static int loopback_listen(uint16_t *ret_port)
{
    _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        return negative_errno();
    *ret_port = ntohs(sa.sin_port);
    return TAKE_FD(fd);
}

/* Answers one loopback HTTP request on CONN with STATUS and TEXT. */
static void loopback_reply(int conn, const char *status, const char *text)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n\r\n%s",
                     status, strlen(text), text);
    if (n > 0 && write(conn, buf, (size_t)MIN((size_t)n, sizeof(buf) - 1)) < 0)
        return; /* the browser went away: nothing to tell it */
}

/* Waits (at most TIMEOUT_MS in all) for the browser's GET /callback?code=...
 * on the loopback socket FD and copies the code (base64url) into CODE.
 * Requests for anything else get a 404 and are ignored. Returns 0,
 * -ETIMEDOUT, or -EACCES when the server reported a failed login. */
static int loopback_wait_code(int fd, int timeout_ms, char *code, size_t size)
{
    uint64_t deadline = time_mono_ns() + (uint64_t)timeout_ms * NSEC_PER_MSEC;
    for (int served = 0; served < 32; served++) {
        uint64_t now = time_mono_ns();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, (int)((deadline - now) / NSEC_PER_MSEC) + 1);
        if (n <= 0)
            return n == 0 ? -ETIMEDOUT : negative_errno();
        _cleanup_close_ int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0)
            continue;
        struct timeval tv = {.tv_sec = 5};
        setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        char req[4096];
        size_t got = 0;
        while (got < sizeof(req) - 1 && !memmem(req, got, "\r\n", 2)) {
            ssize_t k = read(conn, req + got, sizeof(req) - 1 - got);
            if (k <= 0)
                break;
            got += (size_t)k;
        }
        req[got] = 0;
        /* the request line only: GET /callback?code=<base64url> HTTP/1.x */
        static const char prefix[] = "GET /callback?";
        char *line_end = strstr(req, "\r\n");
        char *query = req + STRLEN(prefix);
        char *sp = line_end && line_end > query ? memchr(query, ' ', (size_t)(line_end - query)) : NULL;
        if (!sp || strncmp(req, prefix, STRLEN(prefix)) != 0) {
            loopback_reply(conn, "404 Not Found", "not here\n");
            continue;
        }
        *sp = 0;
        if (strncmp(query, "code=", 5) != 0) {
            loopback_reply(conn, "400 Bad Request", "the login failed; see the command line\n");
            return -EACCES;
        }
        const char *c = query + 5;
        size_t len = strspn(c, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");
        if (len == 0 || c[len] != 0 || len >= size) {
            loopback_reply(conn, "400 Bad Request", "malformed login code\n");
            return -EACCES;
        }
        memcpy(code, c, len + 1);
        loopback_reply(conn, "200 OK", "Logged in to Cloister. You can close this window.\n");
        return 0;
    }
    return -ETIMEDOUT;
}

/* `login --idp NAME`: OIDC through the browser. The server starts the login
 * for our loopback URI and a PKCE challenge of a verifier only we hold; the
 * browser comes back to the loopback with a one-time code, which we trade,
 * with the verifier, for the session's tokens. */
static int login_idp(cli_ctx *ctx, const char *idp)
{
    if (!resource_name_valid(idp))
        return cli_error("\"%s\" is not a valid identity provider name", idp);
    uint16_t port;
    _cleanup_close_ int fd = loopback_listen(&port);
    if (fd < 0)
        return cli_error("cannot listen on the loopback interface: %s", strerror(-fd));
    uint8_t rnd[32];
    char verifier[48], challenge[48];
    uint8_t digest[SHA256_DIGEST_LENGTH];
    if (random_bytes(rnd, sizeof(rnd)) < 0)
        return cli_error("no randomness");
    base64_encode(rnd, sizeof(rnd), verifier, true);
    explicit_bzero(rnd, sizeof(rnd));
    SHA256((const uint8_t *)verifier, strlen(verifier), digest);
    base64_encode(digest, sizeof(digest), challenge, true);

    char path[512];
    snprintf(path, sizeof(path), "/auth/oidc/%s/login?cli_redirect=http%%3A%%2F%%2F127.0.0.1%%3A%u%%2Fcallback&cli_challenge=%s",
             idp, port, challenge);
    json_auto_t *start = NULL, *tokens = NULL;
    api_error err;
    if (api_request(ctx, NULL, "GET", path, NULL, &start, &err) < 0)
        return api_error_print(&err);
    const char *url = json_string_value(json_object_get(start, "authorization_url"));
    if (!url || strncmp(url, "https://", 8) != 0)
        return cli_error("the server's answer names no authorization URL");
    char clean[4096];
    fprintf(stderr, "Open this URL in a browser to log in (waiting 5 minutes):\n%s\n",
            text_sanitize(url, clean, sizeof(clean)));
    fflush(stderr);

    char code[128];
    int r = loopback_wait_code(fd, 300 * 1000, code, sizeof(code));
    if (r == -ETIMEDOUT)
        return cli_error("no login came back within 5 minutes");
    if (r < 0)
        return cli_error("the login failed in the browser");
    json_auto_t *body = json_pack("{s:s, s:s}", "code", code, "code_verifier", verifier);
    explicit_bzero(verifier, sizeof(verifier));
    explicit_bzero(code, sizeof(code));
    if (!body)
        return cli_error("out of memory");
    if (api_request(ctx, NULL, "POST", "/auth/oidc/exchange", body, &tokens, &err) < 0)
        return api_error_print(&err);
    r = save_login(ctx, tokens, "/v1/auth/oidc/exchange");
    const char *k;
    json_t *v;
    json_object_foreach(tokens, k, v) if (json_is_string(v))
        explicit_bzero((char *)json_string_value(v), json_string_length(v));
    return r;
}

int cmd_login(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct option options[] = {
        {"token", required_argument, NULL, 't'},
        {"idp", required_argument, NULL, 'i'},
        CLI_COMMON_LONG_OPTIONS,
        {},
    };
    const char *token_arg = NULL, *idp = NULL;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "t:" CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        if (c == 't')
            token_arg = optarg;
        else if (c == 'i')
            idp = optarg;
        else if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    if (!token_arg == !idp)
        return cli_usage_error(cmd, "login needs --token TOKEN (or --token - to read it from stdin), or --idp NAME");
    if (idp) {
        int r = cli_connect(ctx, false);
        return r != CLI_EXIT_OK ? r : login_idp(ctx, idp);
    }

    _cleanup_(wipe_free) char *token = strcmp(token_arg, "-") == 0 ? read_token_stdin()
                                                                   : strdup(token_arg);
    if (!token)
        return cli_error("cannot read the token");
    if (!cli_token_valid(token))
        return cli_usage_error(cmd, "the token must be 1-8192 printable characters without spaces");
    int r = cli_connect(ctx, false);
    if (r != CLI_EXIT_OK)
        return r;
    return login_token(ctx, token);
}

/* Asks the server to revoke the session of REFRESH_TOKEN; a failure is only
 * a warning (the session then ends when it expires). */
static void revoke_session(cli_ctx *ctx, const char *refresh_token)
{
    json_auto_t *body = json_pack("{s:s}", "refresh_token", refresh_token), *answer = NULL;
    api_error err;
    if (!body)
        return;
    if (api_request(ctx, NULL, "POST", "/auth/logout", body, &answer, &err) < 0) {
        char msg[sizeof(err.message) + sizeof(err.field) + 2];
        if (err.status != 401)
            fprintf(stderr, "warning: the server did not revoke the session: %s\n",
                    api_error_message(&err, msg, sizeof(msg)));
    } else if (json_is_string(json_object_get(answer, "end_session_url"))) {
        char clean[4096];
        fprintf(stderr, "to log out at the identity provider too, open: %s\n",
                text_sanitize(json_string_value(json_object_get(answer, "end_session_url")), clean, sizeof(clean)));
    }
    explicit_bzero((char *)json_string_value(json_object_get(body, "refresh_token")), strlen(refresh_token));
}

int cmd_logout(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    /* revoke the session on its own server first (never another, whatever
     * --server says); the local file goes regardless */
    _cleanup_(session_done) cli_session saved = {};
    if (session_load(&saved) == 0 && saved.refresh_token) {
        ctx->server_flag = saved.server;
        ctx->ca_flag = saved.ca;
        if (cli_connect(ctx, false) == CLI_EXIT_OK)
            revoke_session(ctx, saved.refresh_token);
    }
    int r = session_remove();
    if (r == -ENOENT) {
        printf("not logged in\n");
        return CLI_EXIT_OK;
    }
    if (r < 0)
        return cli_error("cannot remove the session file: %s", strerror(-r));
    printf("logged out\n");
    return CLI_EXIT_OK;
}

int cmd_whoami(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    json_auto_t *who = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "GET", "/whoami", NULL, &who, &err) < 0)
        return api_error_print(&err);
    return print_answer(ctx, who);
}
