/* The feature index of a policy set: each rule is listed under the most
 * selective fact its guard requires of a request, so a decision only looks
 * at the rules listed under facts the request has, plus the rules listed
 * under none.
 *
 * Feature keys: 'H' name NUL value (header name has that value), 'A' name
 * (header name is absent or not a string: CEL's headers[name] is then an
 * error, which the rule must be evaluated to report), 'P' prefix (the path
 * starts with it), 'C' family prefix-length masked-address (the address is in
 * the network), 'K' kind (the API kind). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "policy/policy-internal.h"

static uint64_t fnv_init(void)
{
    return 1469598103934665603ull;
}

static uint64_t fnv_add(uint64_t h, const void *p, size_t len)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < len; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* The feature with KEY (and its HASH), or NULL. */
static const feature *lookup(const feature_index *fi, const void *key, size_t len, uint64_t hash)
{
    if (!fi->slots)
        return NULL;
    for (size_t i = hash & fi->mask;; i = (i + 1) & fi->mask) {
        uint32_t id = fi->slots[i];
        if (id == 0)
            return NULL;
        const feature *f = &fi->features[id - 1];
        if (f->hash == hash && f->key_len == len && memcmp(f->key, key, len) == 0)
            return f;
    }
}

/* Masks ADDR to the first BITS bits of FAMILY's address (IPv4 lives in the
 * last 32 bits), as cel-net.c compares networks. */
static void mask_addr(uint8_t out[16], const uint8_t addr[16], uint8_t family, uint8_t bits)
{
    unsigned total = (family == 4 ? 96u : 0u) + bits;
    memset(out, 0, 16);
    memcpy(out, addr, total / 8);
    if (total % 8)
        out[total / 8] = (uint8_t)(addr[total / 8] & (0xff << (8 - total % 8)));
}

#define NET_KEY_LEN 19

/* Builds the key of a network feature into KEY (NET_KEY_LEN bytes). */
static void net_key(uint8_t key[NET_KEY_LEN], uint8_t family, uint8_t prefix, const uint8_t addr[16])
{
    key[0] = 'C';
    key[1] = family;
    key[2] = prefix;
    mask_addr(key + 3, addr, family, prefix);
}

/* ---- building ---- */

typedef struct builder {
    feature_index *fi;
    size_t cap;
    uint32_t *slots; /* a lookup table while interning: id + 1, 0 when empty */
    size_t mask;
} builder;

/* Doubles B's lookup table (or creates it) and reinserts every feature. */
static int builder_grow(builder *b)
{
    size_t n = b->slots ? (b->mask + 1) * 2 : 256;
    uint32_t *slots = calloc(n, sizeof(uint32_t));
    if (!slots)
        return -ENOMEM;
    for (size_t id = 0; id < b->fi->n; id++) {
        size_t i = b->fi->features[id].hash & (n - 1);
        while (slots[i])
            i = (i + 1) & (n - 1);
        slots[i] = (uint32_t)id + 1;
    }
    free(b->slots);
    b->slots = slots;
    b->mask = n - 1;
    return 0;
}

/* The id of the feature with KEY, added when new. Returns the id or -ENOMEM. */
static int64_t intern(builder *b, const void *key, size_t len)
{
    feature_index *fi = b->fi;
    if ((!b->slots || (fi->n + 1) * 2 > b->mask + 1) && builder_grow(b) < 0)
        return -ENOMEM;
    uint64_t hash = fnv_add(fnv_init(), key, len);
    size_t i = hash & b->mask;
    for (; b->slots[i]; i = (i + 1) & b->mask) {
        const feature *f = &fi->features[b->slots[i] - 1];
        if (f->hash == hash && f->key_len == len && memcmp(f->key, key, len) == 0)
            return (int64_t)(b->slots[i] - 1);
    }
    if (fi->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 64;
        feature *nf = reallocarray(fi->features, nc, sizeof(feature));
        if (!nf)
            return -ENOMEM;
        fi->features = nf;
        b->cap = nc;
    }
    char *k = malloc(len);
    if (!k)
        return -ENOMEM;
    memcpy(k, key, len);
    fi->features[fi->n] = (feature){.key = k, .key_len = len, .hash = hash};
    b->slots[i] = (uint32_t)fi->n + 1;
    return (int64_t)fi->n++;
}

/* Chooses rule R's feature from its guard and interns it (and the header's
 * absent feature). Returns 0 or -ENOMEM. */
