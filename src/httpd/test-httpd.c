/* The HTTP server every role runs, through httpd_run() on loopback and Unix
 * sockets:
 *   - listen addresses it refuses before serving (not HOST:PORT, an address
 *     that is no number, a port in use, a peer check on TCP, a Unix path
 *     too long);
 *   - the peer check wired to SO_PEERCRED: the hook sees the connecting
 *     process's pid and uid before a byte is read, a refused peer is closed
 *     unanswered, and the identity it gave reaches the handler;
 *   - the connection cap fitted under RLIMIT_NOFILE (HTTPD_FDS_RESERVED
 *     kept, fds_per_connection each): the connection past it is closed;
 *   - a request head h2o cannot parse answered 400 JSON, before the
 *     component's handler, then the connection closed. */
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "basic/macro.h"
#include "httpd/httpd.h"

static char dir[] = "/tmp/cloister-test-httpd-XXXXXX";

/* A server runs in a child process, as each role does under cloisterd:
 * httpd_run() there, and _exit() with its result (a role leaves h2o's
 * loops and buffers to the process's end). Shared memory carries its
 * readiness and what the peer check saw. */
typedef struct server {
    httpd_config cfg;
    pid_t pid;
    char listen[200];
} server;

typedef struct shared {
    _Atomic bool ready;
    pid_t allowed; /* the peer let in, as identity 7 */
    _Atomic int calls;
    _Atomic pid_t last_pid;
    _Atomic uid_t last_uid;
} shared;

static shared *sh;

/* ---- what the server serves: "peer=N" (httpd_conn_peer) ------------------- */

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    char *body = h2o_mem_alloc_pool(&req->pool, 32);
    int n = snprintf(body, 32, "peer=%d", httpd_conn_peer(req));
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_send_inline(req, body, (size_t)n);
    return 0;
}

static void register_handlers(h2o_pathconf_t *pathconf, void *userdata)
{
    h2o_handler_t *h = h2o_create_handler(pathconf, sizeof(*h));
    h->on_req = on_req;
}

/* Starts S in a child (SIGTERM and SIGINT blocked, as httpd_run() asks)
 * and waits until it serves. */
static void server_start(server *s)
{
    s->cfg.name = "test";
    s->cfg.listen = s->listen;
    s->cfg.hooks.register_handlers = register_handlers;
    s->cfg.ready_flag = &sh->ready;
    atomic_store(&sh->ready, false);
    s->pid = fork();
    cr_assert(s->pid >= 0);
    if (s->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test does not leave it serving */
        _exit(httpd_run(&s->cfg) == 0 ? 0 : 1);
    }
    for (int i = 0; i < 10000 && !atomic_load(&sh->ready); i++) {
        cr_assert_eq(waitpid(s->pid, NULL, WNOHANG), 0, "the server ended before serving");
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    }
    cr_assert(atomic_load(&sh->ready), "the server started");
}

/* SIGTERM, the stop every role gets: the server drains and returns 0. */
static void server_stop(server *s)
{
    int status;
    cr_assert_eq(kill(s->pid, SIGTERM), 0);
    cr_assert_eq(waitpid(s->pid, &status, 0), s->pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "httpd_run returned 0 after SIGTERM (status %d)",
              status);
}

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(sh, MAP_FAILED);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    cr_assert_eq(pthread_sigmask(SIG_BLOCK, &set, NULL), 0);
    signal(SIGPIPE, SIG_IGN); /* a request may meet a connection closed at accept */
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(httpd, .init = setup, .fini = teardown);

/* ---- clients --------------------------------------------------------------- */

static int connect_unix(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect %s: %s", path, strerror(errno));
    return fd;
}

/* Sends a GET on FD and reads the answer into OUT until its body "peer=..."
 * arrived; returns the bytes read, 0 when the server closed the connection
 * without answering. */
