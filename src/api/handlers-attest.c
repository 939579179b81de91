/* Attestation endpoints of the API: challenges (/v1/attest/challenge) and
 * key release (POST /v1/kms/keys/{name}/release, routed here by the KMS
 * endpoints), the way Confidential Containers' key broker releases keys:
 *
 *   1. the workload asks for a challenge: a single-use nonce;
 *   2. it produces evidence carrying the nonce and binding a fresh EC public
 *      key (nitro/sandbox: nonce and public_key fields, or SHA-256 of the key
 *      in user_data; sev-snp/tdx: report_data = nonce || SHA-256(key));
 *   3. the API verifies the evidence, consumes the nonce, evaluates the Key's
 *      release AttestationPolicy, gets a fresh data key from the KMS and
 *      answers with it as a JWE (ECDH-ES, A256GCM) to that public key.
 * Every release and refusal is an audit event. */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "api/handlers-attest.h"
#include "api/notify.h"
#include "api/handlers-kms.h"
#include "api/handlers-policy.h"
#include "api/request.h"
#include "attest/attest-policy.h"
#include "attest/attest.h"
#include "attest/release.h"
#include "audit/event.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "kms/client.h"
#include "resource/resource.h"

#define RELEASE_EVIDENCE_MAX (96 * 1024) /* base64 of ATTEST_EVIDENCE_MAX */
#define RELEASE_KEY_MAX 1024

static release_challenges *challenges;
static char *platform_ca; /* PEM of the cluster's platform CA: the roots of sandbox evidence */
static size_t platform_ca_len;
static store *attest_store;

int api_attest_init(const char *platform_ca_path, store *s)
{
    attest_store = s;
    challenges = release_challenges_new();
    if (!challenges)
        return -ENOMEM;
    return read_file(platform_ca_path, 1024 * 1024, &platform_ca, &platform_ca_len);
}

void api_attest_done(void)
{
    release_challenges_free(challenges);
    challenges = NULL;
    free(platform_ca);
    platform_ca = NULL;
}

/* POST /v1/attest/challenge -> {"nonce": hex, "expiresIn": seconds}, decided
 * as `create` on AttestationChallenge. */
int api_handle_attest(api_request *r, const char *rest, size_t len, api_error *err)
{
    if (!(len == STRLEN("challenge") && memcmp(rest, "challenge", len) == 0))
        return api_fail(err, 404, "not_found", "no such endpoint: /v1/attest/%.*s", (int)MIN(len, (size_t)64), rest);
    if (!api_method_is(r->req, "POST")) {
        api_method_not_allowed(r->req, r->route, r->started, "POST");
        return 0;
    }
    if (api_authorize(r->server, r->req, r->caller, "create", "AttestationChallenge", "", err) < 0)
        return -1;
    uint8_t nonce[RELEASE_NONCE_LEN];
    char hex[2 * RELEASE_NONCE_LEN + 1];
    int e = release_challenge_issue(challenges, (int64_t)(time_now_ns() / NSEC_PER_SEC), nonce);
    if (e < 0)
        return api_fail(err, 500, "internal", "cannot make a challenge: %s", strerror(-e));
    hex_encode(nonce, sizeof(nonce), hex);
    json_t *body = json_pack("{s:s, s:i}", "nonce", hex, "expiresIn", RELEASE_CHALLENGE_TTL_SECONDS);
    api_respond_json(r->req, r->route, r->started, 200, body);
    json_decref(body);
    return 0;
}

/* The challenge nonce the evidence carries: the nonce field of Nitro and
 * sandbox documents, the first 32 bytes of report_data otherwise. */
static int evidence_nonce(const json_t *result, uint8_t out[RELEASE_NONCE_LEN])
{
    const char *type = json_string_value(json_object_get(result, "type"));
    const json_t *claims = json_object_get(result, "claims");
    const char *field = strcmp(type, "nitro") == 0 || strcmp(type, "sandbox") == 0 ? "nonce" : "report_data";
    const char *hex = json_string_value(json_object_get(claims, field));
    if (!hex || strlen(hex) < 2 * RELEASE_NONCE_LEN)
        return -EINVAL;
    if (strcmp(field, "nonce") == 0 && strlen(hex) != 2 * RELEASE_NONCE_LEN)
        return -EINVAL;
    return hex_decode(hex, 2 * RELEASE_NONCE_LEN, out, RELEASE_NONCE_LEN);
}

