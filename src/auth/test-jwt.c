#include <criterion/criterion.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/jwt.h"
#include "auth/keyring.h"
#include "auth/ratelimit.h"
#include "basic/encoding.h"
#include "basic/timeutil.h"

#define ISS "https://api.localhost"
#define AUD "cloister"

static json_t *load_vectors(void)
{
    const char *dir = getenv("CLOISTER_VECTORS");
    char path[4096];
    snprintf(path, sizeof(path), "%s/wycheproof/json_web_signature_test.json", dir ? dir : "../shared/vectors");
    json_error_t e;
    json_t *v = json_load_file(path, 0, &e);
    cr_assert_not_null(v, "cannot load %s: %s", path, e.text);
    return v;
}

/* Vectors our verifier refuses on purpose, with the reason. Everything else
 * must get the vectors' verdict. */
static const char *deliberate_refusal(const json_t *group, const json_t *test, const char *jws)
{
    long id = (long)json_integer_value(json_object_get(test, "tcId"));
    /* the header names PS384 for a key whose alg is PS256: the key decides */
    if (id == 346 || id == 350)
        return "header alg differs from the key's alg";
    /* '?' inside base64url: our decoder is strict (DESIGN: malformed base64 refused) */
    if (id == 372 || id == 373)
        return "invalid base64url character";
    /* an "invalid" vector byte-identical to a "valid" one of the same group cannot be refused */
    size_t i;
    const json_t *t;
    json_array_foreach(json_object_get(group, "tests"), i, t)
    {
        if (t != test && json_is_string(json_object_get(t, "jws")) &&
            strcmp(json_string_value(json_object_get(t, "jws")), jws) == 0 &&
            strcmp(json_string_value(json_object_get(t, "result")), "valid") == 0)
            return "identical to a valid vector";
    }
    return NULL;
}

Test(jwt, wycheproof_jws_es256_rs256_ps256_hs256)
{
    json_t *v = load_vectors();
    size_t gi, ti, n_checked = 0, n_skipped = 0, n_valid = 0;
    json_t *g, *t;
    json_array_foreach(json_object_get(v, "testGroups"), gi, g)
    {
        json_t *jwk = json_object_get(g, "public") ? json_object_get(g, "public") : json_object_get(g, "private");
        const char *alg = json_string_value(json_object_get(jwk, "alg"));
        if (!alg || (strcmp(alg, "ES256") && strcmp(alg, "RS256") && strcmp(alg, "PS256") && strcmp(alg, "HS256")))
            continue;
        jwt_key *key;
        cr_assert_eq(jwt_key_from_json(jwk, JWT_ALG_NONE_, &key), 0, "group %zu: key refused", gi);
        json_array_foreach(json_object_get(g, "tests"), ti, t)
        {
            long id = (long)json_integer_value(json_object_get(t, "tcId"));
            json_t *jws = json_object_get(t, "jws");
            char *text = json_is_string(jws) ? strdup(json_string_value(jws)) : json_dumps(jws, JSON_COMPACT);
            bool want_valid = strcmp(json_string_value(json_object_get(t, "result")), "valid") == 0;
            char *payload = NULL;
            size_t len;
            int r = jws_verify(text, strlen(text), &key, 1, false, &payload, &len);
            const char *why = deliberate_refusal(g, t, text);
            if (why) {
                /* the contradictory pairs cannot both pass: only count them */
                if (strcmp(why, "identical to a valid vector") != 0)
                    cr_assert_neq(r, 0, "tcId %ld (%s) should be refused", id, why);
                n_skipped++;
            } else {
                cr_assert_eq(r == 0, want_valid, "tcId %ld %s: expected %s, got %d", id,
                             json_string_value(json_object_get(t, "comment")), want_valid ? "valid" : "invalid", r);
                n_checked++;
                n_valid += want_valid;
            }
            free(payload);
            free(text);
        }
        jwt_key_free(key);
    }
    cr_log_info("wycheproof JWS: %zu vectors as expected (%zu valid), %zu deliberately refused", n_checked, n_valid,
                n_skipped);
    cr_assert_gt(n_checked, 300);
    json_decref(v);
}

static jwt_key *new_key(const char *kid)
{
    jwt_key *k;
    cr_assert_eq(jwt_key_generate_es256(kid, &k), 0);
    return k;
}

