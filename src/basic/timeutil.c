#include "basic/timeutil.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

uint64_t time_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

uint64_t time_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* The whole seconds' part is formatted once per second and thread (the
 * proxy stamps every access record): gmtime_r and snprintf cost more than
 * the rest of a record. */
char *time_format_rfc3339_ms(uint64_t ns, char *buf, size_t size)
{
    static _Thread_local time_t cached_secs = -1;
    static _Thread_local char cached[32];
    static _Thread_local size_t cached_len;
    time_t secs = (time_t)(ns / NSEC_PER_SEC);
    if (secs != cached_secs) {
        struct tm tm;
        gmtime_r(&secs, &tm);
        int n = snprintf(cached, sizeof(cached), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        cached_len = n > 0 && (size_t)n < sizeof(cached) ? (size_t)n : 0;
        cached_secs = secs;
    }
    unsigned ms = (unsigned)((ns % NSEC_PER_SEC) / NSEC_PER_MSEC);
    if (size == 0)
        return buf;
    if (cached_len + 6 > size) { /* too small: cut as snprintf would */
        snprintf(buf, size, "%s.%03uZ", cached, ms);
        return buf;
    }
    memcpy(buf, cached, cached_len);
    char *p = buf + cached_len;
    *p++ = '.';
    *p++ = (char)('0' + ms / 100);
    *p++ = (char)('0' + ms / 10 % 10);
    *p++ = (char)('0' + ms % 10);
    *p++ = 'Z';
    *p = 0;
    return buf;
}

char *time_format_rfc3339(int64_t secs, char *buf, size_t size)
{
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return buf;
}

/* Reads exactly N decimal digits at *P into *RET and advances P. */
static int take_digits(const char **p, int n, int *ret)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -EINVAL;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *ret = v;
    return 0;
}

static int expect(const char **p, char c)
{
    if (**p != c)
        return -EINVAL;
    (*p)++;
    return 0;
}

int time_parse_rfc3339(const char *s, int64_t *ret_secs)
{
    const char *p = s;
    int y, mo, d, h, mi, sec;
    if (take_digits(&p, 4, &y) < 0 || expect(&p, '-') < 0 || take_digits(&p, 2, &mo) < 0 ||
        expect(&p, '-') < 0 || take_digits(&p, 2, &d) < 0)
        return -EINVAL;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return -EINVAL;
    p++;
    if (take_digits(&p, 2, &h) < 0 || expect(&p, ':') < 0 || take_digits(&p, 2, &mi) < 0 ||
        expect(&p, ':') < 0 || take_digits(&p, 2, &sec) < 0)
        return -EINVAL;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return -EINVAL;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    int offset = 0;
    if (*p == 'Z' || *p == 'z')
        p++;
    else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om;
        p++;
        if (take_digits(&p, 2, &oh) < 0 || expect(&p, ':') < 0 || take_digits(&p, 2, &om) < 0)
            return -EINVAL;
        if (oh > 23 || om > 59)
            return -EINVAL;
        offset = sign * (oh * 3600 + om * 60);
    } else
        return -EINVAL;
    if (*p)
        return -EINVAL;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || sec > 60)
        return -EINVAL;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo == 2 && d == 29 && !leap)
        return -EINVAL;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi,
                    .tm_sec = sec == 60 ? 59 : sec};
    time_t t = timegm(&tm);
    *ret_secs = (int64_t)t - offset;
    return 0;
}
