/* Workloads' output: pipes, rings, the log file and OTLP (see output.h). */
#include "runner/output.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "telemetry/telemetry.h"

enum { STREAM_STDOUT, STREAM_STDERR };
static const char *const stream_names[] = {"stdout", "stderr"};

typedef struct log_line {
    uint64_t seq;
    int64_t time_ns;
    uint8_t stream;
    uint32_t len;
    char *text; /* NUL-terminated, valid UTF-8 */
} log_line;

typedef struct ring ring;

/* One of a sandbox's two pipes, read on the loop. */
typedef struct pipe_reader {
    ring *r;
    uint8_t stream;
    int write_fd;      /* the sandbox's end until the launch, then -1 */
    h2o_socket_t *sock; /* the runner's end; NULL once closed */
    size_t partial_len;
    char partial[RUNNER_LOG_LINE_MAX]; /* a line not ended yet */
} pipe_reader;

/* The recent lines of one sandbox name, and its pipes. */
struct ring {
    runner_output *o;
    char name[64];
    char enclave[64]; /* "" when its owner tag names none */
    bool forgotten;   /* deleted: kept only until its pipes close */
    int log_fd;       /* <dir>/<name>.log, or -1 */
    log_line lines[RUNNER_LOG_LINES_MAX]; /* a ring: the oldest at HEAD */
    size_t head, count, bytes;
    uint64_t last_seq;
    pipe_reader pipes[2];
};

struct runner_output {
    h2o_loop_t *loop;
    char dir[4096];
    char boot[17]; /* a random id of this run: a reader's cursor of another run means nothing */
    uint64_t seq;
    ring *rings[RUNNER_LOG_RINGS_MAX];
};

int runner_output_new(h2o_loop_t *loop, const char *dir, runner_output **ret)
{
    runner_output *o = calloc(1, sizeof(*o));
    if (!o)
        return -ENOMEM;
    o->loop = loop;
    snprintf(o->dir, sizeof(o->dir), "%s", dir);
    uint8_t boot[8];
    random_bytes(boot, sizeof(boot));
    hex_encode(boot, sizeof(boot), o->boot);
    *ret = o;
    return 0;
}

static void ring_drop_lines(ring *r)
{
    for (size_t i = 0; i < r->count; i++)
        free(r->lines[(r->head + i) % RUNNER_LOG_LINES_MAX].text);
    r->head = r->count = r->bytes = 0;
}

static bool ring_piped(const ring *r)
{
    return r->pipes[0].sock || r->pipes[1].sock || r->pipes[0].write_fd >= 0 || r->pipes[1].write_fd >= 0;
}

/* Closes R's pipes (what is unread is lost) and its log file. */
static void ring_close(ring *r)
{
    for (size_t i = 0; i < 2; i++) {
        pipe_reader *p = &r->pipes[i];
        if (p->sock)
            h2o_socket_close(p->sock);
        p->sock = NULL;
        if (p->write_fd >= 0)
            close(p->write_fd);
        p->write_fd = -1;
    }
    if (r->log_fd >= 0)
        close(r->log_fd);
    r->log_fd = -1;
}

/* Frees R and its slot. */
static void ring_free(ring *r)
{
    runner_output *o = r->o;
    ring_close(r);
    ring_drop_lines(r);
    for (size_t i = 0; i < RUNNER_LOG_RINGS_MAX; i++)
        if (o->rings[i] == r)
            o->rings[i] = NULL;
    free(r);
}

void runner_output_free(runner_output *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < RUNNER_LOG_RINGS_MAX; i++)
        if (o->rings[i])
            ring_free(o->rings[i]);
    free(o);
}

/* The length of the valid UTF-8 sequence at S (N bytes left), or 0. */
static size_t utf8_sequence(const uint8_t *s, size_t n)
{
    if (s[0] < 0x80)
        return 1;
    size_t len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (len == 0 || s[0] > 0xf4 || n < len)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) || /* overlong, surrogates */
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))   /* overlong, past U+10FFFF */
        return 0;
    return len;
}

/* Writes IN (LEN bytes) to OUT (at least 3 * LEN + 1 bytes) as valid UTF-8
 * with tab the only control character, anything else as U+FFFD; returns the
 * length written. */
static size_t clean_text(const char *in, size_t len, char *out)
{
    const uint8_t *s = (const uint8_t *)in;
    size_t w = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_sequence(s + i, len - i);
        if (n == 0 || (n == 1 && ((s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f))) {
            memcpy(out + w, "\xef\xbf\xbd", 3);
            w += 3;
            i++;
            continue;
        }
        memcpy(out + w, s + i, n);
        w += n;
        i += n;
    }
    out[w] = 0;
    return w;
}