static size_t get(int fd, char *out, size_t size)
{
    static const char request[] = "GET / HTTP/1.1\r\nHost: test\r\n\r\n";
    if (write(fd, request, sizeof(request) - 1) != (ssize_t)sizeof(request) - 1)
        return 0;
    size_t len = 0;
    out[0] = 0;
    while (len < size - 1) {
        ssize_t n = read(fd, out + len, size - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        out[len] = 0;
        const char *body = strstr(out, "\r\n\r\n");
        if (body && strstr(body, "peer="))
            break;
    }
    return len;
}

/* ---- listen addresses ------------------------------------------------------ */

/* Lets in the test process only, as identity 7; records each call. */
static int check(const void *data, pid_t pid, uid_t uid, int *ret_peer)
{
    shared *p = (shared *)data;
    atomic_fetch_add(&p->calls, 1);
    atomic_store(&p->last_pid, pid);
    atomic_store(&p->last_uid, uid);
    if (pid != p->allowed)
        return -EACCES;
    *ret_peer = 7;
    return 0;
}


/* httpd_run() on LISTEN (with a peer check when PEER_CHECK), in a child:
 * its negative errno when it refuses to start, 1 when it served (stopped
 * then with SIGTERM). */
static int run_with(const char *listen, bool peer_check)
{
    server s = {0};
    snprintf(s.listen, sizeof(s.listen), "%s", listen);
    s.cfg = (httpd_config){.name = "test", .listen = s.listen, .hooks.register_handlers = register_handlers,
                           .ready_flag = &sh->ready};
    if (peer_check) {
        s.cfg.check_peer = check;
        s.cfg.peer_data = sh;
    }
    atomic_store(&sh->ready, false);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        _exit(-httpd_run(&s.cfg));
    }
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? -WEXITSTATUS(status) : -EINTR;
        if (atomic_load(&sh->ready)) {
            kill(pid, SIGTERM);
            cr_assert_eq(waitpid(pid, &status, 0), pid);
            return 1;
        }
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    }
}

Test(httpd, listen_addresses_refused_before_serving)
{
    static const char *const bad[] = {"nocolon", "127.0.0.1:", ":8080", "127.0.0.1:http", "127.0.0.1:99999",
                                      "127.0.0.1:-1", "127.0.0.1:80x", "[::1:8080"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(run_with(bad[i], false), -EINVAL, "%s", bad[i]);
    /* peers are known on Unix sockets only */
    cr_expect_eq(run_with("127.0.0.1:0", true), -EINVAL);
    char long_path[200];
    snprintf(long_path, sizeof(long_path), "unix:/tmp/%0120d", 0);
    cr_expect_eq(run_with(long_path, false), -ENAMETOOLONG);
    /* what it takes */
    cr_expect_eq(run_with("127.0.0.1:0", false), 1);
    cr_expect_eq(run_with("[::1]:0", false), 1);
}

Test(httpd, a_port_in_use)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(fd, 1), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    char listen_at[64];
    snprintf(listen_at, sizeof(listen_at), "127.0.0.1:%u", ntohs(sa.sin_port));
    cr_expect_eq(run_with(listen_at, false), -EADDRINUSE);
    close(fd);
}

