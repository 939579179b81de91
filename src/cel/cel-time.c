/* Timestamps (seconds + nanoseconds, years 0001..9999) and durations (int64
 * nanoseconds, as in cel-go): parsing, printing, accessors, and time zones —
 * fixed offsets and IANA names read from the system tz database (TZif files,
 * RFC 8536, including the POSIX TZ rule that extends them into the future). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cel/cel-lib.h"

#define TZ_MAX_ZONES 128u
#define TZ_MAX_FILE (256u * 1024u)
#define TZ_MAX_NAME 64u

/* ---- civil calendar (H. Hinnant's algorithms) ---- */

/* Days since 1970-01-01 of the proleptic Gregorian date Y-M-D. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* The date of day Z since 1970-01-01. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : dm[m - 1];
}

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* 0 = Sunday */
static unsigned weekday(int64_t days)
{
    return (unsigned)(((days + 4) % 7 + 7) % 7);
}

/* ---- parsing and printing ---- */

/* Parses exactly N decimal digits at S. */
static bool digits(const char *s, size_t n, unsigned *ret)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *ret = v;
    return true;
}

int cel_parse_timestamp(const char *s, size_t n, int64_t *ret_sec, uint32_t *ret_nsec)
{
    unsigned y, mo, d, h, mi, se, nsec = 0;
    if (n < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
        s[16] != ':')
        return -EINVAL;
    if (!digits(s, 4, &y) || !digits(s + 5, 2, &mo) || !digits(s + 8, 2, &d) || !digits(s + 11, 2, &h) ||
        !digits(s + 14, 2, &mi) || !digits(s + 17, 2, &se))
        return -EINVAL;
    size_t i = 19;
    if (i < n && s[i] == '.') {
        size_t nd = 0;
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++, nd++)
            if (nd < 9)
                nsec = nsec * 10 + (unsigned)(s[i] - '0');
        if (nd == 0) /* digits past the ninth are dropped */
            return -EINVAL;
        for (; nd < 9; nd++)
            nsec *= 10;
    }
    int64_t off = 0;
    if (i + 1 == n && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i + 6 == n && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
        unsigned oh, om;
        if (!digits(s + i + 1, 2, &oh) || !digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
            return -EINVAL;
        off = (int64_t)(oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
        i += 6;
    } else {
        return -EINVAL;
    }
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59)
        return -EINVAL;
    int64_t sec = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - off;
    if (sec < CEL_TS_MIN || sec > CEL_TS_MAX)
        return -ERANGE;
    *ret_sec = sec;
    *ret_nsec = nsec;
    return 0;
}

int cel_parse_duration(const char *s, size_t n, int64_t *ret_ns)
{
    static const struct {
        const char *unit;
        uint64_t ns;
    } units[] = {
        {"ns", 1}, {"us", 1000}, {"\xc2\xb5s", 1000}, {"\xce\xbcs", 1000}, {"ms", 1000000},
        {"s", 1000000000}, {"m", UINT64_C(60000000000)}, {"h", UINT64_C(3600000000000)},
    };
    size_t i = 0;
    bool neg = false;
    if (i < n && (s[i] == '+' || s[i] == '-')) {
        neg = s[i] == '-';
        i++;
    }
    if (n - i == 1 && s[i] == '0') {
        *ret_ns = 0;
        return 0;
    }
    if (i == n)
        return -EINVAL;
    uint64_t total = 0;
    while (i < n) {
        uint64_t v = 0, frac = 0, scale = 1;
        bool any = false;
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++, any = true) {
            if (v > (UINT64_MAX - 9) / 10)
                return -ERANGE;
            v = v * 10 + (uint64_t)(s[i] - '0');
        }
        if (i < n && s[i] == '.') {
            for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++, any = true)
                if (scale < UINT64_C(1000000000000000000)) {
                    frac = frac * 10 + (uint64_t)(s[i] - '0');
                    scale *= 10;
                }
        }
        if (!any)
            return -EINVAL;
        size_t k, ul = 0;
        for (k = 0; k < ELEMENTSOF(units); k++) {
            ul = strlen(units[k].unit);
            /* "ms" is listed before "m", so the longer unit wins */
            if (i + ul <= n && !memcmp(s + i, units[k].unit, ul))
                break;
        }
        if (k == ELEMENTSOF(units))
            return -EINVAL;
        i += ul;
        uint64_t part;
        if (__builtin_mul_overflow(v, units[k].ns, &part))
            return -ERANGE;
        part += (uint64_t)((double)frac * (double)units[k].ns / (double)scale);
        if (__builtin_add_overflow(total, part, &total) || total > (uint64_t)INT64_MAX + neg)
            return -ERANGE;
    }
    *ret_ns = neg ? (int64_t)(0 - total) : (int64_t)total;
    return 0;
}

