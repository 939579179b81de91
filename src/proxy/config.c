/* The proxy's configuration snapshots (see config.h). */
#include "proxy/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "proxy/bridge.h"
#include "proxy/upstream.h"

#define HOST_MAX 253

int proxy_state_init(proxy_state *st)
{
    *st = (proxy_state){.revision = -1};
    st->docs = policy_docs_new();
    st->sessions = json_object();
    st->jwks = json_pack("{s:[]}", "keys");
    st->secrets = json_object();
    st->enclaves = json_object();
    st->attestation_policies = json_object();
    if (!st->docs || !st->sessions || !st->jwks || !st->secrets || !st->enclaves || !st->attestation_policies) {
        proxy_state_done(st);
        return -ENOMEM;
    }
    st->policies_changed = true;
    return 0;
}

void proxy_state_done(proxy_state *st)
{
    policy_docs_free(st->docs);
    json_decref(st->sessions);
    json_decref(st->jwks);
    json_decref(st->secrets);
    json_decref(st->enclaves);
    json_decref(st->attestation_policies);
    OPENSSL_cleanse(st->handoff_key, sizeof(st->handoff_key));
    *st = (proxy_state){.revision = -1};
}

/* ---- snapshots ---- */

/* Lower-cases the host part of HOST (LEN bytes) into OUT (HOST_MAX + 1),
 * dropping a ":port" and a trailing dot. Returns false when it is empty or
 * too long. */
static bool host_key(const char *host, size_t len, char *out)
{
    if (len > 0 && host[0] == '[') { /* an IPv6 literal: keep up to ']' */
        const char *end = memchr(host, ']', len);
        if (!end)
            return false;
        len = (size_t)(end - host) + 1;
    } else {
        const char *colon = memchr(host, ':', len);
        if (colon)
            len = (size_t)(colon - host);
    }
    if (len > 0 && host[len - 1] == '.')
        len--;
    if (len == 0 || len > HOST_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)host[i]);
    out[len] = 0;
    return true;
}

static void service_clear(proxy_service *s)
{
    proxy_plugins_clear(s);
    json_decref(s->doc);
    json_decref(s->attestation_policy);
    free(s->upstream_text);
    if (s->inject_value.base) {
        OPENSSL_cleanse(s->inject_value.base, s->inject_value.len);
        free(s->inject_value.base);
    }
    free(s->inject_name.base);
    *s = (proxy_service){0};
}

/* Prepares the header a Service injects: its name and value ("Bearer …",
 * "Basic base64(…)" or the value itself) from the delivered SECRETS. */
static int service_inject(proxy_service *s, const json_t *inject, const json_t *secrets)
{
    const char *secret = json_string_value(json_object_get(inject, "secret"));
    const char *key = json_string_value(json_object_get(inject, "key"));
    const char *as = json_string_value(json_object_get(inject, "as"));
    const char *header = json_string_value(json_object_get(inject, "header"));
    if (!secret || !key)
        return 0;
    s->inject = PROXY_INJECT_HEADER;
    if (!as)
        as = "bearer";
    char ref[300];
    snprintf(ref, sizeof(ref), "%s/%s", secret, key);
    const json_t *v = json_object_get(secrets, ref);
    const char *name = strcmp(as, "header") == 0 && header ? header : "authorization";
    if (!(s->inject_name.base = strdup(name)))
        return -ENOMEM;
    s->inject_name.len = strlen(name);
    for (size_t i = 0; i < s->inject_name.len; i++)
        s->inject_name.base[i] = (char)tolower((unsigned char)s->inject_name.base[i]);
    if (!json_is_string(v)) {
        s->inject_missing = true;
        return 0;
    }
    const char *value = json_string_value(v);
    size_t len = json_string_length(v);
    char *out = NULL;
    size_t out_len = 0;
    if (strcmp(as, "bearer") == 0) {
        out_len = 7 + len;
        if ((out = malloc(out_len + 1)))
            snprintf(out, out_len + 1, "Bearer %s", value);
    } else if (strcmp(as, "basic") == 0) {
        if ((out = malloc(6 + base64_encoded_size(len)))) {
            memcpy(out, "Basic ", 6);
            out_len = 6 + base64_encode((const uint8_t *)value, len, out + 6, false);
        }
    } else {
        out_len = len;
        out = malloc(len + 1);
        if (out)
            memcpy(out, value, len + 1);
    }
    if (!out)
        return -ENOMEM;
    /* a value that cannot be a header value is not sent at all */
    for (size_t i = 0; i < out_len; i++)
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f) {
            OPENSSL_cleanse(out, out_len);
            free(out);
            s->inject_missing = true;
            return 0;
        }
    s->inject_value = h2o_iovec_init(out, out_len);
    return 0;
}

