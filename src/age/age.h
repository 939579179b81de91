/* age v1 (C2SP age spec, https://c2sp.org/age) on OpenSSL: X25519
 * identities and recipients in their Bech32 encodings, and streaming
 * encryption and decryption (STREAM, ChaCha20-Poly1305, 64 KiB chunks).
 *
 * Only the X25519 recipient type is built; stanzas of other types are
 * parsed (strictly) and skipped, so a file for a passphrase or a post-quantum
 * recipient gives AGE_ERR_NO_MATCH, never a misreading. The ASCII armor is
 * not built (an armored file is a header failure).
 *
 * Decryption releases plaintext one chunk at a time, each only after its
 * Poly1305 tag verified, and reports a truncated, reordered or extended file
 * at the end (AGE_ERR_PAYLOAD): a caller that writes to a file must write to
 * a temporary and rename it only when age_decrypt() returned 0. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <errno.h>

#define AGE_KEY_SIZE 32
#define AGE_FILE_KEY_SIZE 16
#define AGE_CHUNK_SIZE 65536
/* "age1" + 52 data characters + 6 checksum characters, and the terminator */
#define AGE_RECIPIENT_STRLEN 63
/* "AGE-SECRET-KEY-1" + 52 + 6, and the terminator */
#define AGE_IDENTITY_STRLEN 75
/* Caps on what a file may make us hold: the whole header, and the number of stanzas. */
#define AGE_HEADER_MAX (1 << 20)
#define AGE_STANZAS_MAX 1024

/* The failure classes of the spec (and of its test vectors), as negative
 * errno values. Any other negative value is an I/O error of a callback or
 * of OpenSSL. */
#define AGE_ERR_HEADER (-EBADMSG)      /* the header (or the payload nonce) is malformed */
#define AGE_ERR_NO_MATCH (-ENOKEY)     /* no identity opens any stanza */
#define AGE_ERR_HMAC (-EKEYREJECTED)   /* the header MAC does not verify */
#define AGE_ERR_PAYLOAD (-EILSEQ)      /* a chunk does not verify, or the file is truncated or extended */

/* An X25519 identity: the secret scalar and its public key. Wipe with age_identity_wipe(). */
typedef struct age_identity {
    uint8_t secret[AGE_KEY_SIZE];
    uint8_t public[AGE_KEY_SIZE];
} age_identity;

/* An X25519 recipient: a public key. */
typedef struct age_recipient {
    uint8_t public[AGE_KEY_SIZE];
} age_recipient;

/* Reads up to N bytes into BUF. Returns the count (0 at the end) or a negative errno. */
typedef ssize_t (*age_read_fn)(void *userdata, uint8_t *buf, size_t n);
/* Writes all N bytes of BUF. Returns 0 or a negative errno. */
typedef int (*age_write_fn)(void *userdata, const uint8_t *buf, size_t n);

/* Callbacks over a file descriptor (USERDATA points to the int), retrying on EINTR. */
ssize_t age_fd_read(void *userdata, uint8_t *buf, size_t n);
int age_fd_write(void *userdata, const uint8_t *buf, size_t n);

/* A message for an age_* return value. */
const char *age_strerror(int r);

/* Makes a new identity from the system's random generator. Returns 0 or -EIO. */
int age_identity_generate(age_identity *ret);
/* Parses "AGE-SECRET-KEY-1…" (upper case, Bech32, exactly 32 bytes). Returns 0 or -EINVAL. */
int age_identity_parse(const char *s, age_identity *ret);
/* Writes the identity's "AGE-SECRET-KEY-1…" into OUT (AGE_IDENTITY_STRLEN bytes). */
void age_identity_format(const age_identity *id, char out[static AGE_IDENTITY_STRLEN]);
/* The recipient of an identity. */
void age_identity_recipient(const age_identity *id, age_recipient *ret);
/* Wipes an identity. */
void age_identity_wipe(age_identity *id);

/* Parses an identity file (age-keygen's format: one identity a line, '#'
 * comments and empty lines ignored) of LEN bytes. Returns the identities
 * (count in *RET_N, at least one; free with age_identities_free) or -EINVAL
 * naming nothing of the key material. */
int age_identities_parse(const char *text, size_t len, age_identity **ret, size_t *ret_n);
/* Wipes and frees N identities. */
void age_identities_free(age_identity *ids, size_t n);

/* Parses "age1…" (lower case, Bech32, exactly 32 bytes, not a low-order point). Returns 0 or -EINVAL. */
int age_recipient_parse(const char *s, age_recipient *ret);
/* Writes the recipient's "age1…" into OUT (AGE_RECIPIENT_STRLEN bytes). */
void age_recipient_format(const age_recipient *r, char out[static AGE_RECIPIENT_STRLEN]);

/* Encrypts everything READ gives to the N (≥ 1) recipients, writing the age
 * file through WRITE. Memory is bounded (one chunk) whatever the length.
 * Returns 0 or a negative errno. */
int age_encrypt(const age_recipient *recipients, size_t n, age_read_fn read, void *read_userdata,
                age_write_fn write, void *write_userdata);

/* Decrypts the age file READ gives with the first of the N identities that
 * opens a stanza, writing the plaintext through WRITE one verified chunk at a
 * time. Returns 0 only when the whole file verified; otherwise one of the
 * AGE_ERR_* classes (chunks written before a payload failure were each
 * authentic, but the whole was not) or a callback's negative errno. */
int age_decrypt(const age_identity *ids, size_t n, age_read_fn read, void *read_userdata, age_write_fn write,
                void *write_userdata);

/* Decrypts the age file READ gives with its FILE_KEY (a key released for
 * it, e.g. to a job's engine), without any identity: the header's stanzas
 * are parsed but not opened, its MAC must verify under FILE_KEY
 * (AGE_ERR_HMAC otherwise: not this file's key, or an altered header), then
 * the payload as age_decrypt() does. Returns the same values. */
int age_decrypt_with_file_key(const uint8_t file_key[AGE_FILE_KEY_SIZE], age_read_fn read, void *read_userdata,
                              age_write_fn write, void *write_userdata);

/* Reads only the header of the age file READ gives and writes into RET the
 * file key the first of the N identities opens, once the header's MAC
 * verified under it. The payload is not read. Returns 0, AGE_ERR_HEADER,
 * AGE_ERR_NO_MATCH, AGE_ERR_HMAC or a callback's negative errno. The caller
 * wipes RET after use. */
int age_unwrap_file_key(const age_identity *ids, size_t n, age_read_fn read, void *read_userdata,
                        uint8_t ret[AGE_FILE_KEY_SIZE]);