static json_t *claims_at(int64_t now, int64_t exp)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s}", "iss", ISS, "aud", AUD, "sub", "alice", "iat",
                     (json_int_t)now, "nbf", (json_int_t)now, "exp", (json_int_t)exp, "jti", "j1");
}

static int verify(const char *token, jwt_key *key, int64_t now)
{
    jwt_expect ex = {.issuer = ISS, .audience = AUD, .now = now, .leeway = JWT_DEFAULT_LEEWAY_S};
    json_t *claims = NULL;
    int r = jwt_verify(token, strlen(token), &key, 1, &ex, &claims);
    if (r == 0)
        cr_assert_str_eq(json_string_value(json_object_get(claims, "sub")), "alice");
    json_decref(claims);
    return r;
}

/* base64url(header).base64url(payload).base64url(sig) */
static char *assemble(const char *header, const char *payload, const uint8_t *sig, size_t sig_len)
{
    size_t hl = strlen(header), pl = strlen(payload);
    char *out = malloc(base64_encoded_size(hl) + base64_encoded_size(pl) + base64_encoded_size(sig_len) + 2);
    size_t o = base64_encode((const uint8_t *)header, hl, out, true);
    out[o++] = '.';
    o += base64_encode((const uint8_t *)payload, pl, out + o, true);
    out[o++] = '.';
    base64_encode(sig, sig_len, out + o, true);
    return out;
}

Test(jwt, sign_and_verify_round_trip)
{
    jwt_key *k = new_key("k1");
    int64_t now = 1700000000;
    json_t *c = claims_at(now, now + 900);
    char *tok;
    cr_assert_eq(jwt_sign(k, c, &tok), 0);
    cr_assert_eq(verify(tok, k, now), 0);
    cr_assert_eq(verify(tok, k, now + 899), 0);
    free(tok);
    json_decref(c);
    jwt_key_free(k);
}

