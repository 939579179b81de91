/* Audit log micro-benchmarks, each printing one line "name value unit":
 *   bench-audit log DIR N BATCH      durable appends/s of the storage layer in
 *                                    batches (one transaction each), then at N
 *                                    entries: inclusion and consistency proof
 *                                    latency from the stored tree, and the
 *                                    verifier's recompute rate (entries/s)
 *   bench-audit socket DATA SECS THREADS BATCH
 *                                    durable appends/s through the audit role's
 *                                    socket, acknowledged after group commit:
 *                                    the audit role's own server (audit_serve),
 *                                    forked with a role table (as cloisterd's
 *                                    supervisor keeps one) naming this process
 *                                    the api role, on DATA's audit/audit.db and
 *                                    audit/audit.key (cloisterd stopped); the socket's peer
 *                                    check lets in only that table's roles
 *   bench-audit fsync DIR N          write + fdatasync of 256 bytes, per second */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "audit/client.h"
#include "audit/log.h"
#include "audit/merkle.h"
#include "basic/log.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "audit/server.h"

#define ENTRY_FMT                                                                                                     \
    "{\"action\":\"resource.update\",\"actor\":{\"ip\":\"10.1.2.3\",\"session\":\"sess-%08u\",\"user\":\"bench\"}," \
    "\"details\":{\"resourceVersion\":\"%u\"},\"outcome\":\"success\",\"resource\":{\"kind\":\"Service\","        \
    "\"name\":\"svc-%u\"},\"time\":\"2026-11-21T10:00:00.000Z\"}"

static double seconds(uint64_t ns)
{
    return (double)ns / 1e9;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int count_entry(void *userdata, uint64_t index, const char *text, size_t len)
{
    merkle_hash leaf;
    merkle_leaf_hash(text, len, leaf);
    return merkle_mem_tree_append(userdata, leaf);
}

static int bench_log(const char *dir, uint64_t n, size_t batch)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/bench-audit.db", dir);
    audit_log *l;
    int r = audit_log_open(path, &l);
    if (r < 0) {
        fprintf(stderr, "open %s: %s\n", path, strerror(-r));
        return 1;
    }
    char (*texts)[400] = malloc(batch * 400);
    const char **ptrs = malloc(batch * sizeof(*ptrs));
    size_t *lens = malloc(batch * sizeof(*lens));
    uint64_t t0 = time_mono_ns(), done = audit_log_size(l);
    while (done < n) {
        size_t k = n - done < batch ? (size_t)(n - done) : batch;
        for (size_t i = 0; i < k; i++) {
            unsigned v = (unsigned)(done + i);
            lens[i] = (size_t)snprintf(texts[i], 400, ENTRY_FMT, v, v, v % 1000);
            ptrs[i] = texts[i];
        }
        uint64_t first;
        if ((r = audit_log_append(l, ptrs, lens, k, &first)) < 0) {
            fprintf(stderr, "append: %s\n", strerror(-r));
            return 1;
        }
        done += k;
    }
    uint64_t t1 = time_mono_ns();
    printf("storage_appends_per_s %.0f entries/s (batch %zu, %llu entries, WAL synchronous=FULL)\n",
           (double)n / seconds(t1 - t0), batch, (unsigned long long)n);

    enum { SAMPLES = 2000 };
    uint64_t lat[SAMPLES];
    merkle_hash proof[MERKLE_PROOF_MAX];
    size_t np;
    uint64_t size = audit_log_size(l);
    srandom(1);
    for (int i = 0; i < SAMPLES; i++) {
        uint64_t idx = (uint64_t)random() % size, s0 = time_mono_ns();
        merkle_inclusion_proof(idx, size, audit_log_get_node, l, proof, &np);
        lat[i] = time_mono_ns() - s0;
    }
    qsort(lat, SAMPLES, sizeof(lat[0]), cmp_u64);
    printf("inclusion_proof_us p50 %.1f p99 %.1f (tree of %llu entries, %zu hashes)\n", lat[SAMPLES / 2] / 1e3,
           lat[SAMPLES * 99 / 100] / 1e3, (unsigned long long)size, np);
    for (int i = 0; i < SAMPLES; i++) {
        uint64_t from = 1 + (uint64_t)random() % size, s0 = time_mono_ns();
        merkle_consistency_proof(from, size, audit_log_get_node, l, proof, &np);
        lat[i] = time_mono_ns() - s0;
    }
    qsort(lat, SAMPLES, sizeof(lat[0]), cmp_u64);
    printf("consistency_proof_us p50 %.1f p99 %.1f\n", lat[SAMPLES / 2] / 1e3, lat[SAMPLES * 99 / 100] / 1e3);

    /* what `cloister audit verify` does with the entries: hash every one
     * and rebuild the tree, here reading them straight from storage */
    merkle_mem_tree t = {0};
    uint64_t v0 = time_mono_ns();
    for (uint64_t s = 0; s < size; s += 100000)
        audit_log_read(l, s, s + 100000 < size ? s + 100000 : size, count_entry, &t);
    merkle_hash a, b;
    merkle_root(t.size, merkle_mem_tree_get, &t, a);
    uint64_t v1 = time_mono_ns();
    audit_log_root(l, b);
    printf("verify_recompute_per_s %.0f entries/s (root %s)\n", (double)size / seconds(v1 - v0),
           memcmp(a, b, 32) == 0 ? "matches" : "MISMATCH");
    merkle_mem_tree_free(&t);
    audit_log_free(l);
    free(texts);
    free(ptrs);
    free(lens);
    return memcmp(a, b, 32) == 0 ? 0 : 1;
}

