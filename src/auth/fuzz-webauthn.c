/* libFuzzer target: the WebAuthn parsers (auth/webauthn.h). The first byte
 * picks what the rest is: 0 clientDataJSON (of a registration and an
 * assertion), 1 an attestationObject under a valid clientDataJSON, 2
 * authenticatorData (then, after a 0xff byte, a signature) of an assertion
 * under a valid clientDataJSON, so the CBOR and binary parsers are reached
 * past the client data checks. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/webauthn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* base64url of 32 zero bytes: the challenge of the built-in client data */
#define ZERO_CHALLENGE "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t challenge[WEBAUTHN_CHALLENGE_LEN] = {0};
    static const char create_cd[] = "{\"type\":\"webauthn.create\",\"challenge\":\"" ZERO_CHALLENGE
                                    "\",\"origin\":\"https://localhost:7443\",\"crossOrigin\":false}";
    static const char get_cd[] = "{\"type\":\"webauthn.get\",\"challenge\":\"" ZERO_CHALLENGE
                                 "\",\"origin\":\"https://localhost:7443\"}";
    /* a valid point (the P-256 generator): signatures fail, parsing is what is fuzzed */
    static const uint8_t pub[WEBAUTHN_PUBLIC_KEY_LEN] = {
        0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77,
        0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96, 0x4f, 0xe3, 0x42,
        0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b,
        0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5};
    const webauthn_expect ex = {.origin = "https://localhost:7443", .rp_id = "localhost", .challenge = challenge,
                                .require_uv = false};
    if (size == 0)
        return 0;
    const uint8_t *in = data + 1;
    size_t n = size - 1;
    const char *why = NULL;
    webauthn_credential cred;
    uint32_t count = 0;
    uint8_t got[WEBAUTHN_CHALLENGE_LEN];
    int r;
    switch (data[0] % 3) {
    case 0:
        if (webauthn_client_data_challenge(in, n, got, &why) < 0)
            assert(why && why[0]);
        r = webauthn_register_verify(in, n, (const uint8_t *)"\xa0", 1, &ex, &cred, &why);
        assert(r < 0 && why && why[0]); /* an empty map is no attestation */
        break;
    case 1:
        r = webauthn_register_verify((const uint8_t *)create_cd, strlen(create_cd), in, n, &ex, &cred, &why);
        if (r == 0) { /* what was accepted is usable */
            assert(cred.id_len > 0 && cred.id_len <= WEBAUTHN_CREDENTIAL_ID_MAX && cred.public_key[0] == 0x04);
            assert(strcmp(cred.format, "none") == 0 || strcmp(cred.format, "packed") == 0);
        } else
            assert(why && why[0]);
        break;
    default: {
        const uint8_t *sep = memchr(in, 0xff, n);
        size_t ad_len = sep ? (size_t)(sep - in) : n;
        const uint8_t *sig = sep ? sep + 1 : in + n;
        size_t sig_len = sep ? n - ad_len - 1 : 0;
        r = webauthn_assert_verify((const uint8_t *)get_cd, strlen(get_cd), in, ad_len, sig, sig_len, &ex, pub, 0,
                                   &count, &why);
        if (r == 0) /* nobody holds the generator's private key */
            abort();
        assert(why && why[0]);
    }
    }
    return 0;
}
