/* libFuzzer target: the JWS/JWT parser and verifier (structure, base64url,
 * header and claims JSON, key selection, signature checks) against a fixed
 * ES256 key, an RS256 key and an HS256 key sharing kids with the seeds; the
 * same input as a JWK, a JWKS and an OIDC discovery document. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/jwt.h"
#include "auth/oidc.h"

static const char *const jwks[] = {
    "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"kid-ec-sign\",\"alg\":\"ES256\","
    "\"x\":\"04N0xi21hshyvBp7I167sbE_bXqyqkAPfefdklMO7wY\",\"y\":\"UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgmw\"}",
    "{\"kty\":\"oct\",\"kid\":\"kid-aes-sign\",\"alg\":\"HS256\",\"k\":\"-ebuDNsVZ2iJtoZ-akfXTSCt4UO2cruLCsbWlBinggE\"}",
    "{\"kty\":\"RSA\",\"kid\":\"RS256_2048\",\"alg\":\"RS256\",\"e\":\"AQAB\",\"n\":\""
    "orRRoH0KpfluRVZxUTVQUUqKW0YuvvcXCU-h_ugiJOY3-XRtP3yv0xh42AMltu9aFwD2WQO0aUKeidbqyIRQl7WrOTGJ25JRLtin"
    "cRoSU_rNIPecFegkfz0-QuRuSMmOJUov6XZTE6A-_48X4aApOXofomqNzib0kO2BKZYV2YFMItphBCjgnH2WWFlCZvXAIdD87KCN"
    "lFoSvoLeTR7Oa0wDFFtdNJXU7VQR64eNrwX9evw-Ca2g8RJkIvWQl1oZaYFvSGmLy7obTZyuedRg2Pn4Xnl1AF2bwixOWsD3waRd"
    "ElaaYoB9O5oC5aUw53MGb0U9H1tMLpz3ggKD90K51Q"
    "\"}",
};

static jwt_key *keys[3];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!keys[0])
        for (size_t i = 0; i < 3; i++)
            if (jwt_key_from_jwk(jwks[i], strlen(jwks[i]), JWT_ALG_NONE_, &keys[i]) < 0)
                abort();
    char *payload = NULL;
    size_t len;
    if (jws_verify((const char *)data, size, keys, 3, false, &payload, &len) == 0)
        free(payload);
    jwt_expect ex = {.issuer = "https://api.localhost", .audience = "cloister", .now = 1700000000, .leeway = 30};
    json_t *claims = NULL;
    if (jwt_verify((const char *)data, size, keys, 3, &ex, &claims) == 0)
        json_decref(claims);
    /* the same bytes as a JWK, a provider's JWKS and its discovery document */
    jwt_key *k = NULL;
    if (jwt_key_from_jwk((const char *)data, size, JWT_ALG_NONE_, &k) == 0)
        jwt_key_free(k);
    json_t *doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (doc) {
        jwt_key *found[OIDC_MAX_KEYS];
        int n = oidc_jwks_parse(doc, found);
        for (int i = 0; i < n; i++)
            jwt_key_free(found[i]);
        oidc_metadata m;
        if (oidc_metadata_parse(doc, "https://idp.example", &m) == 0)
            oidc_metadata_done(&m);
        json_decref(doc);
    }
    return 0;
}