typedef struct sock_arg {
    const char *sock;
    uint64_t deadline;
    size_t batch;
    unsigned id;
    uint64_t acked;
} sock_arg;

static void *sock_main(void *p)
{
    sock_arg *a = p;
    audit_client *c;
    if (audit_client_new("audit", a->sock, &c) < 0)
        return NULL;
    strbuf body;
    strbuf_init(&body, 64 << 20);
    unsigned seq = 0;
    while (time_mono_ns() < a->deadline) {
        strbuf_reset(&body);
        strbuf_puts(&body, "{\"entries\":[");
        for (size_t i = 0; i < a->batch; i++, seq++) {
            if (i)
                strbuf_putc(&body, ',');
            strbuf_printf(&body, ENTRY_FMT, a->id * 100000000u + seq, seq, seq % 1000);
        }
        strbuf_puts(&body, "]}");
        long status;
        char *resp;
        size_t len;
        if (audit_client_request(c, "POST", "/v1/append", body.data, body.len, 30000, &status, &resp, &len) == 0) {
            if (status == 200)
                a->acked += a->batch;
            free(resp);
        }
    }
    strbuf_free(&body);
    audit_client_free(c);
    return NULL;
}

/* Paths of the audit role in a data dir. */
typedef struct audit_paths {
    char socket[4200], db[4200], key[4200], pub[4200];
} audit_paths;

/* Forks the audit role's server (audit_serve(), what cloisterd's audit role
 * runs) on DATA's files, its socket in DATA/run/audit/, with a shared role table
 * in which this process is the api role (the pid the peer check finds);
 * waits until it serves. Returns its pid, or -1. */