/* Finds the running replicas of ENCLAVE for S: a bridge to each, verified
 * against the Enclave's AttestationPolicy; S->unreachable says why there
 * is none. */
static void enclave_replicas(proxy_service *s, const char *enclave, const proxy_state *st)
{
    const json_t *doc = json_object_get(st->enclaves, enclave);
    const char *policy_name = json_string_value(json_object_get(json_object_get(doc, "spec"), "attestationPolicy"));
    const json_t *policy = policy_name ? json_object_get(st->attestation_policies, policy_name) : NULL;
    if (!doc) {
        s->unreachable = "its Enclave does not exist";
        return;
    }
    if (!policy) {
        s->unreachable = "its Enclave names no AttestationPolicy that exists: the proxy reaches only verified enclaves";
        return;
    }
    s->attestation_policy = json_incref((json_t *)policy);
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(json_object_get(doc, "status"), "replicas"), i, r)
    {
        const char *state = json_string_value(json_object_get(r, "state"));
        const char *name = json_string_value(json_object_get(r, "name"));
        if (!name || !state || strcmp(state, "running") != 0 || s->n_replicas == PROXY_ENCLAVE_REPLICAS_MAX)
            continue;
        proxy_origin *bridge = strlen(name) < sizeof(s->replica_names[0]) ? proxy_bridge_origin(name, policy, enclave)
                                                                           : NULL;
        if (bridge) {
            strcpy(s->replica_names[s->n_replicas], name);
            s->replicas[s->n_replicas++] = bridge;
        }
    }
    if (!s->n_replicas)
        s->unreachable = "its Enclave has no running replica";
}

/* Fills S from the Service document DOC; a portal Service's upstream is
 * the API at API_URL. Returns 0, 1 when the Service cannot be served
 * (logged), or -ENOMEM. */