/* Reports a release of KIND NAME (a Key, or a Secret's value) to USER at IP
 * (or its refusal) as an audit event. */
static void report_release_by(const char *user, const char *ip, const char *kind, const char *name, const char *type,
                              const char *outcome, const char *reason)
{
    json_t *details = json_pack("{s:s, s:s}", "evidence", type ? type : "", "reason", reason ? reason : "");
    audit_event_emit(&(audit_event){.action = "kms.release", .user = user, .ip = ip, .kind = kind, .name = name,
                                    .outcome = outcome, .details = details});
    json_decref(details);
}

static void report_release(api_request *r, const char *kind, const char *name, const char *type, const char *outcome,
                           const char *reason)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    report_release_by(caller_name(r->caller), ip, kind, name, type, outcome, reason);
}

/* Refuses the release of KIND NAME with 403 and REASON, reporting it, and
 * tells the administrators (a refused release is an attack or a
 * misconfiguration they fix: notify.h, key-release.refused). */
static int refuse(api_request *r, const char *kind, const char *name, const char *type, const char *reason,
                  api_error *err)
{
    report_release(r, kind, name, type, "denied", reason);
    notify_admins(r->server, "key-release.refused", kind, name,
                  json_pack("{s:s, s:s, s:s}", "reason", reason, "evidence", type ? type : "", "requestedBy",
                            caller_name(r->caller)));
    return api_fail(err, 403, "forbidden", "%s %s is not released: %s", strcmp(kind, "Key") == 0 ? "key" : "secret",
                    name, reason);
}

/* Decodes base64 FIELD of BODY into a malloc'd buffer; -1 with ERR. */
static int body_base64(const json_t *body, const char *field, size_t max, bool required, uint8_t **ret,
                       size_t *ret_len, api_error *err)
{
    const char *s = json_string_value(json_object_get(body, field));
    *ret = NULL;
    *ret_len = 0;
    if (!s)
        return required ? api_fail(err, 400, "invalid", "%s is required (base64)", field) : 0;
    size_t n = strlen(s);
    if (n > max)
        return api_fail(err, 413, "too_large", "%s is larger than %zu bytes", field, max);
    uint8_t *b = malloc(n / 4 * 3 + 3);
    long got = b ? base64_decode(s, n, b, n / 4 * 3 + 3, false) : -ENOMEM;
    if (got < 0) {
        free(b);
        return api_fail(err, 400, "invalid", "%s must be standard base64", field);
    }
    *ret = b;
    *ret_len = (size_t)got;
    return 0;
}

/* The end of a release, off the loop: for a Key a fresh data key from the
 * KMS, sealed to the attested public key here; for a Secret's value the
 * stored ciphertext, which the KMS opens and seals to that key itself.
 * Owns PUBLIC_KEY, SEALED and ANSWER. */
typedef struct release_job {
    offload_job super;
    api_route route;
    uint64_t started;
    const char *kind; /* "Key" or "Secret" */
    char name[RESOURCE_NAME_MAX + 1];
    char item[RESOURCE_NAME_MAX + 1]; /* a Secret's data key */
    char type[16];
    char user[RESOURCE_NAME_MAX + 1];
    char ip[INET6_ADDRSTRLEN];
    uint8_t *public_key;
    size_t public_key_len;
    char *sealed;   /* a Secret's stored value (KMS ciphertext) */
    json_t *answer; /* {jwe, ciphertext} or {jwe} once sealed */
    int rc;         /* 0, -1 with ERR, or -EINVAL: PUBLIC_KEY is no EC key */
    api_error err;
} release_job;