static pid_t start_audit_role(const char *data, audit_paths *p, role_health **ret_table)
{
    if (strlen(data) > 4000) {
        fprintf(stderr, "%s: path too long\n", data);
        return -1;
    }
    /* cloisterd's layout: the role's files in DATA/audit/, its socket in DATA/run/audit/ */
    snprintf(p->socket, sizeof(p->socket), "%s/run/audit/audit.sock", data);
    snprintf(p->db, sizeof(p->db), "%s/audit/audit.db", data);
    snprintf(p->key, sizeof(p->key), "%s/audit/audit.key", data);
    snprintf(p->pub, sizeof(p->pub), "%s/audit/audit.pub", data);
    static const char *const dirs[] = {"", "/audit", "/run", "/run/audit"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        char dir[4200];
        snprintf(dir, sizeof(dir), "%s%s", data, dirs[i]);
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
            fprintf(stderr, "mkdir %s: %s\n", dir, strerror(errno));
            return -1;
        }
    }
    role_health *table = mmap(NULL, 2 * sizeof(*table), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (table == MAP_FAILED)
        return -1;
    table[0].name = "api";
    table[1].name = "audit";
    atomic_store(&table[0].pid, getpid());
    const audit_server_config cfg = {.socket = p->socket, .db = p->db, .key = p->key, .pub = p->pub,
                                     .domain = "localhost", .health = &table[1], .roles = table, .n_roles = 2};
    /* the role sigwaits for SIGTERM, as under cloisterd */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, &old);
    pid_t pid = fork();
    if (pid == 0) {
        atomic_store(&table[1].pid, getpid());
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        log_set_role("audit");
        log_set_max_level(LOG_LEVEL_WARN); /* the figures, not the role's start and stop */
        _exit(audit_serve(&cfg));
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0)
        return -1;
    atomic_store(&table[1].pid, pid);
    uint64_t deadline = time_mono_ns() + 30 * NSEC_PER_SEC;
    while (!atomic_load(&table[1].ready)) {
        if (time_mono_ns() > deadline || waitpid(pid, NULL, WNOHANG) == pid) {
            fprintf(stderr, "the audit role did not start\n");
            kill(pid, SIGKILL);
            return -1;
        }
        usleep(1000);
    }
    *ret_table = table;
    return pid;
}

static int bench_socket(const char *data, unsigned secs, unsigned threads, size_t batch)
{
    static audit_paths paths;
    role_health *table;
    pid_t role = start_audit_role(data, &paths, &table);
    if (role < 0)
        return 1;
    sock_arg args[64];
    pthread_t tids[64];
    if (threads > 64)
        threads = 64;
    uint64_t t0 = time_mono_ns();
    for (unsigned i = 0; i < threads; i++) {
        args[i] = (sock_arg){.sock = paths.socket, .deadline = t0 + secs * NSEC_PER_SEC, .batch = batch, .id = i};
        pthread_create(&tids[i], NULL, sock_main, &args[i]);
    }
    uint64_t acked = 0;
    for (unsigned i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        acked += args[i].acked;
    }
    printf("role_appends_per_s %.0f entries/s (%u clients, batch %zu, acknowledged durable)\n",
           (double)acked / seconds(time_mono_ns() - t0), threads, batch);
    int status = 1;
    kill(role, SIGTERM);
    waitpid(role, &status, 0);
    munmap(table, 2 * sizeof(*table));
    if (acked == 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "the audit role acknowledged %llu entries and ended with status %d\n",
                (unsigned long long)acked, status);
        return 1;
    }
    return 0;
}

static int bench_fsync(const char *dir, unsigned n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/bench-fsync", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return 1;
    char buf[256];
    memset(buf, 'x', sizeof(buf));
    uint64_t t0 = time_mono_ns();
    for (unsigned i = 0; i < n; i++)
        if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf) || fdatasync(fd) < 0)
            return 1;
    printf("fsync_per_s %.0f (write 256 B + fdatasync)\n", n / seconds(time_mono_ns() - t0));
    close(fd);
    unlink(path);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "log") == 0)
        return bench_log(argv[2], strtoull(argv[3], NULL, 10), strtoul(argv[4], NULL, 10));
    if (argc == 6 && strcmp(argv[1], "socket") == 0)
        return bench_socket(argv[2], (unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]), strtoul(argv[5], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "fsync") == 0)
        return bench_fsync(argv[2], (unsigned)atoi(argv[3]));
    fprintf(stderr, "usage: bench-audit log DIR N BATCH | socket DATA SECS THREADS BATCH | fsync DIR N\n");
    return 2;
}