static int service_init(proxy_service *s, json_t *doc, const proxy_state *st, const char *api_url)
{
    const char *name = json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
    const json_t *spec = json_object_get(doc, "spec");
    const json_t *upstream = json_object_get(spec, "upstream");
    if (!name)
        return 1;
    *s = (proxy_service){.name = name, .name_len = strlen(name), .attrs = json_object_get(spec, "attrs"),
                         .doc = json_incref(doc), .max_body = PROXY_DEFAULT_MAX_BODY,
                         .max_header_bytes = PROXY_DEFAULT_MAX_HEADER_BYTES};
    s->pass_authorization = json_is_true(json_object_get(spec, "passAuthorization"));
    s->fail_closed = json_is_true(json_object_get(spec, "failClosed"));
    s->allow_path_parameters = json_is_true(json_object_get(spec, "allowPathParameters"));
    s->trust_trace_context = json_is_true(json_object_get(spec, "trustTraceContext"));
    const json_t *limits = json_object_get(spec, "limits");
    const json_t *v;
    if (json_is_integer(v = json_object_get(limits, "maxBodyBytes")) && json_integer_value(v) >= 0)
        s->max_body = (uint64_t)json_integer_value(v);
    if (json_is_integer(v = json_object_get(limits, "maxHeaderBytes")) && json_integer_value(v) > 0)
        s->max_header_bytes = (uint64_t)json_integer_value(v);
    s->is_portal = json_is_true(json_object_get(upstream, "portal"));
    const char *url = s->is_portal ? api_url : json_string_value(json_object_get(upstream, "url"));
    if (!url) {
        const char *enclave = json_string_value(json_object_get(upstream, "enclave"));
        s->is_enclave = enclave != NULL;
        s->enclave = enclave;
        /* the workload sees Host: <enclave>.enclave; connections go to the bridges */
        if (!enclave || asprintf(&s->upstream_text, "http://%s.enclave/", enclave) < 0) {
            s->upstream_text = NULL;
            return enclave ? -ENOMEM : 1;
        }
        if (h2o_url_parse(s->upstream_text, SIZE_MAX, &s->upstream) != 0)
            return 1;
        enclave_replicas(s, enclave, st);
    } else {
        if (!(s->upstream_text = strdup(url)))
            return -ENOMEM;
        if (h2o_url_parse(s->upstream_text, SIZE_MAX, &s->upstream) != 0) {
            log_fields(LOG_LEVEL_WARN, "a service's upstream URL cannot be parsed; it is not served", "service", name,
                       "url", url, NULL);
            return 1;
        }
        if (!(s->origin = proxy_origin_for_url(&s->upstream)))
            return -ENOMEM;
    }
    int e = service_inject(s, json_object_get(spec, "inject"), st->secrets);
    if (e < 0)
        return e;
    return proxy_plugins_build(s, json_object_get(spec, "plugins"));
}

/* Maps HOST to service index I unless another service claimed it first. */
static int add_host(json_t *hosts, const char *host, size_t len, size_t i)
{
    char key[HOST_MAX + 1];
    if (!host_key(host, len, key) || json_object_get(hosts, key))
        return 0;
    return json_object_set_new(hosts, key, json_integer((json_int_t)i)) < 0 ? -ENOMEM : 0;
}

/* The access-token keys of JWKS into C. Keys that do not import are skipped. */
static int load_keys(proxy_config *c, const json_t *jwks)
{
    const json_t *keys = json_object_get(jwks, "keys");
    size_t n = json_array_size(keys);
    c->keys = calloc(n ? n : 1, sizeof(*c->keys));
    if (!c->keys)
        return -ENOMEM;
    size_t i;
    json_t *jwk;
    json_array_foreach(keys, i, jwk)
    {
        jwt_key *k;
        if (jwt_key_from_json(jwk, JWT_ALG_ES256, &k) == 0 && jwt_key_alg(k) == JWT_ALG_ES256)
            c->keys[c->n_keys++] = k;
        else if (k)
            jwt_key_free(k);
    }
    return 0;
}

proxy_config *proxy_config_ref(proxy_config *c)
{
    if (c)
        atomic_fetch_add(&c->refs, 1);
    return c;
}

void proxy_config_unref(proxy_config *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    policy_set_unref(c->policies);
    for (size_t i = 0; i < c->n_keys; i++)
        jwt_key_free(c->keys[i]);
    free(c->keys);
    json_decref(c->users);
    json_decref(c->credentials);
    json_decref(c->policy_docs);
    json_decref(c->sessions);
    for (size_t i = 0; i < c->n_services; i++)
        service_clear(&c->services[i]);
    free(c->services);
    json_decref(c->hosts);
    free(c->issuer);
    free(c->audience);
    OPENSSL_cleanse(c->handoff_key, sizeof(c->handoff_key));
    free(c);
}