static int index_rule(builder *b, prule *r)
{
    const guard *g = &r->guard;
    r->feature = r->feature_alt = NO_FEATURE;
    uint8_t key[1 + 4096 + 1 + 4096];
    size_t len = 0;
    if (g->hname && g->hname_len + g->hvalue_len + 2 <= sizeof(key)) {
        key[len++] = 'A';
        memcpy(key + len, g->hname, g->hname_len);
        len += g->hname_len;
        int64_t alt = intern(b, key, len);
        if (alt < 0)
            return (int)alt;
        r->feature_alt = (uint32_t)alt;
        key[0] = 'H';
        key[len++] = 0;
        memcpy(key + len, g->hvalue, g->hvalue_len);
        len += g->hvalue_len;
    } else if (g->prefix && g->prefix_len + 1 <= sizeof(key)) {
        key[len++] = 'P';
        memcpy(key + len, g->prefix, g->prefix_len);
        len += g->prefix_len;
    } else if (g->has_cidr) {
        net_key(key, g->cidr.family, g->cidr.prefix, g->cidr.addr);
        len = NET_KEY_LEN;
    } else if (g->kind && g->kind_len + 1 <= sizeof(key)) {
        key[len++] = 'K';
        memcpy(key + len, g->kind, g->kind_len);
        len += g->kind_len;
    } else
        return 0;
    int64_t id = intern(b, key, len);
    if (id < 0)
        return (int)id;
    r->feature = (uint32_t)id;
    return 0;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Fills the lookup table and the lists of what to compute from a request. */
static int index_finish(feature_index *fi)
{
    size_t slots = 16;
    while (slots < fi->n * 2)
        slots *= 2;
    fi->slots = calloc(slots, sizeof(uint32_t));
    fi->mask = slots - 1;
    fi->prefix_lens = calloc(fi->n + 1, sizeof(size_t));
    fi->header_names = calloc(fi->n + 1, sizeof(feature *));
    fi->nets = calloc(fi->n + 1, sizeof(net_shape));
    fi->cidr_features = calloc(fi->n + 1, sizeof(uint32_t));
    if (!fi->slots || !fi->prefix_lens || !fi->header_names || !fi->nets || !fi->cidr_features)
        return -ENOMEM;
    for (size_t id = 0; id < fi->n; id++) {
        feature *f = &fi->features[id];
        size_t i = f->hash & fi->mask;
        while (fi->slots[i])
            i = (i + 1) & fi->mask;
        fi->slots[i] = (uint32_t)id + 1;
        switch (f->key[0]) {
        case 'P': {
            size_t l = f->key_len - 1, k = 0;
            while (k < fi->n_prefix_lens && fi->prefix_lens[k] != l)
                k++;
            if (k == fi->n_prefix_lens)
                fi->prefix_lens[fi->n_prefix_lens++] = l;
            break;
        }
        case 'A':
            fi->header_names[fi->n_header_names++] = f;
            break;
        case 'C': {
            net_shape n = {(uint8_t)f->key[1], (uint8_t)f->key[2]};
            size_t k = 0;
            while (k < fi->n_nets && !(fi->nets[k].family == n.family && fi->nets[k].prefix == n.prefix))
                k++;
            if (k == fi->n_nets)
                fi->nets[fi->n_nets++] = n;
            fi->cidr_features[fi->n_cidr_features++] = (uint32_t)id;
            break;
        }
        case 'K':
            fi->kinds = true;
            break;
        default:
            break;
        }
    }
    if (fi->n_prefix_lens > 1)
        qsort(fi->prefix_lens, fi->n_prefix_lens, sizeof(size_t), cmp_size);
    return 0;
}

int feature_index_build(policy_set *s)
{
    builder b = {.fi = &s->index};
    for (size_t r = 0; r < s->n_rules; r++) {
        int e = index_rule(&b, &s->rules[r]);
        if (e < 0) {
            free(b.slots);
            return e;
        }
    }
    free(b.slots);
    /* posting lists: count, allocate, fill; rules are in decision order, so each list is too */
    feature *f = s->index.features;
    for (size_t r = 0; r < s->n_rules; r++) {
        const prule *p = &s->rules[r];
        if (p->feature != NO_FEATURE)
            f[p->feature].n_rules++;
        if (p->feature_alt != NO_FEATURE)
            f[p->feature_alt].n_rules++;
    }
    for (size_t i = 0; i < s->index.n; i++) {
        f[i].rules = calloc(f[i].n_rules, sizeof(uint32_t));
        if (!f[i].rules)
            return -ENOMEM;
        f[i].n_rules = 0;
    }
    for (size_t r = 0; r < s->n_rules; r++) {
        const prule *p = &s->rules[r];
        if (p->feature != NO_FEATURE)
            f[p->feature].rules[f[p->feature].n_rules++] = (uint32_t)r;
        if (p->feature_alt != NO_FEATURE)
            f[p->feature_alt].rules[f[p->feature_alt].n_rules++] = (uint32_t)r;
    }
    return index_finish(&s->index);
}

void feature_index_clear(feature_index *fi)
{
    for (size_t i = 0; i < fi->n; i++) {
        free(fi->features[i].key);
        free(fi->features[i].rules);
    }
    free(fi->features);
    free(fi->slots);
    free(fi->prefix_lens);
    free(fi->header_names);
    free(fi->nets);
    free(fi->cidr_features);
    *fi = (feature_index){0};
}

/* ---- matching a request ---- */

/* The address V holds, parsed exactly as parse_addr() in cel/cel-net.c does
 * for containsIP(): no zone, IPv4 first (stored mapped), then IPv6. */
static bool request_addr(const cel_value *v, cel_ipnet *ret)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (v->kind != CEL_STRING || v->len == 0 || v->len >= sizeof(buf) || memchr(v->str, '%', v->len))
        return false;
    memcpy(buf, v->str, v->len);
    buf[v->len] = 0;
    cel_ipnet ip = {0};
    if (inet_pton(AF_INET, buf, ip.addr + 12) == 1) {
        ip.addr[10] = ip.addr[11] = 0xff;
        ip.family = 4;
    } else if (inet_pton(AF_INET6, buf, ip.addr) == 1)
        ip.family = 6;
    else
        return false;
    *ret = ip;
    return true;
}

