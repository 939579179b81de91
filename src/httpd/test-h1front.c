/* httpd's own HTTP/1.1 front end (h1front.h):
 *   - the head parser: complete, incomplete and unparsable heads, a head
 *     parsed again from where an incomplete parse stopped, bodies,
 *     keep-alive, protocol switches, the framing verdict;
 *   - the connection, through httpd_run() with h1_front on a Unix socket in
 *     a child process: pipelined requests answered in order, a head sent
 *     byte by byte, a chunked body with trailers, Expect: 100-continue, a
 *     body over the limit (413 JSON), an ambiguous or unparsable head
 *     (400 JSON, then the close), Connection: close, a slow head and an
 *     idle keep-alive connection closed at the deadline. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "basic/macro.h"
#include "basic/timeutil.h"
#include "httpd/framing.h"
#include "httpd/h1front.h"
#include "httpd/httpd.h"

/* ---- the head parser ---- */

static int parse(const char *head, h1front_head *h)
{
    return h1front_parse_head(head, strlen(head), 0, h);
}

Test(h1front_parse, a_simple_get)
{
    h1front_head h;
    const char *head = "GET /a?b HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\nGET /next";
    cr_assert_eq(parse(head, &h), (int)(strstr(head, "\r\n\r\n") + 4 - head));
    cr_assert(h2o_memis(h.method.base, h.method.len, H2O_STRLIT("GET")));
    cr_assert(h2o_memis(h.target.base, h.target.len, H2O_STRLIT("/a?b")));
    cr_assert_eq(h.minor_version, 1);
    cr_assert_eq(h.n_fields, 2);
    cr_assert_eq(h.body, H1FRONT_BODY_NONE);
    cr_assert(h.keep_alive);
    cr_assert_not(h.upgrade);
    cr_assert_null(h.verdict);
    cr_assert_null(h.expect.base);
}

Test(h1front_parse, incomplete_and_unparsable)
{
    h1front_head h;
    cr_assert_eq(parse("GET / HTTP/1.1\r\nHost: x\r\n", &h), -EAGAIN);
    cr_assert_eq(parse("", &h), -EAGAIN);
    cr_assert_eq(parse("GET / HTTP/1.1\r\nHost : x\r\n\r\n", &h), -EBADMSG);
    cr_assert_eq(parse("GET / HTTX/1.1\r\n\r\n", &h), -EBADMSG);
    cr_assert_eq(parse("GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", &h), -EBADMSG);
}

Test(h1front_parse, resumes_where_an_incomplete_parse_stopped)
{
    const char *head = "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n";
    size_t len = strlen(head), last = 0;
    h1front_head h;
    for (size_t n = 1; n < len; n++) {
        cr_assert_eq(h1front_parse_head(head, n, last, &h), -EAGAIN, "at %zu", n);
        last = n;
    }
    cr_assert_eq(h1front_parse_head(head, len, last, &h), (int)len);
    cr_assert_eq(h.body, H1FRONT_BODY_LENGTH);
    cr_assert_eq(h.content_length, 12);
}

