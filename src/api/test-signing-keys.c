/* The token signing keys in the store (api/signing-keys.h): two keyrings on
 * one store, as two api replicas on one database, sign and verify each
 * other's tokens, serve one JWKS, and a rotation on one is taken by the
 * other; the keys rest sealed, and a replica with another handoff key cannot
 * open them. On one SQLite handle (the SQLite driver has one writer per
 * file; tests/test_replicas.py runs two processes on PostgreSQL). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/signing-keys.h"
#include "basic/timeutil.h"

static char dir[] = "/tmp/test-signing-keys-XXXXXX", url[128];

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    snprintf(url, sizeof(url), "sqlite:%s/store.db", dir);
}

static void teardown(void)
{
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

typedef struct replica {
    store *s;
    api_signing_keys keys;
    auth_keyring *kr;
} replica;

static store *shared_store;

static int replica_open_legacy(replica *r, uint8_t key_byte, const char *legacy_path)
{
    uint8_t handoff[HANDOFF_KEY_LEN];
    memset(handoff, key_byte, sizeof(handoff));
    if (!shared_store)
        cr_assert_eq(store_open(url, &shared_store), 0);
    r->s = shared_store;
    cr_assert_eq(api_signing_keys_init(&r->keys, r->s, handoff, legacy_path), 0);
    auth_keyring_backing b = api_signing_keys_backing(&r->keys);
    return auth_keyring_open_backed(&b, 3600, 900, &r->kr);
}

static int replica_open(replica *r, uint8_t key_byte)
{
    return replica_open_legacy(r, key_byte, NULL);
}

static void replica_close(replica *r)
{
    auth_keyring_free(r->kr);
    api_signing_keys_done(&r->keys);
}

static char *sign(replica *r, int64_t now)
{
    json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I}", "iss", "https://api.test", "aud", "cloister", "sub",
                               "alice", "iat", (json_int_t)now, "exp", (json_int_t)(now + 900));
    char *tok = NULL;
    cr_assert_eq(auth_keyring_sign(r->kr, claims, &tok), 0);
    json_decref(claims);
    return tok;
}

static int verify(replica *r, const char *tok, int64_t now)
{
    jwt_expect ex = {.issuer = "https://api.test", .audience = "cloister", .now = now, .leeway = 30};
    json_t *claims = NULL;
    int e = auth_keyring_verify(r->kr, tok, strlen(tok), &ex, &claims);
    json_decref(claims);
    return e;
}

TestSuite(signing_keys, .init = setup, .fini = teardown);

Test(signing_keys, two_replicas_share_the_keys_and_a_rotation)
{
    replica a, b;
    cr_assert_eq(replica_open(&a, 7), 0);
    cr_assert_eq(replica_open(&b, 7), 0, "the second replica reads the keys the first made");
    int64_t now = (int64_t)(time_now_ns() / NSEC_PER_SEC);
    char *ta = sign(&a, now), *tb = sign(&b, now);
    cr_assert_eq(verify(&b, ta, now), 0, "a token of replica a verifies on b");
    cr_assert_eq(verify(&a, tb, now), 0);
    json_t *ja = auth_keyring_jwks(a.kr), *jb = auth_keyring_jwks(b.kr);
    cr_assert(json_equal(ja, jb), "one JWKS");
    json_decref(ja);
    json_decref(jb);

    /* b rotates: a verifies b's new tokens at once (an unknown kid reads the keys again) */
    char kid[JWT_KID_MAX + 1];
    cr_assert_eq(auth_keyring_rotate(b.kr, kid), 0);
    char *tb2 = sign(&b, now);
    cr_assert_eq(verify(&a, tb2, now), 0, "the rotated key verifies on the other replica");
    cr_assert_eq(verify(&a, ta, now), 0, "the old key still verifies");
    /* a rotates on top of what b saved (not on its own stale copy) */
    char kid2[JWT_KID_MAX + 1];
    cr_assert_eq(auth_keyring_rotate(a.kr, kid2), 0);
    char *ta2 = sign(&a, now);
    cr_assert_eq(verify(&b, ta2, now), 0);
    free(ta2);
    usleep(1100 * 1000); /* the JWKS reads the shared keys again at most once a second */
    ja = auth_keyring_jwks(a.kr);
    jb = auth_keyring_jwks(b.kr);
    cr_assert(json_equal(ja, jb), "one JWKS after two rotations");
    cr_assert_eq(json_array_size(json_object_get(ja, "keys")), 3, "both rotations kept");
    json_decref(ja);
    json_decref(jb);

    /* at rest: sealed, no private key in the document */
    json_t *doc = NULL;
    cr_assert_eq(store_get(a.s, SIGNING_KEYS_KIND, SIGNING_KEYS_NAME, &doc), 0);
    char *text = json_dumps(doc, JSON_COMPACT);
    cr_assert_null(strstr(text, "\"d\""), "%s", text);
    cr_assert_not_null(strstr(text, "\"sealed\""));
    free(text);
    json_decref(doc);

    /* a replica with another handoff key cannot open them */
    replica c = {0};
    cr_assert_eq(replica_open(&c, 8), -EBADMSG);
    auth_keyring_free(c.kr);
    api_signing_keys_done(&c.keys);
    free(ta);
    free(tb);
    free(tb2);
    replica_close(&a);
    replica_close(&b);
    store_free(shared_store);
    shared_store = NULL;
}

/* An earlier release's auth/signing-keys.json is moved into the store at
 * the first start: the tokens it signed keep verifying, on every replica. */
Test(signing_keys, an_earlier_key_file_is_taken_over)
{
    char path[160];
    snprintf(path, sizeof(path), "%s/signing-keys.json", dir);
    auth_keyring *old;
    cr_assert_eq(auth_keyring_open(path, 3600, 900, &old), 0);
    int64_t now = (int64_t)(time_now_ns() / NSEC_PER_SEC);
    json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I}", "iss", "https://api.test", "aud", "cloister", "sub",
                               "alice", "iat", (json_int_t)now, "exp", (json_int_t)(now + 900));
    char *tok = NULL;
    cr_assert_eq(auth_keyring_sign(old, claims, &tok), 0);
    json_decref(claims);
    auth_keyring_free(old);

    replica a, b;
    cr_assert_eq(replica_open_legacy(&a, 7, path), 0);
    cr_assert_eq(verify(&a, tok, now), 0, "a token of the old file verifies");
    cr_assert_eq(replica_open(&b, 7), 0);
    cr_assert_eq(verify(&b, tok, now), 0, "and on another replica, from the store");
    json_t *doc = NULL;
    cr_assert_eq(store_get(shared_store, SIGNING_KEYS_KIND, SIGNING_KEYS_NAME, &doc), 0);
    cr_assert_eq(json_array_size(json_object_get(json_object_get(doc, "spec"), "keys")), 1);
    json_decref(doc);
    free(tok);
    replica_close(&a);
    replica_close(&b);
    store_free(shared_store);
    shared_store = NULL;
}