typedef struct matcher {
    const feature_index *fi;
    uint32_t *out;
    size_t n, cap;
} matcher;

static int found(matcher *m, const feature *f)
{
    if (!f)
        return 0;
    if (m->n == m->cap)
        return -E2BIG;
    m->out[m->n++] = (uint32_t)(f - m->fi->features);
    return 0;
}

ssize_t feature_index_match(const feature_index *fi, const policy_request *req, uint32_t *out, size_t cap)
{
    matcher m = {fi, out, 0, cap};
    const cel_value *vars = req->vars;
    uint8_t key[1 + 4096 + 1 + 4096];

    /* path prefixes: one pass of the hash over the path, a probe at each length */
    const cel_value *path = &vars[POLICY_VAR_HTTP_PATH];
    uint64_t h = fnv_add(fnv_init(), "P", 1);
    size_t done = 0;
    for (size_t k = 0; k < fi->n_prefix_lens && fi->prefix_lens[k] <= path->len; k++) {
        size_t l = fi->prefix_lens[k];
        h = fnv_add(h, path->str + done, l - done);
        done = l;
        if (l + 1 > sizeof(key))
            break;
        key[0] = 'P';
        memcpy(key + 1, path->str, l);
        if (found(&m, lookup(fi, key, l + 1, h)) < 0)
            return -E2BIG;
    }

    /* headers: each name some rule compares */
    const cel_value *headers = &vars[POLICY_VAR_HTTP_HEADERS];
    for (size_t k = 0; k < fi->n_header_names; k++) {
        const feature *absent = fi->header_names[k];
        const char *name = absent->key + 1;
        size_t nlen = absent->key_len - 1;
        const cel_value *v = headers->kind == CEL_MAP ? cel_map_get_str(headers->map, name, nlen) : NULL;
        if (!v || v->kind != CEL_STRING || nlen + v->len + 2 > sizeof(key)) {
            if (found(&m, absent) < 0)
                return -E2BIG;
            continue;
        }
        key[0] = 'H';
        memcpy(key + 1, name, nlen);
        key[1 + nlen] = 0;
        memcpy(key + 2 + nlen, v->str, v->len);
        size_t len = 2 + nlen + v->len;
        if (found(&m, lookup(fi, key, len, fnv_add(fnv_init(), key, len))) < 0)
            return -E2BIG;
    }

    /* networks: the address masked to each shape; all of them when it does not parse (an error to report) */
    if (fi->n_nets) {
        cel_ipnet ip;
        if (!request_addr(&vars[POLICY_VAR_REQUEST_IP], &ip)) {
            for (size_t k = 0; k < fi->n_cidr_features; k++)
                if (found(&m, &fi->features[fi->cidr_features[k]]) < 0)
                    return -E2BIG;
        } else
            for (size_t k = 0; k < fi->n_nets; k++) {
                if (fi->nets[k].family != ip.family)
                    continue;
                net_key(key, ip.family, fi->nets[k].prefix, ip.addr);
                if (found(&m, lookup(fi, key, NET_KEY_LEN, fnv_add(fnv_init(), key, NET_KEY_LEN))) < 0)
                    return -E2BIG;
            }
    }

    if (fi->kinds) {
        const cel_value *kind = &vars[POLICY_VAR_API_KIND];
        if (kind->len + 1 <= sizeof(key)) {
            key[0] = 'K';
            memcpy(key + 1, kind->str, kind->len);
            if (found(&m, lookup(fi, key, kind->len + 1, fnv_add(fnv_init(), key, kind->len + 1))) < 0)
                return -E2BIG;
        }
    }
    return (ssize_t)m.n;
}
