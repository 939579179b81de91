#include <criterion/criterion.h>
#include <string.h>

#include "auth/credential.h"

Test(credential, generated_tokens_are_well_formed_and_distinct)
{
    char a[CREDENTIAL_TOKEN_LEN + 1], b[CREDENTIAL_TOKEN_LEN + 1];
    cr_assert_eq(credential_token_generate(a), 0);
    cr_assert_eq(credential_token_generate(b), 0);
    cr_assert_eq(strlen(a), CREDENTIAL_TOKEN_LEN);
    cr_assert(strncmp(a, "clst_", 5) == 0);
    cr_assert(credential_token_well_formed(a, strlen(a)));
    cr_assert_str_neq(a, b);
}

Test(credential, malformed_tokens_are_refused)
{
    char t[CREDENTIAL_TOKEN_LEN + 1];
    credential_token_generate(t);
    cr_assert_not(credential_token_well_formed(t, strlen(t) - 1));
    t[10] = '+';
    cr_assert_not(credential_token_well_formed(t, strlen(t)));
    cr_assert_not(credential_token_well_formed("clsx_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 48));
}

/* The digest is SHA-256 of the whole token, as `printf %s TOKEN | sha256sum` prints it. */
Test(credential, digest_matches_sha256_and_lookup_key_is_its_prefix)
{
    char hex[CREDENTIAL_DIGEST_HEX_LEN + 1], key[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    credential_token_digest("abc", 3, hex, key);
    cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    cr_assert_str_eq(key, "clst:ba7816bf8f01cfea414140de");
    cr_assert(credential_digest_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    cr_assert_not(credential_digest_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ae"));
    cr_assert_not(credential_digest_equal(hex, "short"));
}
