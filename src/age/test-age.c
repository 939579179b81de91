#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "age/age.h"
#include "age/bech32.h"
#include "basic/macro.h"

/* The C2SP vectors' identity and the recipient age-keygen -y gives for it. */
#define VEC_IDENTITY "AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0"
#define VEC_RECIPIENT "age1xmwwc06ly3ee5rytxm9mflaz2u56jjj36s0mypdrwsvlul66mv4q47ryef"

typedef struct buf {
    uint8_t *p;
    size_t len, pos, cap;
} buf;

static ssize_t buf_read(void *userdata, uint8_t *out, size_t n)
{
    buf *b = userdata;
    n = MIN(n, b->len - b->pos);
    memcpy(out, b->p + b->pos, n);
    b->pos += n;
    return (ssize_t)n;
}

static int buf_write(void *userdata, const uint8_t *in, size_t n)
{
    buf *b = userdata;
    if (b->len + n > b->cap) {
        b->cap = MAX(b->cap * 2, b->len + n);
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, in, n);
    b->len += n;
    return 0;
}

static buf encrypt_to(const age_recipient *r, size_t n, const uint8_t *plain, size_t len)
{
    buf in = {.p = (uint8_t *)plain, .len = len}, out = {};
    cr_assert_eq(age_encrypt(r, n, buf_read, &in, buf_write, &out), 0);
    return out;
}

static int decrypt_with(const age_identity *ids, size_t n, const buf *file, buf *out)
{
    buf in = {.p = file->p, .len = file->len};
    *out = (buf){};
    return age_decrypt(ids, n, buf_read, &in, buf_write, out);
}

Test(age_keys, vector_identity_gives_age_keygen_recipient)
{
    age_identity id;
    age_recipient r;
    char s[AGE_RECIPIENT_STRLEN], t[AGE_IDENTITY_STRLEN];
    cr_assert_eq(age_identity_parse(VEC_IDENTITY, &id), 0);
    age_identity_recipient(&id, &r);
    age_recipient_format(&r, s);
    cr_assert_str_eq(s, VEC_RECIPIENT);
    age_identity_format(&id, t);
    cr_assert_str_eq(t, VEC_IDENTITY);
    age_recipient r2;
    cr_assert_eq(age_recipient_parse(VEC_RECIPIENT, &r2), 0);
    cr_assert_eq(memcmp(r.public, r2.public, 32), 0);
}

Test(age_keys, refuses_bad_encodings)
{
    age_identity id;
    age_recipient r;
    char s[] = VEC_RECIPIENT;
    s[10] = s[10] == 'q' ? 'p' : 'q'; /* checksum */
    cr_assert_eq(age_recipient_parse(s, &r), -EINVAL);
    cr_assert_eq(age_recipient_parse("AGE1XMWWC06LY3EE5RYTXM9MFLAZ2U56JJJ36S0MYPDRWSVLUL66MV4Q47RYEF", &r), -EINVAL);
    cr_assert_eq(age_recipient_parse("age1xmwwc06ly3ee5rytxm9mflaz2u56jjj36s0mypdrwsvlul66mv4q47ryeF", &r), -EINVAL);
    cr_assert_eq(age_recipient_parse("", &r), -EINVAL);
    cr_assert_eq(age_recipient_parse("age1", &r), -EINVAL);
    cr_assert_eq(age_recipient_parse("agf1xmwwc06ly3ee5rytxm9mflaz2u56jjj36s0mypdrwsvlul66mv4q47ryef", &r), -EINVAL);
    cr_assert_eq(age_identity_parse(VEC_RECIPIENT, &id), -EINVAL);
    cr_assert_eq(age_identity_parse("age-secret-key-1egtzvffv20835nwyv6270lxyvk2vknx2mmdkwyklmgr48uawx40q2p2lm0", &id),
                 -EINVAL);
    /* a 31-byte payload with a valid checksum is still refused */
    uint8_t short_key[31] = {1};
    char enc[128];
    cr_assert_gt(bech32_encode("age", short_key, sizeof(short_key), false, enc, sizeof(enc)), 0);
    cr_assert_eq(age_recipient_parse(enc, &r), -EINVAL);
}

Test(age_keys, identity_file)
{
    static const char text[] = "# created: 2026-12-06T00:00:00Z\n# public key: " VEC_RECIPIENT "\n" VEC_IDENTITY "\n\n";
    age_identity *ids;
    size_t n;
    cr_assert_eq(age_identities_parse(text, STRLEN(text), &ids, &n), 0);
    cr_assert_eq(n, 1);
    age_identities_free(ids, n);
    cr_assert_eq(age_identities_parse("# nothing\n", 10, &ids, &n), -EINVAL);
    cr_assert_eq(age_identities_parse("garbage\n", 8, &ids, &n), -EINVAL);
}