Test(h1front_parse, bodies)
{
    h1front_head h;
    cr_assert_gt(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n", &h), 0);
    cr_assert_eq(h.body, H1FRONT_BODY_CHUNKED);
    cr_assert_gt(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", &h), 0);
    cr_assert_eq(h.body, H1FRONT_BODY_LENGTH);
    cr_assert_eq(h.content_length, 0);
    cr_assert_gt(parse("PUT / HTTP/1.1\r\nContent-Length: 9999999999999999999\r\n\r\n", &h), 0);
    cr_assert_eq(h.content_length, 9999999999999999999ull);
    cr_assert_gt(parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", &h), 0);
    cr_assert(h2o_memis(h.expect.base, h.expect.len, H2O_STRLIT("100-continue")));
}

Test(h1front_parse, keep_alive_and_switches)
{
    h1front_head h;
    cr_assert_gt(parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &h), 0);
    cr_assert_not(h.keep_alive);
    cr_assert_gt(parse("GET / HTTP/1.1\r\nConnection: TE, Close\r\n\r\n", &h), 0);
    cr_assert_not(h.keep_alive);
    cr_assert_gt(parse("GET / HTTP/1.0\r\n\r\n", &h), 0);
    cr_assert_not(h.keep_alive);
    cr_assert_gt(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &h), 0);
    cr_assert(h.keep_alive);
    cr_assert_gt(parse("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", &h), 0);
    cr_assert_not(h.upgrade, "an Upgrade the Connection field does not name is no switch");
    cr_assert_gt(parse("GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n", &h), 0);
    cr_assert(h.upgrade);
}

Test(h1front_parse, ambiguous_framing_carries_a_verdict_and_no_body)
{
    static const char *const heads[] = {
        "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked \r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nContent_Length: 2\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
    };
    for (size_t i = 0; i < ELEMENTSOF(heads); i++) {
        h1front_head h;
        cr_assert_gt(parse(heads[i], &h), 0, "%s", heads[i]);
        cr_assert_not_null(h.verdict, "%s", heads[i]);
        cr_assert_eq(h.body, H1FRONT_BODY_NONE, "%s", heads[i]);
        cr_assert_not(h.keep_alive, "%s", heads[i]);
    }
}

/* ---- the connection, served by httpd_run() in a child ---- */

static char dir[] = "/tmp/cloister-test-h1front-XXXXXX";
static _Atomic bool *ready;

/* Answers "<method> <path> n=<body length, or -1> v=<verdict, or ->|<body>". */
static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    const char *why = httpd_guard_verdict(req);
    size_t size = 200 + req->input.path.len + req->entity.len;
    char *body = h2o_mem_alloc_pool(&req->pool, size);
    int n = snprintf(body, size, "%.*s %.*s n=%zd v=%s|", (int)req->input.method.len, req->input.method.base,
                     (int)req->input.path.len, req->input.path.base, req->entity.base ? (ssize_t)req->entity.len : -1,
                     why ? why : "-");
    if (req->entity.len)
        memcpy(body + n, req->entity.base, req->entity.len);
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = (size_t)n + req->entity.len;
    h2o_send_inline(req, body, (size_t)n + req->entity.len);
    return 0;
}

static void register_handlers(h2o_pathconf_t *pathconf, void *userdata)
{
    (void)userdata;
    h2o_create_handler(pathconf, sizeof(h2o_handler_t))->on_req = on_req;
}

static pid_t server_pid;
static char listen_at[200];

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    ready = mmap(NULL, sizeof(*ready), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(ready, MAP_FAILED);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    cr_assert_eq(pthread_sigmask(SIG_BLOCK, &set, NULL), 0);
    signal(SIGPIPE, SIG_IGN);
    snprintf(listen_at, sizeof(listen_at), "unix:%s/s.sock", dir);
    httpd_config cfg = {.name = "test", .listen = listen_at, .hooks.register_handlers = register_handlers,
                        .ready_flag = ready, .h1_front = true, .max_request_body = 1000,
                        .request_timeout_ms = 400};
    server_pid = fork();
    cr_assert(server_pid >= 0);
    if (server_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        _exit(httpd_run(&cfg) == 0 ? 0 : 1);
    }
    for (int i = 0; i < 10000 && !atomic_load(ready); i++)
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    cr_assert(atomic_load(ready), "the server started");
}

/* SIGTERM: the server drains, closes what is open and returns 0. */
static void server_stop(void)
{
    int status;
    cr_assert_eq(kill(server_pid, SIGTERM), 0);
    cr_assert_eq(waitpid(server_pid, &status, 0), server_pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "drained and returned 0 (status %d)", status);
    server_pid = 0;
}

static void teardown(void)
{
    if (server_pid)
        server_stop();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(h1front, .init = setup, .fini = teardown);

static int dial(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    cr_assert(snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", listen_at + 5) < (int)sizeof(sa.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect: %s", strerror(errno));
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

static void send_all(int fd, const char *s, size_t len)
{
    cr_assert_eq(write(fd, s, len), (ssize_t)len);
}

/* Complete responses at the start of BUF (LEN bytes), bodies sized by their
 * Content-Length. */
static size_t complete_responses(const char *buf, size_t len)
{
    size_t n = 0;
    const char *p = buf, *end = buf + len;
    for (;;) {
        const char *head_end = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!head_end)
            return n;
        const char *cl = memmem(p, (size_t)(head_end - p), "Content-Length: ", 16);
        size_t body = cl ? strtoul(cl + 16, NULL, 10) : 0;
        if ((size_t)(end - (head_end + 4)) < body)
            return n;
        p = head_end + 4 + body;
        n++;
    }
}

/* Reads from FD into OUT until WANT complete responses are in, the server
 * closes, or 5 s pass; returns the bytes read. */
static size_t read_responses(int fd, char *out, size_t size, size_t want)
{
    size_t len = 0;
    out[0] = 0;
    while (len < size - 1 && (!want || complete_responses(out, len) < want)) {
        ssize_t n = read(fd, out + len, size - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        out[len] = 0;
    }
    return len;
}

/* Whether the server closes FD (read returns 0 or a reset) within 5 s. */
static bool closed_by_server(int fd)
{
    char b[256];
    ssize_t n;
    while ((n = read(fd, b, sizeof(b))) > 0)
        ;
    return n == 0 || errno == ECONNRESET;
}

static size_t count(const char *s, const char *what)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, what)); p++)
        n++;
    return n;
}