/* One line of R's STREAM: kept in the ring, exported as an OTLP log record. */
static void line_emit(ring *r, uint8_t stream, const char *text, size_t len)
{
    static char clean[3 * RUNNER_LOG_LINE_MAX + 1]; /* the runner's one loop thread */
    if (len && text[len - 1] == '\r')
        len--;
    size_t n = clean_text(text, len, clean);
    const char *attrs[7];
    size_t a = 0;
    if (r->enclave[0]) {
        attrs[a++] = "cloister.enclave";
        attrs[a++] = r->enclave;
        attrs[a++] = "cloister.replica";
    } else /* not an Enclave's replica: named by the sandbox */
        attrs[a++] = "cloister.sandbox";
    attrs[a++] = r->name;
    attrs[a++] = "log.iostream";
    attrs[a++] = stream_names[stream];
    attrs[a] = NULL;
    telemetry_log(stream == STREAM_STDERR ? TELEMETRY_SEVERITY_WARN : TELEMETRY_SEVERITY_INFO, clean, NULL, attrs);
    if (r->forgotten)
        return;
    char *copy = malloc(n + 1);
    if (!copy)
        return; /* the file and the exporter have it */
    memcpy(copy, clean, n + 1);
    while (r->count && (r->count == RUNNER_LOG_LINES_MAX || r->bytes + n > RUNNER_LOG_BYTES_MAX)) {
        log_line *old = &r->lines[r->head];
        r->bytes -= old->len;
        free(old->text);
        r->head = (r->head + 1) % RUNNER_LOG_LINES_MAX;
        r->count--;
    }
    log_line *l = &r->lines[(r->head + r->count) % RUNNER_LOG_LINES_MAX];
    *l = (log_line){.seq = ++r->o->seq, .time_ns = time_now_ns(), .stream = stream, .len = (uint32_t)n, .text = copy};
    r->count++;
    r->bytes += n;
    r->last_seq = l->seq;
}

/* Splits DATA (LEN bytes) of pipe P into lines, a line longer than
 * RUNNER_LOG_LINE_MAX into pieces. */
static void pipe_consume(pipe_reader *p, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\n' || p->partial_len == sizeof(p->partial)) {
            line_emit(p->r, p->stream, p->partial, p->partial_len);
            p->partial_len = 0;
            if (data[i] == '\n')
                continue;
        }
        p->partial[p->partial_len++] = data[i];
    }
}

static void on_pipe_read(h2o_socket_t *sock, const char *err)
{
    pipe_reader *p = sock->data;
    ring *r = p->r;
    h2o_buffer_t *in = sock->input;
    if (in->size) {
        if (r->log_fd >= 0) {
            ssize_t _unused_ w = write(r->log_fd, in->bytes, in->size);
        }
        pipe_consume(p, in->bytes, in->size);
        h2o_buffer_consume(&sock->input, in->size);
    }
    if (!err)
        return;
    /* the sandbox (and every process it left) closed it */
    if (p->partial_len)
        line_emit(r, p->stream, p->partial, p->partial_len);
    p->partial_len = 0;
    h2o_socket_close(sock);
    p->sock = NULL;
    if (!ring_piped(r) && r->log_fd >= 0) {
        close(r->log_fd);
        r->log_fd = -1;
    }
    if (r->forgotten && !ring_piped(r))
        ring_free(r);
}

static ring *ring_find(const runner_output *o, const char *name)
{
    for (size_t i = 0; i < RUNNER_LOG_RINGS_MAX; i++)
        if (o->rings[i] && !o->rings[i]->forgotten && strcmp(o->rings[i]->name, name) == 0)
            return o->rings[i];
    return NULL;
}

/* A slot for a new ring: a free one, else the one of a sandbox gone
 * longest (no pipe open, oldest last line). NULL when every slot is busy. */
static ring **ring_slot(runner_output *o)
{
    ring **oldest = NULL;
    for (size_t i = 0; i < RUNNER_LOG_RINGS_MAX; i++) {
        ring *r = o->rings[i];
        if (!r)
            return &o->rings[i];
        if (!ring_piped(r) && (!oldest || r->last_seq < (*oldest)->last_seq))
            oldest = &o->rings[i];
    }
    if (oldest)
        ring_free(*oldest); /* clears the slot */
    return oldest;
}

/* The enclave an owner tag "enclave/<name>/…" names into OUT ("" when none). */
static void owner_enclave(const char *owner, char *out, size_t size)
{
    out[0] = 0;
    if (strncmp(owner, "enclave/", 8) != 0)
        return;
    const char *end = strchr(owner + 8, '/');
    size_t n = end ? (size_t)(end - owner - 8) : strlen(owner + 8);
    if (n && n < size)
        snprintf(out, size, "%.*s", (int)n, owner + 8);
}