Test(age_stream, round_trips_every_boundary)
{
    static const size_t sizes[] = {0, 1, 65535, 65536, 65537, 2 * 65536, 3 * 65536 + 17};
    age_identity id;
    age_recipient r;
    cr_assert_eq(age_identity_generate(&id), 0);
    age_identity_recipient(&id, &r);
    for (size_t i = 0; i < ELEMENTSOF(sizes); i++) {
        uint8_t *plain = malloc(sizes[i] + 1);
        for (size_t j = 0; j < sizes[i]; j++)
            plain[j] = (uint8_t)(j * 31 + i);
        buf file = encrypt_to(&r, 1, plain, sizes[i]), out;
        cr_assert_eq(decrypt_with(&id, 1, &file, &out), 0, "size %zu", sizes[i]);
        cr_assert_eq(out.len, sizes[i]);
        cr_assert(sizes[i] == 0 || memcmp(out.p, plain, sizes[i]) == 0);
        free(out.p);
        free(file.p);
        free(plain);
    }
}

Test(age_stream, many_recipients_and_identities)
{
    age_identity ids[3], stranger;
    age_recipient rs[3];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(age_identity_generate(&ids[i]), 0);
        age_identity_recipient(&ids[i], &rs[i]);
    }
    cr_assert_eq(age_identity_generate(&stranger), 0);
    buf file = encrypt_to(rs, 2, (const uint8_t *)"hello", 5), out;
    cr_assert_eq(decrypt_with(&ids[1], 1, &file, &out), 0);
    cr_assert_eq(out.len, 5);
    free(out.p);
    age_identity two[2] = {stranger, ids[0]};
    cr_assert_eq(decrypt_with(two, 2, &file, &out), 0);
    free(out.p);
    cr_assert_eq(decrypt_with(&ids[2], 1, &file, &out), AGE_ERR_NO_MATCH);
    cr_assert_eq(out.len, 0);
    free(out.p);
    free(file.p);
}

/* Every single-byte flip is refused, and none releases any plaintext of the one-chunk file. */
Test(age_stream, any_flipped_byte_is_refused)
{
    age_identity id;
    age_recipient r;
    cr_assert_eq(age_identity_generate(&id), 0);
    age_identity_recipient(&id, &r);
    buf file = encrypt_to(&r, 1, (const uint8_t *)"secret rows", 11), out;
    for (size_t i = 0; i < file.len; i++) {
        file.p[i] ^= 0x01;
        int rr = decrypt_with(&id, 1, &file, &out);
        cr_assert_lt(rr, 0, "flip at %zu accepted", i);
        cr_assert_eq(out.len, 0, "flip at %zu released plaintext", i);
        free(out.p);
        file.p[i] ^= 0x01;
    }
    free(file.p);
}

Test(age_stream, truncated_reordered_or_extended_is_a_payload_failure)
{
    age_identity id;
    age_recipient r;
    cr_assert_eq(age_identity_generate(&id), 0);
    age_identity_recipient(&id, &r);
    size_t len = 3 * 65536 + 100;
    uint8_t *plain = calloc(1, len);
    buf file = encrypt_to(&r, 1, plain, len), out;
    size_t enc = 65536 + 16, payload = file.len - (3 * enc + 100 + 16);
    /* truncated at a chunk boundary: the full chunks verify but the end is missing */
    buf cut = file;
    cut.len = payload + 2 * enc;
    cr_assert_eq(decrypt_with(&id, 1, &cut, &out), AGE_ERR_PAYLOAD);
    cr_assert_eq(out.len, 65536); /* only chunks whose tag verified (the look-ahead holds back the second) */
    free(out.p);
    cut.len = file.len - 1;
    cr_assert_eq(decrypt_with(&id, 1, &cut, &out), AGE_ERR_PAYLOAD);
    free(out.p);
    /* chunks 0 and 1 swapped */
    uint8_t *tmp = malloc(enc);
    memcpy(tmp, file.p + payload, enc);
    memmove(file.p + payload, file.p + payload + enc, enc);
    memcpy(file.p + payload + enc, tmp, enc);
    cr_assert_eq(decrypt_with(&id, 1, &file, &out), AGE_ERR_PAYLOAD);
    cr_assert_eq(out.len, 0);
    free(out.p);
    /* swapped back, then trailing data */
    memcpy(file.p + payload + enc, file.p + payload, enc);
    memcpy(file.p + payload, tmp, enc);
    cr_assert_eq(decrypt_with(&id, 1, &file, &out), 0);
    free(out.p);
    buf_write(&file, (const uint8_t *)"x", 1);
    cr_assert_eq(decrypt_with(&id, 1, &file, &out), AGE_ERR_PAYLOAD);
    free(out.p);
    free(tmp);
    free(file.p);
    free(plain);
}

