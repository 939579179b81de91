/* POST /v1/users/{name}/keys {"approval": BASE64, "recipient": "age1…"}:
 * a user publishes the public halves of the keys `cloister keys init` made
 * on their machine (DESIGN.md, "Confidential analytics") into the User's
 * server-owned status.publicKeys. Only the user themself may: no policy is
 * consulted and none can grant it for another user, since a key registered
 * for someone else would let its holder approve jobs and read results in
 * their name. Both keys are checked strictly; every change is audited. */
#include <errno.h>
#include <openssl/evp.h>
#include <string.h>

#include "age/age.h"
#include "api/handlers-policy.h"
#include "api/handlers-keys.h"
#include "audit/event.h"
#include "basic/encoding.h"
#include "basic/macro.h"
#include "httpd/httpd.h"
#include "httpd/json.h"
#include "resource/resource.h"
#include "store/store.h"

#define APPROVAL_KEY_SIZE 32
#define APPROVAL_KEY_B64_LEN 44 /* standard base64 with padding of 32 bytes */

/* Whether S is the canonical standard base64 of an Ed25519 public key OpenSSL accepts. */
static bool approval_key_valid(const char *s)
{
    uint8_t raw[APPROVAL_KEY_SIZE + 2];
    /* the decoder refuses non-zero leftover bits: one encoding per key */
    if (strlen(s) != APPROVAL_KEY_B64_LEN || base64_decode(s, strlen(s), raw, sizeof(raw), false) != APPROVAL_KEY_SIZE)
        return false;
    EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, APPROVAL_KEY_SIZE);
    EVP_PKEY_free(k);
    return k != NULL;
}

/* The string member NAME of BODY, or NULL with ERR (400) naming it. */
static const char *member(const json_t *body, const char *name, api_error *err)
{
    const json_t *v = json_object_get(body, name);
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 256 ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        api_fail(err, 400, "invalid", "%s: missing or not a string (the body is {\"approval\": BASE64, "
                 "\"recipient\": \"age1...\"}, as `cloister keys register` sends it)", name);
        return NULL;
    }
    return json_string_value(v);
}

/* GET: user NAME's registered public keys, to the user themself, a member
 * of a workspace NAME is in, or whoever policies allow `get-keys` on the
 * User (a job's approver checks the recipients' keys with it). */
static int get_keys(api_request *r, const char *name, api_error *err)
{
    bool self = r->caller->user && strcmp(caller_name(r->caller), name) == 0;
    if (!self && api_authorize(r->server, r->req, r->caller, "get-keys", "User", name, err) < 0)
        return -1;
    json_auto_t *user = NULL;
    int e = store_get(r->server->cfg->store, "User", name, &user);
    if (e < 0)
        return e == -ENOENT ? api_fail_absent(r->server, r->req, r->caller, "get-keys", "User", name, err)
                            : api_fail_store(err, e, "User", name);
    json_t *keys = json_object_get(json_object_get(user, "status"), "publicKeys");
    if (!keys)
        return api_fail(err, 404, "not_found", "user %s has registered no keys (cloister keys register)", name);
    json_auto_t *answer = json_pack("{s:s, s:O}", "user", name, "publicKeys", keys);
    api_respond_json(r->req, r->route, r->started, 200, answer);
    return 0;
}

int api_handle_user_keys(api_request *r, const char *name, api_error *err)
{
    bool get = api_method_is(r->req, "GET");
    if (!get && !api_method_is(r->req, "POST")) {
        api_method_not_allowed(r->req, r->route, r->started, "GET, POST");
        return 0;
    }
    if (!resource_name_valid(name))
        return api_fail(err, 404, "not_found", "User '%s' not found (not a valid name)", name);
    if (get)
        return get_keys(r, name, err);
    /* the user's own keys only, whatever any policy says */
    if (!r->caller->user || strcmp(caller_name(r->caller), name) != 0)
        return api_refuse(r->req, r->caller, "register-keys", "User", name,
                          "a user's public keys are registered by that user's own session only", err);
    json_auto_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    if (!body)
        return -1;
    const char *approval = member(body, "approval", err), *recipient = approval ? member(body, "recipient", err) : NULL;
    if (!recipient)
        return -1;
    if (json_object_size(body) != 2)
        return api_fail(err, 400, "invalid", "the body has only \"approval\" and \"recipient\"");
    if (!approval_key_valid(approval))
        return api_fail(err, 400, "invalid", "approval: not an Ed25519 public key (standard base64 of 32 bytes)");
    age_recipient rcpt;
    if (age_recipient_parse(recipient, &rcpt) < 0)
        return api_fail(err, 400, "invalid", "recipient: not an age X25519 recipient (\"age1...\", Bech32)");

    json_auto_t *user = NULL;
    int e = store_get(r->server->cfg->store, "User", name, &user);
    if (e < 0)
        return api_fail_store(err, e, "User", name);
    json_t *status = json_object_get(user, "status");
    json_auto_t *new_status = json_is_object(status) ? json_deep_copy(status) : json_object();
    const char *rv = json_string_value(json_object_get(json_object_get(user, "metadata"), "resourceVersion"));
    if (!new_status ||
        json_object_set_new(new_status, "publicKeys", json_pack("{s:s, s:s}", "approval", approval, "recipient", recipient)) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    store_op op = {.type = STORE_REPLACE, .kind = "User", .name = name, .doc = user, .status = new_status,
                   .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
    store_txn txn = {.ops = &op, .n_ops = 1};
    e = store_write(r->server->cfg->store, &txn);
    store_txn_clear(&txn);
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    json_auto_t *details = json_pack("{s:s, s:s}", "approval", approval, "recipient", recipient);
    audit_event_emit(&(audit_event){.action = "user.keys.register", .user = name, .ip = ip, .kind = "User",
                                    .name = name, .outcome = e < 0 ? "failure" : "success", .details = details});
    if (e < 0)
        return api_fail_store(err, e, "User", name);
    json_t *answer = json_pack("{s:s, s:O}", "user", name, "publicKeys", json_object_get(new_status, "publicKeys"));
    api_respond_json(r->req, r->route, r->started, 200, answer);
    json_decref(answer);
    return 0;
}