Test(h1front, pipelined_requests_are_answered_in_order)
{
    int first = dial(); /* a bodiless POST alone first: the connection's input is empty then */
    const char *empty = "POST /alone HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
    send_all(first, empty, strlen(empty));
    char alone[4096];
    read_responses(first, alone, sizeof(alone), 1);
    cr_assert_not_null(strstr(alone, "POST /alone n=0 v=-|"), "%s", alone);
    close(first);

    int fd = dial();
    const char *reqs = "POST /empty HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
                       "GET /one HTTP/1.1\r\nHost: t\r\n\r\n"
                       "POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                       "GET /three HTTP/1.1\r\nHost: t\r\n\r\n";
    send_all(fd, reqs, strlen(reqs));
    char out[8192];
    read_responses(fd, out, sizeof(out), 4);
    cr_assert_not_null(strstr(out, "POST /empty n=0 v=-|"), "%s", out);
    const char *one = strstr(out, "GET /one n=-1 v=-|"), *two = strstr(out, "POST /two n=5 v=-|hello"),
               *three = strstr(out, "GET /three n=-1 v=-|");
    cr_assert(one && two && three && one < two && two < three, "%s", out);
    cr_assert_eq(count(out, "Connection: keep-alive"), 4, "%s", out);
    close(fd);
}

Test(h1front, a_head_sent_byte_by_byte)
{
    int fd = dial();
    const char *req = "POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc";
    for (size_t i = 0; req[i]; i++) {
        send_all(fd, req + i, 1);
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    }
    char out[4096];
    read_responses(fd, out, sizeof(out), 1);
    cr_assert_not_null(strstr(out, "POST /slow n=3 v=-|abc"), "%s", out);
    close(fd);
}

Test(h1front, a_chunked_body_with_trailers_then_the_next_request)
{
    int fd = dial();
    const char *reqs = "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n"
                       "GET /after HTTP/1.1\r\nHost: t\r\n\r\n";
    send_all(fd, reqs, strlen(reqs));
    char out[4096];
    read_responses(fd, out, sizeof(out), 2);
    cr_assert_not_null(strstr(out, "POST /c n=11 v=-|hello world"), "%s", out);
    cr_assert_not_null(strstr(out, "GET /after n=-1 v=-|"), "%s", out);
    close(fd);
}

Test(h1front, broken_chunks_are_refused_400)
{
    int fd = dial();
    const char *req = "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    send_all(fd, req, strlen(req));
    char out[4096];
    read_responses(fd, out, sizeof(out), 0);
    cr_assert_not_null(strstr(out, "HTTP/1.1 400 "), "%s", out);
    cr_assert_not_null(strstr(out, "\"code\":\"bad_request\""), "%s", out);
    cr_assert_not_null(strstr(out, "Connection: close"), "%s", out);
    close(fd);
}

Test(h1front, expect_100_continue)
{
    int fd = dial();
    const char *head = "PUT /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    send_all(fd, head, strlen(head));
    char out[4096];
    size_t len = 0;
    while (len < 25) {
        ssize_t n = read(fd, out + len, sizeof(out) - 1 - len);
        cr_assert_gt(n, 0, "the 100 Continue came");
        len += (size_t)n;
    }
    out[len] = 0;
    cr_assert_eq(strncmp(out, "HTTP/1.1 100 Continue\r\n\r\n", 25), 0, "%s", out);
    send_all(fd, "data", 4);
    read_responses(fd, out, sizeof(out), 1);
    cr_assert_not_null(strstr(out, "PUT /e n=4 v=-|data"), "%s", out);
    close(fd);
}