/* A Key's release: a fresh data key sealed here to the attested key. */
static void release_key_work(release_job *job)
{
    _cleanup_(kms_json_wipe_decrefp) json_t *dk = NULL;
    if ((job->rc = api_kms_datakey(job->name, &dk, &job->err)) < 0)
        return;
    _cleanup_(kms_json_wipe_decrefp) json_t *secret = json_pack(
        "{s:s, s:O, s:O}", "key", job->name, "plaintext", json_object_get(dk, "plaintext"), "ciphertext",
        json_object_get(dk, "ciphertext"));
    _cleanup_free_ char *text = secret ? json_dumps(secret, JSON_COMPACT) : NULL;
    _cleanup_free_ char *jwe = NULL;
    int e = text ? release_seal_jwe(job->public_key, job->public_key_len, (const uint8_t *)text, strlen(text), &jwe)
                 : -ENOMEM;
    if (text)
        explicit_bzero(text, strlen(text));
    if (e == -EINVAL)
        job->rc = -EINVAL;
    else if (e < 0)
        job->rc = api_fail(&job->err, 500, "internal", "cannot seal the key: %s", strerror(-e));
    else if (!(job->answer = json_pack("{s:s, s:O}", "jwe", jwe, "ciphertext", json_object_get(dk, "ciphertext"))))
        job->rc = api_fail(&job->err, 500, "internal", "out of memory");
}

static void release_work(offload_job *j)
{
    release_job *job = (release_job *)j;
    if (strcmp(job->kind, "Key") == 0) {
        release_key_work(job);
        return;
    }
    /* a Secret's value: the plaintext exists only inside the kms role */
    char *jwe = NULL;
    job->rc = api_kms_secret_release(job->name, job->item, job->sealed, job->public_key, job->public_key_len, &jwe,
                                     &job->err);
    if (job->rc == 0 && !(job->answer = json_pack("{s:s}", "jwe", jwe)))
        job->rc = api_fail(&job->err, 500, "internal", "out of memory");
    free(jwe);
}

/* Reports the release (it happened, or failed, whether or not the client
 * is still there) and answers REQ when there is one. */
static void release_done(offload_job *j, h2o_req_t *req)
{
    release_job *job = (release_job *)j;
    bool ran = job->rc < 0 || job->answer;
    if (job->rc == -EINVAL) {
        const char *why = "publicKey is not a DER SubjectPublicKeyInfo of an EC key";
        report_release_by(job->user, job->ip, job->kind, job->name, job->type, "denied", why);
        api_fail(&job->err, 403, "forbidden", "%s %s is not released: %s", job->kind, job->name, why);
    } else if (ran)
        report_release_by(job->user, job->ip, job->kind, job->name, job->type, job->rc < 0 ? "failure" : "success",
                          job->rc < 0 ? job->err.message : NULL);
    if (req && job->rc < 0)
        api_respond_error(req, job->route, job->started, &job->err);
    else if (req)
        api_respond_json(req, job->route, job->started, 200, job->answer);
    json_decref(job->answer);
    free(job->public_key);
    free(job->sealed);
    free(job);
}

/* What a release request carries: its evidence and the key to seal to. */
typedef struct release_request {
    const char *type_s;
    attest_type type;
    uint8_t *evidence, *cert, *public_key;
    size_t evidence_len, cert_len, public_key_len;
} release_request;

static void release_request_clear(release_request *q)
{
    free(q->evidence);
    free(q->cert);
    free(q->public_key);
}

/* Reads {type, evidence, cert?, publicKey} of BODY into Q (borrowing
 * BODY's strings); -1 with ERR. */
static int release_request_parse(const json_t *body, release_request *q, api_error *err)
{
    q->type_s = json_string_value(json_object_get(body, "type"));
    if (!q->type_s || attest_type_from_string(q->type_s, &q->type) < 0)
        return api_fail(err, 400, "invalid", "type must be nitro, sev-snp, tdx or sandbox");
    if (body_base64(body, "evidence", RELEASE_EVIDENCE_MAX, true, &q->evidence, &q->evidence_len, err) < 0 ||
        body_base64(body, "cert", 16 * 1024, false, &q->cert, &q->cert_len, err) < 0 ||
        body_base64(body, "publicKey", RELEASE_KEY_MAX, true, &q->public_key, &q->public_key_len, err) < 0)
        return -1;
    return 0;
}