int runner_output_open(runner_output *o, const char *name, const char *owner, int *ret_stdout_fd,
                       int *ret_stderr_fd)
{
    ring *r = ring_find(o, name);
    if (r)
        ring_close(r); /* a former sandbox of the name: its lines stay */
    else {
        ring **slot = ring_slot(o);
        if (!slot)
            return -EBUSY;
        if (!(r = calloc(1, sizeof(*r))))
            return -ENOMEM;
        *slot = r;
        r->o = o;
        snprintf(r->name, sizeof(r->name), "%s", name);
        r->log_fd = -1;
        r->pipes[0].write_fd = r->pipes[1].write_fd = -1;
    }
    owner_enclave(owner, r->enclave, sizeof(r->enclave));
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s.log", o->dir, name);
    r->log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    for (uint8_t i = 0; i < 2; i++) {
        pipe_reader *p = &r->pipes[i];
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) < 0) {
            int e = -errno;
            ring_close(r);
            return e;
        }
        *p = (pipe_reader){.r = r, .stream = i, .write_fd = fds[1]};
        p->sock = h2o_evloop_socket_create(o->loop, fds[0], 0); /* read once started */
        if (!p->sock) {
            close(fds[0]);
            ring_close(r);
            return -ENOMEM;
        }
        p->sock->data = p;
    }
    *ret_stdout_fd = r->pipes[STREAM_STDOUT].write_fd;
    *ret_stderr_fd = r->pipes[STREAM_STDERR].write_fd;
    return 0;
}

void runner_output_started(runner_output *o, const char *name, bool launched)
{
    ring *r = ring_find(o, name);
    if (!r)
        return;
    if (!launched) {
        ring_close(r);
        return;
    }
    for (size_t i = 0; i < 2; i++) {
        pipe_reader *p = &r->pipes[i];
        if (p->write_fd >= 0)
            close(p->write_fd);
        p->write_fd = -1;
        if (p->sock)
            h2o_socket_read_start(p->sock, on_pipe_read);
    }
}

void runner_output_forget(runner_output *o, const char *name)
{
    ring *r = ring_find(o, name);
    if (!r)
        return;
    r->forgotten = true;
    ring_drop_lines(r);
    if (!ring_piped(r))
        ring_free(r);
}

json_t *runner_output_read(const runner_output *o, const char *enclave, const char *replica, uint64_t after,
                           size_t limit, bool tail)
{
    limit = MIN(limit, (size_t)RUNNER_LOG_PAGE_MAX);
    /* the rings' lines above AFTER are each in order: merge them by seq */
    const ring *rs[RUNNER_LOG_RINGS_MAX];
    size_t pos[RUNNER_LOG_RINGS_MAX], n = 0, total = 0;
    for (size_t i = 0; i < RUNNER_LOG_RINGS_MAX; i++) {
        const ring *r = o->rings[i];
        if (!r || r->forgotten || strcmp(r->enclave, enclave) != 0 || (replica && strcmp(r->name, replica) != 0))
            continue;
        size_t k = 0;
        while (k < r->count && r->lines[(r->head + k) % RUNNER_LOG_LINES_MAX].seq <= after)
            k++;
        rs[n] = r;
        pos[n++] = k;
        total += r->count - k;
    }
    size_t skip = tail && total > limit ? total - limit : 0;
    json_t *lines = json_array();
    uint64_t next = after;
    for (size_t taken = 0; lines && taken < skip + limit;) {
        const log_line *best = NULL;
        size_t from = 0;
        for (size_t i = 0; i < n; i++) {
            if (pos[i] == rs[i]->count)
                continue;
            const log_line *l = &rs[i]->lines[(rs[i]->head + pos[i]) % RUNNER_LOG_LINES_MAX];
            if (!best || l->seq < best->seq) {
                best = l;
                from = i;
            }
        }
        if (!best)
            break;
        pos[from]++;
        next = best->seq;
        if (taken++ < skip)
            continue;
        char time[40];
        time_format_rfc3339_ms(best->time_ns, time, sizeof(time));
        json_t *item = json_pack("{s:I, s:s, s:s, s:s, s:s}", "seq", (json_int_t)best->seq, "time", time, "replica",
                                 rs[from]->name, "stream", stream_names[best->stream], "text", best->text);
        if (!item || json_array_append_new(lines, item) < 0) {
            json_decref(lines);
            return NULL;
        }
    }
    if (!lines)
        return NULL;
    return json_pack("{s:s, s:I, s:o}", "boot", o->boot, "next", (json_int_t)next, "lines", lines);
}