Test(httpd, serves_loopback_tcp)
{
    server s = {0};
    /* a free port: bind, read it back, release it */
    int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    cr_assert_eq(bind(probe, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(getsockname(probe, (struct sockaddr *)&sa, &len), 0);
    close(probe);
    snprintf(s.listen, sizeof(s.listen), "127.0.0.1:%u", ntohs(sa.sin_port));
    server_start(&s);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char out[1024];
    cr_assert(get(fd, out, sizeof(out)) > 0);
    cr_assert(strstr(out, "HTTP/1.1 200"), "%s", out);
    cr_assert(strstr(out, "peer=-1"), "no peer check on TCP: %s", out);
    close(fd);
    server_stop(&s);
}

/* ---- the peer check ---------------------------------------------------------- */

Test(httpd, peer_check_sees_so_peercred_and_names_the_peer)
{
    sh->allowed = getpid();
    server s = {0};
    snprintf(s.listen, sizeof(s.listen), "unix:%s/test.sock", dir);
    s.cfg.check_peer = check;
    s.cfg.peer_data = sh;
    server_start(&s);

    int fd = connect_unix(s.listen + 5);
    char out[1024];
    cr_assert(get(fd, out, sizeof(out)) > 0);
    cr_assert(strstr(out, "HTTP/1.1 200"), "%s", out);
    cr_assert(strstr(out, "peer=7"), "the hook's identity reaches the handler: %s", out);
    cr_assert_eq(atomic_load(&sh->calls), 1, "checked once, at accept");
    cr_assert_eq(atomic_load(&sh->last_pid), getpid());
    cr_assert_eq(atomic_load(&sh->last_uid), geteuid());
    /* a second request on the same connection is not checked again */
    cr_assert(get(fd, out, sizeof(out)) > 0 && strstr(out, "peer=7"));
    cr_assert_eq(atomic_load(&sh->calls), 1);
    close(fd);

    /* another process: closed before anything is read or answered */
    pid_t child = fork();
    cr_assert(child >= 0);
    if (child == 0) {
        signal(SIGPIPE, SIG_IGN); /* the request may meet the closed connection */
        int c = connect_unix(s.listen + 5);
        char answer[1024];
        _exit(get(c, answer, sizeof(answer)) == 0 ? 0 : 1);
    }
    int status;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the refused peer got no answer");
    cr_assert_eq(atomic_load(&sh->calls), 2);
    cr_assert_eq(atomic_load(&sh->last_pid), child, "the hook saw the child's pid");
    server_stop(&s);
}

Test(httpd, unix_socket_without_a_peer_check)
{
    server s = {0};
    snprintf(s.listen, sizeof(s.listen), "unix:%s/open.sock", dir);
    server_start(&s);
    int fd = connect_unix(s.listen + 5);
    char out[1024];
    cr_assert(get(fd, out, sizeof(out)) > 0);
    cr_assert(strstr(out, "peer=-1"), "%s", out);
    close(fd);
    server_stop(&s);
}

/* ---- the connection cap under RLIMIT_NOFILE -------------------------------- */

/* Opens connections to a server capped at MAX_CONNS with FDS_PER
 * descriptors each under a soft RLIMIT_NOFILE of NOFILE, each answered
 * and kept open, and returns how many were served before one was closed
 * unanswered (at most LIMIT tried). */
static unsigned served_under(rlim_t nofile, unsigned max_conns, unsigned fds_per, unsigned limit)
{
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    cr_assert(rl.rlim_max >= nofile);
    rl.rlim_cur = nofile;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    server s = {0};
    snprintf(s.listen, sizeof(s.listen), "unix:%s/cap.sock", dir);
    s.cfg.max_connections = max_conns;
    s.cfg.fds_per_connection = fds_per;
    server_start(&s);
    int fds[64];
    unsigned served = 0;
    cr_assert(limit <= 64);
    for (unsigned i = 0; i < limit; i++) {
        fds[i] = connect_unix(s.listen + 5);
        char out[512];
        if (get(fds[i], out, sizeof(out)) == 0)
            break;
        cr_assert(strstr(out, "HTTP/1.1 200"), "%s", out);
        served++;
    }
    for (unsigned i = 0; i < limit && i <= served; i++)
        close(fds[i]);
    server_stop(&s);
    return served;
}

/* ---- heads h2o cannot parse ------------------------------------------------- */

Test(httpd, an_unparsable_head_is_answered_400_before_any_handler)
{
    server s = {0};
    snprintf(s.listen, sizeof(s.listen), "unix:%s/u.sock", dir);
    server_start(&s);
    static const char *const heads[] = {
        "GET / HTTP/1.1\r\nHost : test\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: test\r\nX: a\x01b\r\n\r\n",
        "GET / HTTX/1.1\r\n\r\n",
        /* answered after the good request before it; the connection ends there */
        "GET / HTTP/1.1\r\nHost: test\r\n\r\nGET / HTTP/1.1\r\nA\rB: c\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < ELEMENTSOF(heads); i++) {
        int fd = connect_unix(s.listen + 5);
        cr_assert_eq(write(fd, heads[i], strlen(heads[i])), (ssize_t)strlen(heads[i]));
        char out[4096];
        size_t len = 0;
        for (ssize_t n; len < sizeof(out) - 1 && (n = read(fd, out + len, sizeof(out) - 1 - len)) > 0;)
            len += (size_t)n;
        out[len] = 0;
        close(fd);
        const char *refusal = strstr(out, "HTTP/1.1 400 ");
        cr_assert_not_null(refusal, "%s: %s", heads[i], out);
        cr_assert_not_null(strstr(refusal, "\"code\":\"bad_request\""), "%s", out);
        cr_assert_not_null(strstr(refusal, "malformed request refused: "), "%s", out);
        cr_assert_null(strstr(refusal + 1, "HTTP/1.1 "), "nothing after the refusal: %s", out);
        cr_assert_null(strstr(refusal, "peer="), "the handler never saw it: %s", out);
        cr_assert_eq(strstr(out, "peer=") != NULL, i == 3, "%s", out);
    }
    server_stop(&s);
}

Test(httpd, cap_fitted_under_the_descriptor_limit)
{
    /* (200 - HTTPD_FDS_RESERVED) / 10 */
    cr_assert_eq(served_under(200, 1000, 10, 20), (200 - HTTPD_FDS_RESERVED) / 10);
}

Test(httpd, cap_under_a_small_limit_keeps_half)
{
    /* 100 is below twice the reserve: half of it is usable, 50 / 10 */
    cr_assert_eq(served_under(100, 1000, 10, 20), 5);
}

Test(httpd, cap_below_the_limit_is_kept)
{
    cr_assert_eq(served_under(1024, 3, 0, 10), 3, "fds_per_connection 0 counts as 1");
}

/* ---- httpd_recycled_alloc ---- */

typedef struct disposed {
    void *first_word; /* h2o's recycler keeps its link there while the object waits */
    char text[700];
    int id;
} disposed;

static int disposed_ids[4], n_disposed;

static void note_disposed(void *p)
{
    disposed *d = p;
    /* the object is intact when its disposer runs, before it is reused */
    cr_assert_str_eq(d->text, "kept until disposed");
    disposed_ids[n_disposed++] = d->id;
}

Test(recycler, objects_are_disposed_when_their_pool_is_cleared_then_reused_up_to_the_cap)
{
    httpd_recycler r = {.kept = {.max = 1}, .size = sizeof(disposed)};
    h2o_mem_pool_t pool;
    h2o_mem_init_pool(&pool);
    disposed *made[2];
    for (int id = 1; id <= 2; id++) {
        disposed *d = made[id - 1] = httpd_recycled_alloc(&r, &pool, note_disposed);
        snprintf(d->text, sizeof(d->text), "kept until disposed");
        d->id = id;
    }
    cr_expect_neq(made[0], made[1]);
    cr_expect_eq(n_disposed, 0);
    h2o_mem_clear_pool(&pool);
    cr_assert_eq(n_disposed, 2);
    cr_expect_eq(disposed_ids[0], 2, "the latest first");
    cr_expect_eq(disposed_ids[1], 1);
    /* one kept (the cap), the other freed: the next request gets the kept one */
    cr_expect_eq(r.kept.cnt, 1);
    cr_expect_eq(httpd_recycled_alloc(&r, &pool, note_disposed), made[1]);
    cr_expect_eq(r.kept.cnt, 0);
    ((disposed *)made[1])->id = 3;
    snprintf(((disposed *)made[1])->text, sizeof(made[1]->text), "kept until disposed");
    h2o_mem_clear_pool(&pool);
    cr_expect_eq(disposed_ids[2], 3);
    httpd_recycler_clear(&r);
    cr_expect_eq(r.kept.cnt, 0);
}