Test(jwt, refusals)
{
    jwt_key *k = new_key("k1"), *other = new_key("k1");
    int64_t now = 1700000000;
    json_t *c = claims_at(now, now + 900);
    char *tok, *tok_other;
    cr_assert_eq(jwt_sign(k, c, &tok), 0);
    cr_assert_eq(jwt_sign(other, c, &tok_other), 0);

    cr_assert_eq(verify(tok_other, k, now), -EKEYREJECTED, "signed by another key with the same kid");
    cr_assert_eq(verify(tok, k, now + 900 + JWT_DEFAULT_LEEWAY_S), -EKEYEXPIRED);
    cr_assert_eq(verify(tok, k, now - JWT_DEFAULT_LEEWAY_S - 1), -ETIME, "not yet valid");
    cr_assert_eq(verify(tok, k, now - JWT_DEFAULT_LEEWAY_S), 0, "within the allowed skew");

    jwt_key *k2 = new_key("k2");
    cr_assert_eq(verify(tok, k2, now), -ENOKEY);

    /* wrong issuer, wrong audience */
    jwt_expect ex = {.issuer = "https://evil", .audience = AUD, .now = now, .leeway = 30};
    json_t *out = NULL;
    cr_assert_eq(jwt_verify(tok, strlen(tok), &k, 1, &ex, &out), -EACCES);
    ex = (jwt_expect){.issuer = ISS, .audience = "other", .now = now, .leeway = 30};
    cr_assert_eq(jwt_verify(tok, strlen(tok), &k, 1, &ex, &out), -EPERM);

    /* alg none, with and without a signature */
    const char *payload = "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"alice\",\"exp\":1700000900}";
    char *none = assemble("{\"alg\":\"none\",\"kid\":\"k1\"}", payload, (const uint8_t *)"", 0);
    cr_assert_eq(verify(none, k, now), -EBADMSG, "empty signature part");
    free(none);
    none = assemble("{\"alg\":\"none\",\"kid\":\"k1\"}", payload, (const uint8_t *)"x", 1);
    cr_assert_eq(verify(none, k, now), -EPROTONOSUPPORT);
    free(none);

    /* HS256 keyed with the public key (the classic confusion attack) */
    json_t *pub = jwt_key_to_json(k, false);
    char *pub_text = json_dumps(pub, JSON_COMPACT);
    const char *hdr = "{\"alg\":\"HS256\",\"kid\":\"k1\"}";
    char *unsigned_part = assemble(hdr, payload, (const uint8_t *)"", 0);
    unsigned_part[strlen(unsigned_part) - 1] = 0; /* drop the trailing '.' */
    uint8_t mac[32];
    unsigned mac_len;
    HMAC(EVP_sha256(), pub_text, (int)strlen(pub_text), (const uint8_t *)unsigned_part, strlen(unsigned_part), mac,
         &mac_len);
    char *hs = assemble(hdr, payload, mac, mac_len);
    cr_assert_eq(verify(hs, k, now), -EPROTONOSUPPORT);
    free(hs);
    free(unsigned_part);
    free(pub_text);
    json_decref(pub);

    /* crit, duplicate members, malformed base64 and JSON, extra parts, size */
    char *crit = assemble("{\"alg\":\"ES256\",\"kid\":\"k1\",\"crit\":[\"x\"],\"x\":1}", payload, mac, 32);
    cr_assert_eq(verify(crit, k, now), -EBADMSG);
    free(crit);
    char *dup = assemble("{\"alg\":\"ES256\",\"kid\":\"k1\",\"alg\":\"none\"}", payload, mac, 32);
    cr_assert_eq(verify(dup, k, now), -EBADMSG);
    free(dup);
    char *bad = strdup(tok);
    bad[3] = '!';
    cr_assert_eq(verify(bad, k, now), -EBADMSG);
    free(bad);
    char *padded;
    cr_assert(asprintf(&padded, "%s=", tok) > 0);
    cr_assert_eq(verify(padded, k, now), -EBADMSG);
    free(padded);
    char *notjson = assemble("{\"alg\":\"ES256\",\"kid\":\"k1\"", payload, mac, 32);
    cr_assert_eq(verify(notjson, k, now), -EBADMSG);
    free(notjson);
    char *extra;
    cr_assert(asprintf(&extra, "%s.", tok) > 0);
    cr_assert_eq(verify(extra, k, now), -EBADMSG);
    free(extra);
    char *big = malloc(JWT_MAX_LEN + 2);
    memset(big, 'A', JWT_MAX_LEN + 1);
    big[JWT_MAX_LEN + 1] = 0;
    cr_assert_eq(verify(big, k, now), -EMSGSIZE);
    free(big);

    /* claims that are not numbers, or a missing exp */
    json_object_set_new(c, "exp", json_string("soon"));
    char *tok3;
    cr_assert_eq(jwt_sign(k, c, &tok3), 0);
    cr_assert_eq(verify(tok3, k, now), -EBADMSG);
    free(tok3);
    json_object_del(c, "exp");
    cr_assert_eq(jwt_sign(k, c, &tok3), 0);
    cr_assert_eq(verify(tok3, k, now), -EBADMSG);
    free(tok3);

    free(tok);
    free(tok_other);
    json_decref(c);
    jwt_key_free(k);
    jwt_key_free(k2);
    jwt_key_free(other);
}

Test(jwt, cache_hits_until_exp)
{
    jwt_key *k = new_key("k1");
    int64_t now = 1700000000;
    json_t *c = claims_at(now, now + 60);
    char *tok;
    cr_assert_eq(jwt_sign(k, c, &tok), 0);
    jwt_cache *cache = jwt_cache_new(16);
    jwt_expect ex = {.issuer = ISS, .audience = AUD, .now = now, .leeway = 30};
    json_t *out;
    cr_assert_null(jwt_cache_get(cache, tok, strlen(tok), now));
    cr_assert_eq(jwt_verify_cached(cache, tok, strlen(tok), &k, 1, &ex, &out), 0);
    json_decref(out);
    out = jwt_cache_get(cache, tok, strlen(tok), now + 59);
    cr_assert_not_null(out);
    json_decref(out);
    cr_assert_null(jwt_cache_get(cache, tok, strlen(tok), now + 60));
    /* a refused token is never cached */
    tok[strlen(tok) - 2] ^= 1;
    cr_assert_neq(jwt_verify_cached(cache, tok, strlen(tok), &k, 1, &ex, &out), 0);
    cr_assert_null(jwt_cache_get(cache, tok, strlen(tok), now));
    jwt_cache_free(cache);
    free(tok);
    json_decref(c);
    jwt_key_free(k);
}

