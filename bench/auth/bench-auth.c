/* Token issue and verification rates of the auth library: ES256 signing of
 * a typical access token, cold verification (every token new: parse,
 * base64url, JSON, ECDSA) and cached verification (a token seen before:
 * SHA-256 and a table lookup). Prints one line per measurement:
 *   <what> <ops/s> <us/op> */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/jwt.h"
#include "basic/timeutil.h"

#define N_TOKENS 2000

static double seconds_since(uint64_t start)
{
    return (double)(time_mono_ns() - start) / 1e9;
}

static void report(const char *what, size_t ops, double secs)
{
    printf("%-16s %10.0f %8.2f\n", what, (double)ops / secs, secs * 1e6 / (double)ops);
}

int main(int argc, char **argv)
{
    double budget = argc > 1 ? atof(argv[1]) : 2.0;
    jwt_key *key;
    if (jwt_key_generate_es256("bench", &key) < 0)
        return 1;
    int64_t now = (int64_t)(time_now_ns() / NSEC_PER_SEC);
    jwt_expect ex = {.issuer = "https://api.localhost", .audience = "cloister", .now = now, .leeway = 30};
    char **tokens = calloc(N_TOKENS, sizeof(*tokens));

    /* issue */
    size_t n = 0;
    uint64_t start = time_mono_ns();
    while (n < N_TOKENS || seconds_since(start) < budget) {
        json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:[s,s]}", "iss", ex.issuer, "sub",
                                   "alice", "aud", ex.audience, "exp", (json_int_t)now + 900, "iat", (json_int_t)now,
                                   "nbf", (json_int_t)now, "jti", "0123456789abcdef0123456789abcdef", "sid",
                                   "s0123456789abcdef01234567", "groups", "devs", "admins");
        char *t;
        if (jwt_sign(key, claims, &t) < 0)
            return 1;
        if (n < N_TOKENS)
            tokens[n] = t;
        else
            free(t);
        json_decref(claims);
        n++;
    }
    report("issue", n, seconds_since(start));

    /* verify, every token new to the verifier */
    n = 0;
    start = time_mono_ns();
    while (seconds_since(start) < budget) {
        json_t *claims;
        const char *t = tokens[n % N_TOKENS];
        if (jwt_verify(t, strlen(t), &key, 1, &ex, &claims) < 0)
            return 1;
        json_decref(claims);
        n++;
    }
    report("verify-cold", n, seconds_since(start));

    /* verify through a warm cache well above the working set (a per-thread
     * cache of the active sessions' tokens) */
    jwt_cache *cache = jwt_cache_new(65536);
    for (size_t i = 0; i < N_TOKENS; i++) {
        json_t *claims;
        jwt_verify_cached(cache, tokens[i], strlen(tokens[i]), &key, 1, &ex, &claims);
        json_decref(claims);
    }
    n = 0;
    start = time_mono_ns();
    while (seconds_since(start) < budget) {
        json_t *claims;
        const char *t = tokens[n % N_TOKENS];
        if (jwt_verify_cached(cache, t, strlen(t), &key, 1, &ex, &claims) < 0)
            return 1;
        json_decref(claims);
        n++;
    }
    report("verify-cached", n, seconds_since(start));

    jwt_cache_free(cache);
    for (size_t i = 0; i < N_TOKENS; i++)
        free(tokens[i]);
    free(tokens);
    jwt_key_free(key);
    return 0;
}
