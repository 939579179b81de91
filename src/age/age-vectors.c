/* age-vectors DIR: runs every C2SP/CCTV age vector of DIR (vectors/README.md:
 * a textual header, an empty line, the age file, zlib-compressed when the
 * header says so) through age_decrypt() and checks the exact outcome:
 * success with the payload's SHA-256, or the named failure class. Vectors
 * of features not built (armor, scrypt passphrases, hybrid ML-KEM
 * identities) are counted as skipped, by feature. Exit 0 only when every
 * vector run gave its expected result and none was unreadable. */
#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "age/age.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"

#define VECTOR_MAX (64u << 20)

/* A memory reader and a hashing writer for age_decrypt(). */
typedef struct mem_reader {
    const uint8_t *p;
    size_t len, pos;
} mem_reader;

static ssize_t mem_read(void *userdata, uint8_t *buf, size_t n)
{
    mem_reader *m = userdata;
    n = MIN(n, m->len - m->pos);
    memcpy(buf, m->p + m->pos, n);
    m->pos += n;
    return (ssize_t)n;
}

static int hash_write(void *userdata, const uint8_t *buf, size_t n)
{
    return EVP_DigestUpdate(userdata, buf, n) == 1 ? 0 : -EIO;
}

/* Inflates the zlib stream IN into a new buffer (capped); returns 0 or -EINVAL. */
static int inflate_all(const uint8_t *in, size_t len, uint8_t **ret, size_t *ret_len)
{
    size_t cap = 1 << 20, n = 0;
    _cleanup_free_ uint8_t *out = malloc(cap);
    z_stream z = {.next_in = (Bytef *)in, .avail_in = (uInt)len};
    if (!out || inflateInit(&z) != Z_OK)
        return -ENOMEM;
    int zr;
    do {
        if (n == cap) {
            if (cap >= VECTOR_MAX) {
                inflateEnd(&z);
                return -E2BIG;
            }
            uint8_t *t = realloc(out, cap * 2);
            if (!t) {
                inflateEnd(&z);
                return -ENOMEM;
            }
            out = t;
            cap *= 2;
        }
        z.next_out = out + n;
        z.avail_out = (uInt)(cap - n);
        zr = inflate(&z, Z_NO_FLUSH);
        n = cap - z.avail_out;
    } while (zr == Z_OK);
    inflateEnd(&z);
    if (zr != Z_STREAM_END)
        return -EINVAL;
    *ret = TAKE_PTR(out);
    *ret_len = n;
    return 0;
}

/* The class name a vector's "expect:" uses for R. */
static const char *outcome_name(int r)
{
    switch (r) {
    case 0:
        return "success";
    case AGE_ERR_HEADER:
        return "header failure";
    case AGE_ERR_NO_MATCH:
        return "no match";
    case AGE_ERR_HMAC:
        return "hmac failure";
    case AGE_ERR_PAYLOAD:
        return "payload failure";
    default:
        return "error";
    }
}

typedef struct counts {
    unsigned passed, failed, armor, scrypt, hybrid;
} counts;