Test(jwt, private_jwk_round_trip_signs)
{
    jwt_key *k = new_key("k1"), *k2;
    json_t *priv = jwt_key_to_json(k, true);
    cr_assert_not_null(json_object_get(priv, "d"));
    json_t *pub = jwt_key_to_json(k, false);
    cr_assert_null(json_object_get(pub, "d"));
    json_decref(pub);
    cr_assert_eq(jwt_key_from_json(priv, JWT_ALG_NONE_, &k2), 0);
    json_t *c = claims_at(1700000000, 1700000900);
    char *tok;
    cr_assert_eq(jwt_sign(k2, c, &tok), 0);
    cr_assert_eq(verify(tok, k, 1700000000), 0);
    free(tok);
    json_decref(c);
    json_decref(priv);
    jwt_key_free(k);
    jwt_key_free(k2);
}

Test(keyring, rotation_keeps_old_keys_verifying)
{
    char dir[] = "/tmp/test-keyring-XXXXXX", path[64];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/keys.json", dir);
    auth_keyring *kr;
    int r = auth_keyring_open(path, 3600, 900, &kr);
    cr_assert_eq(r, 0, "open: %s", strerror(-r));
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);

    int64_t now = (int64_t)(time_now_ns() / NSEC_PER_SEC);
    json_t *c = claims_at(now, now + 900);
    char *tok, kid[JWT_KID_MAX + 1];
    cr_assert_eq(auth_keyring_sign(kr, c, &tok), 0);
    cr_assert_eq(auth_keyring_rotate(kr, kid), 0);
    json_t *jwks = auth_keyring_jwks(kr);
    cr_assert_eq(json_array_size(json_object_get(jwks, "keys")), 2);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(jwks, "keys"), 0), "kid")), kid);
    json_decref(jwks);
    jwt_expect ex = {.issuer = ISS, .audience = AUD, .now = now, .leeway = 30};
    json_t *out;
    cr_assert_eq(auth_keyring_verify(kr, tok, strlen(tok), &ex, &out), 0, "the previous key still verifies");
    json_decref(out);
    auth_keyring_free(kr);

    /* reopened: same keys */
    cr_assert_eq(auth_keyring_open(path, 3600, 900, &kr), 0);
    cr_assert_eq(auth_keyring_verify(kr, tok, strlen(tok), &ex, &out), 0);
    json_decref(out);
    /* after the retention time the old key is gone */
    ex.now = now + 2000;
    cr_assert_eq(auth_keyring_verify(kr, tok, strlen(tok), &ex, &out), -ENOKEY);
    auth_keyring_free(kr);

    chmod(path, 0644);
    cr_assert_eq(auth_keyring_open(path, 3600, 900, &kr), -EPERM);
    unlink(path);
    rmdir(dir);
    free(tok);
    json_decref(c);
}

Test(ratelimit, burst_then_refill)
{
    ratelimit *rl = ratelimit_new(64, 3, 1);
    uint64_t t = 1000 * NSEC_PER_SEC;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ratelimit_take(rl, "10.0.0.1", t), 0);
    cr_assert_eq(ratelimit_take(rl, "10.0.0.1", t), 1);
    cr_assert_eq(ratelimit_take(rl, "10.0.0.2", t), 0, "other keys are independent");
    cr_assert_eq(ratelimit_take(rl, "10.0.0.1", t + NSEC_PER_SEC), 0);
    cr_assert_gt(ratelimit_take(rl, "10.0.0.1", t + NSEC_PER_SEC), 0);
    ratelimit_free(rl);
}

/* ---- OIDC ID tokens and discovery ---- */

#include "auth/oidc.h"

static char *id_token(jwt_key *k, const char *iss, json_t *aud, const char *azp, const char *nonce, bool with_iat)
{
    int64_t now = 1700000000;
    json_t *c = json_pack("{s:s, s:s, s:o, s:I, s:s}", "iss", iss, "sub", "alice", "aud", aud, "exp",
                          (json_int_t)now + 300, "nonce", nonce);
    if (with_iat)
        json_object_set_new(c, "iat", json_integer(now));
    if (azp)
        json_object_set_new(c, "azp", json_string(azp));
    char *t;
    cr_assert_eq(jwt_sign(k, c, &t), 0);
    json_decref(c);
    return t;
}