Test(h1front, a_body_over_the_limit_is_413_json)
{
    int fd = dial();
    const char *head = "POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n";
    send_all(fd, head, strlen(head));
    char out[4096];
    read_responses(fd, out, sizeof(out), 0);
    cr_assert_not_null(strstr(out, "HTTP/1.1 413 "), "%s", out);
    cr_assert_not_null(strstr(out, "\"code\":\"too_large\""), "%s", out);
    close(fd);

    fd = dial(); /* chunked: refused once the decoded body passes the limit */
    const char *chunked = "POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    send_all(fd, chunked, strlen(chunked));
    char chunk[600];
    memset(chunk, 'a', sizeof(chunk));
    for (int i = 0; i < 2; i++) {
        send_all(fd, "258\r\n", 5); /* 600 */
        send_all(fd, chunk, sizeof(chunk));
        send_all(fd, "\r\n", 2);
    }
    read_responses(fd, out, sizeof(out), 0);
    cr_assert_not_null(strstr(out, "HTTP/1.1 413 "), "%s", out);
    close(fd);
}

Test(h1front, ambiguous_and_unparsable_heads_are_refused_then_closed)
{
    static const char *const reqs[] = {
        "POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "GET /b HTTP/1.1\r\nHost : t\r\n\r\n",
        "GET /ok HTTP/1.1\r\nHost: t\r\n\r\nGET /c HTTP/1.1\r\nA\rB: c\r\n\r\nGET /never HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < ELEMENTSOF(reqs); i++) {
        int fd = dial();
        send_all(fd, reqs[i], strlen(reqs[i]));
        char out[8192];
        read_responses(fd, out, sizeof(out), 0); /* until the server closes */
        const char *refusal = strstr(out, "HTTP/1.1 400 ");
        cr_assert_not_null(refusal, "%s: %s", reqs[i], out);
        cr_assert_not_null(strstr(refusal, "malformed request refused: "), "%s", out);
        cr_assert_null(strstr(refusal + 1, "HTTP/1.1 "), "nothing after the refusal: %s", out);
        cr_assert_null(strstr(out, "/never"), "%s", out);
        cr_assert_eq(strstr(out, "GET /ok n=-1") != NULL, i == 2, "%s", out);
        close(fd);
    }
}

Test(h1front, connection_close_closes_after_the_answer)
{
    int fd = dial();
    const char *req = "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n";
    send_all(fd, req, strlen(req));
    char out[4096];
    read_responses(fd, out, sizeof(out), 0);
    cr_assert_not_null(strstr(out, "Connection: close"), "%s", out);
    cr_assert_eq(complete_responses(out, strlen(out)), 1, "%s", out);
    close(fd);
}

Test(h1front, a_slow_head_is_closed_at_the_deadline)
{
    int fd = dial();
    uint64_t start = time_mono_ns();
    send_all(fd, "GET / HTTP/1.1\r\nHo", 18);
    cr_assert(closed_by_server(fd), "closed");
    uint64_t took = time_mono_ns() - start;
    cr_assert_geq(took, 300 * NSEC_PER_MSEC, "not before the deadline (%llu ns)", (unsigned long long)took);
    close(fd);
}

Test(h1front, an_idle_keep_alive_connection_is_closed_at_the_deadline)
{
    int fd = dial();
    const char *req = "GET /x HTTP/1.1\r\nHost: t\r\n\r\n";
    send_all(fd, req, strlen(req));
    char out[4096];
    read_responses(fd, out, sizeof(out), 1);
    cr_assert_not_null(strstr(out, "Connection: keep-alive"), "%s", out);
    uint64_t start = time_mono_ns();
    cr_assert(closed_by_server(fd), "closed");
    cr_assert_geq(time_mono_ns() - start, 300 * NSEC_PER_MSEC);
    close(fd);
}

Test(h1front, sigterm_drains_and_closes_idle_keep_alive_connections)
{
    int fd = dial();
    const char *req = "GET /x HTTP/1.1\r\nHost: t\r\n\r\n";
    send_all(fd, req, strlen(req));
    char out[4096];
    read_responses(fd, out, sizeof(out), 1);
    cr_assert_not_null(strstr(out, "GET /x n=-1"), "%s", out);
    uint64_t start = time_mono_ns();
    server_stop();
    cr_assert(closed_by_server(fd), "closed by the drain");
    cr_assert_lt(time_mono_ns() - start, 5 * NSEC_PER_SEC);
    close(fd);
}