/* Runs one vector file; updates C. */
static void run_vector(const char *dir, const char *name, counts *c)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    _cleanup_free_ char *data = NULL;
    size_t len;
    if (read_file(path, VECTOR_MAX, &data, &len) < 0) {
        printf("FAIL %s: cannot read it\n", name);
        c->failed++;
        return;
    }
    char expect[64] = "", payload[65] = "", file_key_hex[33] = "";
    bool armored = false, compressed = false, passphrase = false, other_identity = false;
    age_identity ids[8];
    size_t n_ids = 0;
    size_t pos = 0;
    bool bad = false;
    /* the textual header, up to an empty line */
    for (;;) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        if (!nl) {
            bad = true;
            break;
        }
        size_t l = (size_t)(nl - (data + pos));
        char line[256];
        if (l >= sizeof(line)) {
            bad = true;
            break;
        }
        memcpy(line, data + pos, l);
        line[l] = '\0';
        pos += l + 1;
        if (l == 0)
            break;
        char *colon = strstr(line, ": ");
        if (!colon) {
            bad = true;
            break;
        }
        *colon = '\0';
        const char *v = colon + 2;
        if (strcmp(line, "expect") == 0) {
            snprintf(expect, sizeof(expect), "%s", v);
            for (char *p = expect; *p; p++)
                *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        } else if (strcmp(line, "payload") == 0)
            snprintf(payload, sizeof(payload), "%s", v);
        else if (strcmp(line, "file key") == 0)
            snprintf(file_key_hex, sizeof(file_key_hex), "%s", v);
        else if (strcmp(line, "armored") == 0)
            armored = strcmp(v, "yes") == 0;
        else if (strcmp(line, "compressed") == 0) {
            if (strcmp(v, "zlib") != 0)
                bad = true;
            compressed = true;
        } else if (strcmp(line, "passphrase") == 0)
            passphrase = true;
        else if (strcmp(line, "identity") == 0) {
            if (strncmp(v, "AGE-SECRET-KEY-1", 16) != 0)
                other_identity = true;
            else if (n_ids == ELEMENTSOF(ids) || age_identity_parse(v, &ids[n_ids++]) < 0)
                bad = true;
        }
    }
    if (bad || !*expect) {
        printf("FAIL %s: unreadable vector header\n", name);
        c->failed++;
        return;
    }
    /* features not built: skipped, never run with the wrong key */
    if (armored) {
        printf("skip %s (armor)\n", name);
        c->armor++;
        return;
    }
    if (n_ids == 0 && passphrase) {
        printf("skip %s (scrypt)\n", name);
        c->scrypt++;
        return;
    }
    if (n_ids == 0 && other_identity) {
        printf("skip %s (hybrid ML-KEM)\n", name);
        c->hybrid++;
        return;
    }
    _cleanup_free_ uint8_t *inflated = NULL;
    const uint8_t *file = (const uint8_t *)data + pos;
    size_t file_len = len - pos;
    if (compressed) {
        if (inflate_all(file, file_len, &inflated, &file_len) < 0) {
            printf("FAIL %s: bad zlib body\n", name);
            c->failed++;
            return;
        }
        file = inflated;
    }
    mem_reader m = {.p = file, .len = file_len};
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    int r = age_decrypt(ids, n_ids, mem_read, &m, hash_write, md);
    uint8_t digest[32];
    char hex[65];
    unsigned dlen;
    EVP_DigestFinal_ex(md, digest, &dlen);
    EVP_MD_CTX_free(md);
    hex_encode(digest, sizeof(digest), hex);
    for (size_t i = 0; i < n_ids; i++)
        age_identity_wipe(&ids[i]);

    const char *got = outcome_name(r);
    /* With the file key itself (no identity: the engine's way), the same
     * outcome wherever the stanzas play no part: success with the payload,
     * an altered header (HMAC), a bad payload. */
    if (strlen(file_key_hex) == 32 && (strcmp(expect, "success") == 0 || strcmp(expect, "hmac failure") == 0 ||
                                       strcmp(expect, "payload failure") == 0)) {
        uint8_t fk[AGE_FILE_KEY_SIZE], digest2[32];
        char hex2[65];
        mem_reader m2 = {.p = file, .len = file_len};
        EVP_MD_CTX *md2 = EVP_MD_CTX_new();
        EVP_DigestInit_ex(md2, EVP_sha256(), NULL);
        int r2 = hex_decode(file_key_hex, 32, fk, sizeof(fk)) == 0
                     ? age_decrypt_with_file_key(fk, mem_read, &m2, hash_write, md2)
                     : -EINVAL;
        EVP_DigestFinal_ex(md2, digest2, &dlen);
        EVP_MD_CTX_free(md2);
        hex_encode(digest2, sizeof(digest2), hex2);
        if (r2 != r || strcmp(hex2, hex) != 0) {
            c->failed++;
            printf("FAIL %s: with the file key: %s (%s), plaintext sha256 %s; with the identity: %s\n", name,
                   outcome_name(r2), age_strerror(r2), hex2, got);
            return;
        }
    }
    /* Success must give the payload. A payload failure's "payload" is what
     * the reference implementation released before failing; we may release
     * less (a full chunk at the end of the input is tried only as the last
     * one, so it is held back), never other bytes: noted, not failed. */
    bool ok = strcmp(got, expect) == 0 && (r != 0 || strcmp(hex, payload) == 0);
    if (ok) {
        c->passed++;
        if (r == AGE_ERR_PAYLOAD && *payload && strcmp(hex, payload) != 0)
            printf("ok   %s (%s; released fewer verified chunks than the reference)\n", name, got);
        else
            printf("ok   %s (%s)\n", name, got);
    } else {
        c->failed++;
        printf("FAIL %s: expected %s%s%s, got %s (%s), released plaintext sha256 %s\n", name, expect,
               *payload ? " with payload " : "", payload, got, age_strerror(r), hex);
    }
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: age-vectors DIR\n");
        return 2;
    }
    DIR *d = opendir(argv[1]);
    if (!d) {
        fprintf(stderr, "error: cannot open %s: %m\n", argv[1]);
        return 1;
    }
    char *names[1024];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < ELEMENTSOF(names))
        if (e->d_name[0] != '.' && strcmp(e->d_name, "README.md") != 0)
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof(*names), cmp_names);
    counts c = {};
    for (size_t i = 0; i < n; i++) {
        run_vector(argv[1], names[i], &c);
        free(names[i]);
    }
    unsigned skipped = c.armor + c.scrypt + c.hybrid;
    printf("age vectors: %zu files, %u passed, %u failed, %u skipped (armor %u, scrypt %u, hybrid ML-KEM %u)\n", n,
           c.passed, c.failed, skipped, c.armor, c.scrypt, c.hybrid);
    return c.failed == 0 && c.passed > 0 ? 0 : 1;
}