static int check_id_token(jwt_key *k, char *t)
{
    oidc_expect ex = {.issuer = "https://idp.example", .client_id = "cloister", .nonce = "n-123", .now = 1700000000};
    json_t *claims = NULL;
    int r = oidc_id_token_verify(t, strlen(t), &k, 1, &ex, &claims);
    json_decref(claims);
    free(t);
    return r;
}

Test(oidc, id_token_checks)
{
    jwt_key *k = new_key("idp-1");
    const char *iss = "https://idp.example";
    cr_assert_eq(check_id_token(k, id_token(k, iss, json_string("cloister"), NULL, "n-123", true)), 0);
    cr_assert_eq(check_id_token(k, id_token(k, iss, json_pack("[s]", "cloister"), "cloister", "n-123", true)), 0);
    cr_assert_eq(check_id_token(k, id_token(k, iss, json_string("cloister"), NULL, "n-999", true)), -EPROTO,
                 "wrong nonce");
    cr_assert_eq(check_id_token(k, id_token(k, "https://other.example", json_string("cloister"), NULL, "n-123", true)),
                 -EACCES, "another issuer");
    cr_assert_eq(check_id_token(k, id_token(k, iss, json_string("someone-else"), NULL, "n-123", true)), -EPERM,
                 "another audience");
    cr_assert_eq(check_id_token(k, id_token(k, iss, json_pack("[s,s]", "cloister", "x"), NULL, "n-123", true)), -EPERM,
                 "several audiences and no azp");
    cr_assert_eq(check_id_token(k, id_token(k, iss, json_string("cloister"), "x", "n-123", true)), -EPERM, "azp");
    cr_assert_eq(check_id_token(k, id_token(k, iss, json_string("cloister"), NULL, "n-123", false)), -EBADMSG,
                 "no iat");
    jwt_key_free(k);
}

Test(oidc, discovery_must_name_its_issuer_and_https_endpoints)
{
    json_t *doc = json_pack("{s:s, s:s, s:s, s:s}", "issuer", "https://idp.example", "authorization_endpoint",
                            "https://idp.example/auth", "token_endpoint", "https://idp.example/token", "jwks_uri",
                            "https://idp.example/jwks");
    oidc_metadata m;
    cr_assert_eq(oidc_metadata_parse(doc, "https://idp.example", &m), 0);
    cr_assert_str_eq(m.token_endpoint, "https://idp.example/token");
    cr_assert_null(m.end_session_endpoint);
    oidc_metadata_done(&m);
    cr_assert_eq(oidc_metadata_parse(doc, "https://idp.example/", &m), -EBADMSG, "issuer mix-up");
    json_object_set_new(doc, "token_endpoint", json_string("http://idp.example/token"));
    cr_assert_eq(oidc_metadata_parse(doc, "https://idp.example", &m), -EBADMSG, "plain http endpoint");
    json_decref(doc);
}

Test(oidc, pkce_s256_matches_rfc7636_appendix_b)
{
    char challenge[OIDC_RANDOM_LEN + 1];
    oidc_pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", challenge);
    cr_assert_str_eq(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
}

/* The public JWK must not share strings with the imported one: the key ring
 * wipes a loaded private JWK's strings once the key is imported. */
Test(jwt, public_jwk_survives_wiping_the_imported_jwk)
{
    jwt_key *gen = NULL, *imported = NULL;
    cr_assert_eq(jwt_key_generate_es256("k1", &gen), 0);
    json_t *priv = jwt_key_to_json(gen, true);
    cr_assert_not_null(priv);
    cr_assert_eq(jwt_key_from_json(priv, JWT_ALG_NONE_, &imported), 0);
    const char *name;
    json_t *v;
    json_object_foreach(priv, name, v) if (json_is_string(v))
        memset((char *)json_string_value(v), 0, json_string_length(v));
    json_t *pub = jwt_key_to_json(imported, false), *want = jwt_key_to_json(gen, false);
    cr_expect(json_equal(pub, want), "the public JWK changed when the imported JWK was wiped");
    json_decref(pub);
    json_decref(want);
    json_decref(priv);
    jwt_key_free(gen);
    jwt_key_free(imported);
}