void cel_format_timestamp(int64_t sec, uint32_t nsec, char *buf, size_t size)
{
    int64_t days = floor_div(sec, 86400), rem = sec - days * 86400, y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    int len = snprintf(buf, size, "%04lld-%02u-%02uT%02u:%02u:%02u", (long long)y, m, d, (unsigned)(rem / 3600),
                       (unsigned)(rem / 60 % 60), (unsigned)(rem % 60));
    if (nsec && len > 0 && (size_t)len < size) {
        char frac[16];
        snprintf(frac, sizeof(frac), ".%09u", nsec);
        size_t fl = strlen(frac);
        while (fl > 1 && frac[fl - 1] == '0')
            frac[--fl] = 0;
        snprintf(buf + len, size - (size_t)len, "%sZ", frac);
    } else if (len > 0 && (size_t)len < size) {
        snprintf(buf + len, size - (size_t)len, "Z");
    }
}

void cel_format_duration(int64_t ns, char *buf, size_t size)
{
    uint64_t a = ns < 0 ? 0 - (uint64_t)ns : (uint64_t)ns;
    uint64_t s = a / 1000000000, f = a % 1000000000;
    if (!f) {
        snprintf(buf, size, "%s%llus", ns < 0 ? "-" : "", (unsigned long long)s);
        return;
    }
    char frac[16];
    snprintf(frac, sizeof(frac), "%09llu", (unsigned long long)f);
    size_t fl = strlen(frac);
    while (fl > 1 && frac[fl - 1] == '0')
        frac[--fl] = 0;
    snprintf(buf, size, "%s%llu.%ss", ns < 0 ? "-" : "", (unsigned long long)s, frac);
}

/* ---- time zones ---- */

/* A POSIX TZ transition rule: Jn, n or Mm.w.d, at TIME seconds of local time. */
typedef struct tzrule {
    char kind; /* 'J', 'D' (zero-based day), 'M' */
    int day, week, month;
    int32_t time;
} tzrule;

typedef struct tzone {
    char name[TZ_MAX_NAME + 1];
    size_t ntrans;
    int64_t *trans;
    uint8_t *idx;
    size_t ntypes;
    int32_t *utoff;
    /* footer rule */
    bool has_rule, has_dst;
    int32_t std_off, dst_off; /* seconds east of UTC */
    tzrule start, end;
} tzone;

static pthread_mutex_t tz_lock = PTHREAD_MUTEX_INITIALIZER;
static tzone *tz_cache[TZ_MAX_ZONES];
static size_t tz_ncache;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const uint8_t *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* Parses "[+-]hh[:mm[:ss]]" at *S; returns seconds or -1. */
static int32_t posix_time(const char **s, bool allow_sign)
{
    const char *p = *s;
    int sign = 1;
    if (allow_sign && (*p == '+' || *p == '-'))
        sign = *p++ == '-' ? -1 : 1;
    if (*p < '0' || *p > '9')
        return INT32_MIN;
    int32_t v = 0, part = 0;
    while (*p >= '0' && *p <= '9' && part < 1000)
        part = part * 10 + (*p++ - '0');
    v = part * 3600;
    for (int mul = 60; *p == ':' && mul >= 1; mul /= 60) {
        p++;
        part = 0;
        while (*p >= '0' && *p <= '9' && part < 1000)
            part = part * 10 + (*p++ - '0');
        v += part * mul;
    }
    *s = p;
    return sign * v;
}

/* Skips a zone abbreviation ("CET" or "<+0545>") at *S. */
static bool posix_name(const char **s)
{
    const char *p = *s;
    if (*p == '<') {
        while (*p && *p != '>')
            p++;
        if (*p != '>')
            return false;
        *s = p + 1;
        return true;
    }
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))
        p++;
    if (p - *s < 3)
        return false;
    *s = p;
    return true;
}