int proxy_config_build(proxy_state *st, const proxy_config *prev, const char *domain, const char *api_url,
                       proxy_config **ret)
{
    proxy_config *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->refs = 1;
    c->revision = st->revision;
    int e = 0;
    if (!(c->issuer = strdup(st->issuer)) || !(c->audience = strdup(st->audience)))
        e = -ENOMEM;
    if (e == 0) {
        if (prev && prev->policies && !st->policies_changed)
            c->policies = policy_set_ref(prev->policies);
        else
            e = policy_docs_build(st->docs, &c->policies);
    }
    if (e == 0)
        e = load_keys(c, st->jwks);
    if (e == 0 && (!(c->users = json_copy(policy_docs_get(st->docs, "User"))) ||
                   !(c->credentials = json_copy(policy_docs_get(st->docs, "Credential"))) ||
                   !(c->policy_docs = json_copy(policy_docs_get(st->docs, "Policy"))) ||
                   !(c->sessions = json_copy(st->sessions)) || !(c->hosts = json_object())))
        e = -ENOMEM;
    json_t *services = policy_docs_get(st->docs, "Service");
    size_t n = MIN(json_object_size(services), (size_t)PROXY_MAX_SERVICES);
    if (e == 0 && !(c->services = calloc(n ? n : 1, sizeof(*c->services))))
        e = -ENOMEM;
    const char *name;
    json_t *doc;
    if (e == 0) {
        json_object_foreach(services, name, doc)
        {
            if (c->n_services == n)
                break;
            proxy_service *s = &c->services[c->n_services];
            int r = service_init(s, doc, st, api_url);
            if (r < 0) {
                service_clear(s);
                e = r;
                break;
            }
            if (r > 0) {
                service_clear(s);
                continue;
            }
            c->n_services++;
        }
    }
    /* hosts: "<service>.<domain>" first, then explicit ones not taken */
    for (size_t i = 0; e == 0 && i < c->n_services; i++) {
        char host[HOST_MAX + 2];
        int len = snprintf(host, sizeof(host), "%s.%s", c->services[i].name, domain);
        if (len > 0 && (size_t)len < sizeof(host))
            e = add_host(c->hosts, host, (size_t)len, i);
    }
    for (size_t i = 0; e == 0 && i < c->n_services; i++) {
        size_t k;
        json_t *h;
        json_array_foreach(json_object_get(json_object_get(c->services[i].doc, "spec"), "hosts"), k, h)
        {
            if (json_is_string(h) && (e = add_host(c->hosts, json_string_value(h), json_string_length(h), i)) < 0)
                break;
        }
    }
    if (e < 0) {
        proxy_config_unref(c);
        return e;
    }
    memcpy(c->handoff_key, st->handoff_key, sizeof(c->handoff_key));
    c->has_handoff_key = st->has_handoff_key;
    st->policies_changed = false;
    *ret = c;
    return 0;
}

const proxy_service *proxy_config_route(const proxy_config *c, const char *host, size_t len)
{
    char key[HOST_MAX + 1];
    if (!c || !host_key(host, len, key))
        return NULL;
    json_t *i = json_object_get(c->hosts, key);
    return i ? &c->services[json_integer_value(i)] : NULL;
}

/* ---- the current snapshot ---- */

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static proxy_config *current;
static _Atomic uint64_t current_generation;

void proxy_config_publish(proxy_config *snap)
{
    pthread_mutex_lock(&current_lock);
    proxy_config *old = current;
    snap->generation = atomic_load(&current_generation) + 1;
    current = snap;
    atomic_store(&current_generation, snap->generation);
    pthread_mutex_unlock(&current_lock);
    proxy_config_unref(old);
}

proxy_config *proxy_config_current(void)
{
    pthread_mutex_lock(&current_lock);
    proxy_config *c = proxy_config_ref(current);
    pthread_mutex_unlock(&current_lock);
    return c;
}

uint64_t proxy_config_generation(void)
{
    return atomic_load(&current_generation);
}

void proxy_config_shutdown(void)
{
    pthread_mutex_lock(&current_lock);
    proxy_config *old = current;
    current = NULL;
    pthread_mutex_unlock(&current_lock);
    proxy_config_unref(old);
    proxy_origins_free();
}