Test(age_keys, refuses_a_low_order_recipient)
{
    /* the point of order 1 (u = 0) and of order 8 (u = 1) */
    uint8_t zero[32] = {0}, one[32] = {1};
    char enc[AGE_RECIPIENT_STRLEN];
    age_recipient r;
    cr_assert_gt(bech32_encode("age", zero, 32, false, enc, sizeof(enc)), 0);
    cr_assert_eq(age_recipient_parse(enc, &r), -EINVAL);
    cr_assert_gt(bech32_encode("age", one, 32, false, enc, sizeof(enc)), 0);
    cr_assert_eq(age_recipient_parse(enc, &r), -EINVAL);
}

/* The file key of FILE, as IDENTITY opens it (age_unwrap_file_key). */
static void file_key_of(const age_identity *id, const buf *file, uint8_t fk[AGE_FILE_KEY_SIZE])
{
    buf in = {.p = file->p, .len = file->len};
    cr_assert_eq(age_unwrap_file_key(id, 1, buf_read, &in, fk), 0);
    /* only the header was read */
    cr_assert_lt(in.pos, file->len);
}

Test(age_file_key, decrypts_with_the_unwrapped_file_key_only)
{
    age_identity a, b;
    age_recipient r[2];
    cr_assert_eq(age_identity_generate(&a), 0);
    cr_assert_eq(age_identity_generate(&b), 0);
    age_identity_recipient(&a, &r[0]);
    age_identity_recipient(&b, &r[1]);
    size_t len = 3 * AGE_CHUNK_SIZE + 17;
    uint8_t *plain = malloc(len);
    for (size_t i = 0; i < len; i++)
        plain[i] = (uint8_t)(i * 7 + 3);
    buf file = encrypt_to(r, 2, plain, len);

    uint8_t fka[AGE_FILE_KEY_SIZE], fkb[AGE_FILE_KEY_SIZE];
    file_key_of(&a, &file, fka);
    file_key_of(&b, &file, fkb);
    cr_assert_eq(memcmp(fka, fkb, sizeof(fka)), 0, "both recipients open the same file key");

    buf in = {.p = file.p, .len = file.len}, out = {};
    cr_assert_eq(age_decrypt_with_file_key(fka, buf_read, &in, buf_write, &out), 0);
    cr_assert_eq(out.len, len);
    cr_assert_eq(memcmp(out.p, plain, len), 0);
    free(out.p);

    /* a wrong file key (another file's, or one bit off) fails on the header MAC, releasing nothing */
    fka[5] ^= 0x10;
    in = (buf){.p = file.p, .len = file.len};
    out = (buf){};
    cr_assert_eq(age_decrypt_with_file_key(fka, buf_read, &in, buf_write, &out), AGE_ERR_HMAC);
    cr_assert_eq(out.len, 0);
    free(out.p);

    /* a flipped payload byte is a payload failure */
    file.p[file.len - 5] ^= 1;
    in = (buf){.p = file.p, .len = file.len};
    out = (buf){};
    cr_assert_eq(age_decrypt_with_file_key(fkb, buf_read, &in, buf_write, &out), AGE_ERR_PAYLOAD);
    free(out.p);

    /* an identity that is no recipient unwraps nothing */
    age_identity c;
    cr_assert_eq(age_identity_generate(&c), 0);
    in = (buf){.p = file.p, .len = file.len};
    uint8_t fkc[AGE_FILE_KEY_SIZE];
    cr_assert_eq(age_unwrap_file_key(&c, 1, buf_read, &in, fkc), AGE_ERR_NO_MATCH);
    /* nor does a header that is not age's */
    buf junk = {.p = (uint8_t *)"not an age file\n", .len = 16};
    cr_assert_eq(age_decrypt_with_file_key(fkb, buf_read, &junk, buf_write, &out), AGE_ERR_HEADER);
    free(file.p);
    free(plain);
}