/* Parses a transition rule ("M3.2.0/2", "J60", "59") at *S into R. */
static bool posix_rule(const char **s, tzrule *r)
{
    const char *p = *s;
    char *end;
    if (*p == 'M') {
        r->kind = 'M';
        r->month = (int)strtol(p + 1, &end, 10);
        if (*end != '.')
            return false;
        r->week = (int)strtol(end + 1, &end, 10);
        if (*end != '.')
            return false;
        r->day = (int)strtol(end + 1, &end, 10);
        if (r->month < 1 || r->month > 12 || r->week < 1 || r->week > 5 || r->day < 0 || r->day > 6)
            return false;
    } else {
        r->kind = *p == 'J' ? 'J' : 'D';
        r->day = (int)strtol(p + (*p == 'J'), &end, 10);
        if (end == p + (*p == 'J') || r->day < 0 || r->day > 365)
            return false;
    }
    p = end;
    r->time = 7200;
    if (*p == '/') {
        p++;
        r->time = posix_time(&p, true);
        if (r->time == INT32_MIN)
            return false;
    }
    *s = p;
    return true;
}

/* Parses a POSIX TZ string such as "AEST-10AEDT,M10.1.0,M4.1.0/3" into Z. */
static bool parse_posix_tz(const char *s, tzone *z)
{
    if (!posix_name(&s))
        return false;
    int32_t off = posix_time(&s, true);
    if (off == INT32_MIN)
        return false;
    z->std_off = -off;
    z->dst_off = z->std_off;
    z->has_rule = true;
    if (!*s)
        return true;
    if (!posix_name(&s))
        return false;
    z->has_dst = true;
    z->dst_off = z->std_off + 3600;
    if (*s && *s != ',') {
        off = posix_time(&s, true);
        if (off == INT32_MIN)
            return false;
        z->dst_off = -off;
    }
    if (*s != ',')
        return false; /* a DST zone without rules: unsupported */
    s++;
    if (!posix_rule(&s, &z->start) || *s++ != ',' || !posix_rule(&s, &z->end))
        return false;
    return *s == 0;
}

/* Local-time seconds since the epoch at which rule R fires in year Y. */
static int64_t rule_time(int64_t y, const tzrule *r)
{
    int64_t day;
    if (r->kind == 'J')
        day = days_from_civil(y, 1, 1) + r->day - 1 + (is_leap(y) && r->day >= 60);
    else if (r->kind == 'D')
        day = days_from_civil(y, 1, 1) + r->day;
    else {
        int64_t first = days_from_civil(y, (unsigned)r->month, 1);
        int64_t md = 1 + ((r->day - (int)weekday(first) + 7) % 7) + (r->week - 1) * 7;
        while (md > days_in_month(y, (unsigned)r->month))
            md -= 7;
        day = first + md - 1;
    }
    return day * 86400 + r->time;
}

/* UTC offset at instant T according to Z's POSIX rule. */
static int32_t rule_offset(const tzone *z, int64_t t)
{
    if (!z->has_dst)
        return z->std_off;
    int64_t days = floor_div(t + z->std_off, 86400), y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    int64_t start = rule_time(y, &z->start) - z->std_off;
    int64_t end = rule_time(y, &z->end) - z->dst_off;
    bool dst = start < end ? (t >= start && t < end) : !(t >= end && t < start);
    return dst ? z->dst_off : z->std_off;
}

static void tzone_free(tzone *z)
{
    if (!z)
        return;
    free(z->trans);
    free(z->idx);
    free(z->utoff);
    free(z);
}