/* Verifies Q's evidence (against the platform CA for sandbox documents),
 * consumes its challenge and evaluates the AttestationPolicy POLICY (its
 * name; NULL: none, refused with NO_POLICY) for the release of KIND NAME.
 * Returns 0, or -1 with ERR, the refusal reported. */
static int release_verify(api_request *r, const char *kind, const char *name, const release_request *q,
                          const char *policy, const char *no_policy, api_error *err)
{
    _cleanup_(json_decrefp) json_t *policy_doc = NULL;
    if (!policy)
        return refuse(r, kind, name, q->type_s, no_policy, err);
    if (store_get(attest_store, "AttestationPolicy", policy, &policy_doc) < 0)
        return refuse(r, kind, name, q->type_s, "its AttestationPolicy does not exist", err);
    int64_t now = (int64_t)(time_now_ns() / NSEC_PER_SEC);
    attest_options opts = {.time = now, .cert = {q->cert, q->cert_len}};
    if (q->type == ATTEST_SANDBOX)
        opts.roots = (attest_blob){(const uint8_t *)platform_ca, platform_ca_len};
    _cleanup_(json_decrefp) json_t *result = NULL;
    attest_error aerr = {{0}};
    if (attest_verify(q->type, q->evidence, q->evidence_len, &opts, &result, &aerr) < 0)
        return refuse(r, kind, name, q->type_s, aerr.text, err);

    /* the challenge: issued here, unexpired, and used only once */
    uint8_t nonce[RELEASE_NONCE_LEN];
    if (evidence_nonce(result, nonce) < 0 || !release_challenge_consume(challenges, nonce, sizeof(nonce), now))
        return refuse(r, kind, name, q->type_s,
                      "the evidence does not carry an outstanding challenge (unknown, used or expired)", err);
    attest_expect expect = {.now = now, .nonce = nonce, .nonce_len = sizeof(nonce), .public_key = q->public_key,
                            .public_key_len = q->public_key_len};
    char reason[ATTEST_REASON_MAX] = "";
    int e = attest_policy_evaluate(json_object_get(policy_doc, "spec"), result, &expect, reason, sizeof(reason));
    if (e < 0)
        return refuse(r, kind, name, q->type_s, e == -EPERM ? reason : "the AttestationPolicy is malformed", err);
    return 0;
}

/* Seals the release of KIND NAME (ITEM, SEALED: a Secret's data key and
 * stored value, taken over) to Q's public key off the loop. */
static int release_offload(api_request *r, const char *kind, const char *name, const char *item, char *sealed,
                           release_request *q, api_error *err)
{
    release_job *job = calloc(1, sizeof(*job));
    if (!job) {
        free(sealed);
        return api_fail(err, 500, "internal", "out of memory");
    }
    *job = (release_job){.super = {.work = release_work, .done = release_done}, .route = r->route,
                         .started = r->started, .kind = kind, .public_key = TAKE_PTR(q->public_key),
                         .public_key_len = q->public_key_len, .sealed = sealed};
    snprintf(job->name, sizeof(job->name), "%s", name);
    snprintf(job->item, sizeof(job->item), "%s", item ? item : "");
    snprintf(job->type, sizeof(job->type), "%s", q->type_s);
    snprintf(job->user, sizeof(job->user), "%s", caller_name(r->caller));
    httpd_peer_ip(r->req, job->ip, sizeof(job->ip));
    if (api_offload(r, r->server->local, &job->super, err) < 0) {
        report_release(r, kind, name, q->type_s, "failure", err->message);
        free(job->public_key);
        free(job->sealed);
        free(job);
        return -1;
    }
    return 0;
}