/* Parses the TZif data BUF of N bytes; NULL when malformed or out of memory. */
static tzone *parse_tzif(const uint8_t *buf, size_t n)
{
    if (n < 44 || memcmp(buf, "TZif", 4))
        return NULL;
    char version = (char)buf[4];
    const uint8_t *p = buf;
    size_t tsize = 4, leapsize = 8;
    for (int pass = 0; pass < 2; pass++) {
        if ((size_t)(p - buf) + 44 > n || memcmp(p, "TZif", 4))
            return NULL;
        size_t isut = be32(p + 20), isstd = be32(p + 24), leap = be32(p + 28), timecnt = be32(p + 32),
               typecnt = be32(p + 36), charcnt = be32(p + 40);
        if (timecnt > 100000 || typecnt == 0 || typecnt > 256 || charcnt > 65536 || leap > 100000 ||
            isut > 256 || isstd > 256)
            return NULL;
        size_t body = timecnt * tsize + timecnt + typecnt * 6 + charcnt + leap * leapsize + isstd + isut;
        const uint8_t *d = p + 44;
        if ((size_t)(d - buf) + body > n)
            return NULL;
        if (pass == 0 && version >= '2') {
            /* skip the 32-bit block and read the 64-bit one */
            p = d + body;
            tsize = 8;
            leapsize = 12;
            continue;
        }
        tzone *z = calloc(1, sizeof(*z));
        if (!z)
            return NULL;
        z->ntrans = timecnt;
        z->ntypes = typecnt;
        z->trans = calloc(timecnt ? timecnt : 1, sizeof(int64_t));
        z->idx = calloc(timecnt ? timecnt : 1, 1);
        z->utoff = calloc(typecnt, sizeof(int32_t));
        if (!z->trans || !z->idx || !z->utoff) {
            tzone_free(z);
            return NULL;
        }
        for (size_t i = 0; i < timecnt; i++)
            z->trans[i] = tsize == 8 ? be64(d + i * 8) : (int32_t)be32(d + i * 4);
        d += timecnt * tsize;
        for (size_t i = 0; i < timecnt; i++) {
            z->idx[i] = d[i];
            if (d[i] >= typecnt) {
                tzone_free(z);
                return NULL;
            }
        }
        d += timecnt;
        for (size_t i = 0; i < typecnt; i++)
            z->utoff[i] = (int32_t)be32(d + i * 6);
        d += typecnt * 6 + charcnt + leap * leapsize + isstd + isut;
        /* footer: "\n<POSIX TZ>\n" */
        if (tsize == 8 && (size_t)(d - buf) < n && *d == '\n') {
            const uint8_t *end = memchr(d + 1, '\n', n - (size_t)(d - buf) - 1);
            if (end && end - d - 1 > 0 && end - d - 1 < 128) {
                char rule[128];
                memcpy(rule, d + 1, (size_t)(end - d - 1));
                rule[end - d - 1] = 0;
                if (!parse_posix_tz(rule, z))
                    z->has_rule = false;
            }
        }
        return z;
    }
    return NULL;
}

/* True for names like "America/New_York" or "Etc/GMT+3": no "..", no leading '/'. */
static bool valid_zone_name(const char *s, size_t n)
{
    if (n == 0 || n > TZ_MAX_NAME || s[0] == '/' || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '-' || c == '+' || c == '/' || (c == '.' && s[i - 1] != '.' && s[i - 1] != '/');
        if (!ok)
            return false;
    }
    return true;
}

/* The cached zone NAME or NULL. Lock-free: entries are published with a
 * release store of the count and never change or go away afterwards. */
static tzone *cached_zone(const char *name, size_t n)
{
    size_t count = __atomic_load_n(&tz_ncache, __ATOMIC_ACQUIRE);
    for (size_t i = 0; i < count; i++)
        if (strlen(tz_cache[i]->name) == n && !memcmp(tz_cache[i]->name, name, n))
            return tz_cache[i];
    return NULL;
}

/* The zone NAME from the cache or the tz database; NULL when unknown. Zones
 * stay cached for the life of the process (at most TZ_MAX_ZONES of them). */