int api_attest_release(api_request *r, const char *key, api_error *err)
{
    if (!api_method_is(r->req, "POST")) {
        api_method_not_allowed(r->req, r->route, r->started, "POST");
        return 0;
    }
    if (api_authorize(r->server, r->req, r->caller, "release", "Key", key, err) < 0)
        return -1;
    _cleanup_(json_decrefp) json_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    if (!body)
        return -1;
    _cleanup_(release_request_clear) release_request q = {0};
    if (release_request_parse(body, &q, err) < 0)
        return -1;

    /* the Key and its release policy */
    _cleanup_(json_decrefp) json_t *key_doc = NULL;
    int e = store_get(attest_store, "Key", key, &key_doc);
    if (e == -ENOENT)
        return api_fail_absent(r->server, r->req, r->caller, "release", "Key", key, err);
    if (e < 0)
        return api_fail_store(err, e, "Key", key);
    const char *policy = json_string_value(
        json_object_get(json_object_get(json_object_get(key_doc, "spec"), "release"), "attestationPolicy"));
    if (release_verify(r, "Key", key, &q, policy, "the Key has no spec.release.attestationPolicy", err) < 0)
        return -1;
    return release_offload(r, "Key", key, NULL, NULL, &q, err);
}

/* Whether ENCLAVE's spec.secrets names value ITEM of Secret SECRET. */
static bool enclave_lists_secret(const json_t *enclave, const char *secret, const char *item)
{
    size_t i;
    const json_t *s;
    json_array_foreach(json_object_get(json_object_get(enclave, "spec"), "secrets"), i, s)
    {
        const char *name = json_string_value(json_object_get(s, "secret"));
        const char *key = json_string_value(json_object_get(s, "key"));
        if (name && key && strcmp(name, secret) == 0 && strcmp(key, item) == 0)
            return true;
    }
    return false;
}

int api_handle_enclave_secret_release(api_request *r, const char *enclave, api_error *err)
{
    if (!api_method_is(r->req, "POST")) {
        api_method_not_allowed(r->req, r->route, r->started, "POST");
        return 0;
    }
    _cleanup_(json_decrefp) json_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    if (!body)
        return -1;
    const char *secret = json_string_value(json_object_get(body, "secret"));
    const char *item = json_string_value(json_object_get(body, "key"));
    if (!secret || !resource_name_valid(secret) || !item || strlen(item) > RESOURCE_NAME_MAX || !item[0])
        return api_fail(err, 400, "invalid", "secret (a Secret's name) and key (one of its data keys) are required");
    if (api_authorize(r->server, r->req, r->caller, "release", "Secret", secret, err) < 0)
        return -1;
    static const char *const known[] = {"secret", "key", "type", "evidence", "cert", "publicKey", NULL};
    if (api_only_fields(body, known, err) < 0)
        return -1;
    _cleanup_(release_request_clear) release_request q = {0};
    if (release_request_parse(body, &q, err) < 0)
        return -1;

    /* the Enclave names the value and the policy its evidence must satisfy */
    _cleanup_(json_decrefp) json_t *enclave_doc = NULL, *secret_doc = NULL;
    if (store_get(attest_store, "Enclave", enclave, &enclave_doc) < 0)
        return refuse(r, "Secret", secret, q.type_s, "the Enclave it is asked for does not exist", err);
    if (!enclave_lists_secret(enclave_doc, secret, item))
        return refuse(r, "Secret", secret, q.type_s, "the Enclave's spec.secrets does not name this value", err);
    const char *policy = json_string_value(json_object_get(json_object_get(enclave_doc, "spec"), "attestationPolicy"));
    if (release_verify(r, "Secret", secret, &q, policy,
                       "the Enclave has no spec.attestationPolicy; Secrets are released only to evidence that "
                       "satisfies it", err) < 0)
        return -1;
    if (store_get(attest_store, "Secret", secret, &secret_doc) < 0)
        return refuse(r, "Secret", secret, q.type_s, "the Secret does not exist", err);
    const char *stored =
        json_string_value(json_object_get(json_object_get(json_object_get(secret_doc, "spec"), "data"), item));
    if (!stored)
        return refuse(r, "Secret", secret, q.type_s, "the Secret holds no such key", err);
    char *sealed = strdup(stored);
    if (!sealed)
        return api_fail(err, 500, "internal", "out of memory");
    return release_offload(r, "Secret", secret, item, sealed, &q, err);
}