static const tzone *load_zone(const char *name, size_t n)
{
    if (!valid_zone_name(name, n))
        return NULL;
    tzone *z = cached_zone(name, n);
    if (z)
        return z;
    pthread_mutex_lock(&tz_lock);
    z = cached_zone(name, n);
    if (!z && tz_ncache < TZ_MAX_ZONES) {
        const char *dir = getenv("TZDIR");
        char path[512];
        snprintf(path, sizeof(path), "%s/%.*s", dir && *dir ? dir : "/usr/share/zoneinfo", (int)n, name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        uint8_t *buf = malloc(TZ_MAX_FILE);
        if (fd >= 0 && buf) {
            size_t len = 0;
            ssize_t r;
            while (len < TZ_MAX_FILE && (r = read(fd, buf + len, TZ_MAX_FILE - len)) > 0)
                len += (size_t)r;
            z = parse_tzif(buf, len);
        }
        free(buf);
        if (fd >= 0)
            close(fd);
        if (z) {
            memcpy(z->name, name, n);
            z->name[n] = 0;
            tz_cache[tz_ncache] = z;
            __atomic_store_n(&tz_ncache, tz_ncache + 1, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&tz_lock);
    return z;
}

static int32_t zone_offset(const tzone *z, int64_t t)
{
    if (z->ntrans == 0 || t < z->trans[0]) {
        if (z->ntrans == 0 && z->has_rule)
            return rule_offset(z, t);
        return z->utoff[0];
    }
    if (t >= z->trans[z->ntrans - 1] && z->has_rule)
        return rule_offset(z, t);
    size_t lo = 0, hi = z->ntrans; /* largest i with trans[i] <= t */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (z->trans[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return z->utoff[z->idx[lo]];
}

int cel_tz_offset(const char *tz, size_t n, int64_t sec, int32_t *ret_offset)
{
    /* fixed offsets: [+-]hh:mm */
    size_t i = 0;
    int sign = 1;
    if (n && (tz[0] == '+' || tz[0] == '-')) {
        sign = tz[0] == '-' ? -1 : 1;
        i = 1;
    }
    if (n - i == 5 && tz[i + 2] == ':') {
        unsigned h, m;
        if (!digits(tz + i, 2, &h) || !digits(tz + i + 3, 2, &m) || h > 23 || m > 59)
            return -EINVAL;
        *ret_offset = sign * (int32_t)(h * 3600 + m * 60);
        return 0;
    }
    if (n == 3 && !memcmp(tz, "UTC", 3)) {
        *ret_offset = 0;
        return 0;
    }
    const tzone *z = load_zone(tz, n);
    if (!z)
        return -ENOENT;
    *ret_offset = zone_offset(z, sec);
    return 0;
}

/* ---- functions ---- */

CEL_FN(cel_fn_timestamp)
{
    switch (a[0].kind) {
    case CEL_TIMESTAMP:
        return a[0];
    case CEL_INT:
        if (a[0].i < CEL_TS_MIN || a[0].i > CEL_TS_MAX)
            return cel_err(e, n, "timestamp out of range");
        return cel_timestamp(a[0].i, 0);
    case CEL_STRING: {
        int64_t sec;
        uint32_t nsec;
        int r = cel_parse_timestamp(a[0].str, a[0].len, &sec, &nsec);
        if (r == -ERANGE)
            return cel_err(e, n, "timestamp out of range");
        if (r < 0)
            return cel_err(e, n, "invalid timestamp '%.*s'", (int)MIN(a[0].len, 64u), a[0].str);
        return cel_timestamp(sec, nsec);
    }
    default:
        return cel_err_no_overload(e, n);
    }
}

CEL_FN(cel_fn_duration)
{
    switch (a[0].kind) {
    case CEL_DURATION:
        return a[0];
    case CEL_STRING: {
        int64_t ns;
        int r = cel_parse_duration(a[0].str, a[0].len, &ns);
        if (r == -ERANGE)
            return cel_err(e, n, "duration out of range");
        if (r < 0)
            return cel_err(e, n, "invalid duration '%.*s'", (int)MIN(a[0].len, 64u), a[0].str);
        return cel_duration(ns);
    }
    default:
        return cel_err_no_overload(e, n);
    }
}

/* The getX() accessors: on durations the total in that unit, on timestamps
 * the calendar field in UTC or in the time zone given as second argument. */
CEL_FN(cel_fn_time_get)
{
    const char *f = n->name + 3;
    if (a[0].kind == CEL_DURATION && na == 1) {
        int64_t ns = a[0].i;
        if (!strcmp(f, "Hours"))
            return cel_int(ns / INT64_C(3600000000000));
        if (!strcmp(f, "Minutes"))
            return cel_int(ns / INT64_C(60000000000));
        if (!strcmp(f, "Seconds"))
            return cel_int(ns / 1000000000);
        if (!strcmp(f, "Milliseconds"))
            return cel_int(ns / 1000000);
        return cel_err_no_overload(e, n);
    }
    if (a[0].kind != CEL_TIMESTAMP || (na == 2 && a[1].kind != CEL_STRING))
        return cel_err_no_overload(e, n);
    int32_t off = 0;
    if (na == 2) {
        int r = cel_tz_offset(a[1].str, a[1].len, a[0].i, &off);
        if (r < 0)
            return cel_err(e, n, "unknown time zone '%.*s'", (int)MIN(a[1].len, 64u), a[1].str);
    }
    int64_t local = a[0].i + off, days = floor_div(local, 86400), rem = local - days * 86400, y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (!strcmp(f, "FullYear"))
        return cel_int(y);
    if (!strcmp(f, "Month"))
        return cel_int(m - 1);
    if (!strcmp(f, "Date"))
        return cel_int(d);
    if (!strcmp(f, "DayOfMonth"))
        return cel_int(d - 1);
    if (!strcmp(f, "DayOfWeek"))
        return cel_int(weekday(days));
    if (!strcmp(f, "DayOfYear"))
        return cel_int(days - days_from_civil(y, 1, 1));
    if (!strcmp(f, "Hours"))
        return cel_int(rem / 3600);
    if (!strcmp(f, "Minutes"))
        return cel_int(rem / 60 % 60);
    if (!strcmp(f, "Seconds"))
        return cel_int(rem % 60);
    return cel_int(a[0].len / 1000000);
}
