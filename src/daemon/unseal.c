/* `cloisterd unseal`: reads the KMS passphrase (or the token PIN) from a
 * file descriptor or, without echo, from the terminal, and hands it to the
 * running kms role over its socket in <data-dir>/run/. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "basic/macro.h"
#include "daemon/daemon.h"
#include "daemon/peer-tls.h"
#include "kms/client.h"
#include "kms/seal.h"

static void unseal_usage(FILE *f)
{
    fprintf(f, "usage: cloisterd unseal [--data-dir DIR] [--passphrase-fd N]\n"
               "       cloisterd unseal --kms https://HOST:PORT --pki-dir DIR [--passphrase-fd N]\n"
               "\n"
               "Unseals the KMS of the cloisterd running on DIR (default ./cloister-data) with its\n"
               "passphrase, or the PIN of its PKCS#11 token: read from file descriptor N, else asked\n"
               "for on the terminal. The first unseal of a new KMS sets the passphrase.\n"
               "With --kms, the kms role runs on another machine and is reached at its kms.listen\n"
               "over mutual TLS with the api role's certificate from DIR (pki.dir: ca.pem,\n"
               "roles/api.pem, roles/api.key).\n");
}

/* Reads one secret line from FD into a new buffer (wiped and freed by the caller). */
static int read_secret_fd(int fd, char **ret, size_t *ret_len)
{
    char *s;
    size_t n;
    int r = read_fd(fd, KMS_SECRET_MAX + 2, &s, &n);
    if (r < 0)
        return r;
    if (n > 0 && s[n - 1] == '\n')
        s[--n] = 0;
    if (n > 0 && s[n - 1] == '\r')
        s[--n] = 0;
    if (memchr(s, 0, n) || n > KMS_SECRET_MAX) {
        OPENSSL_cleanse(s, n);
        free(s);
        return -EINVAL;
    }
    *ret = s;
    *ret_len = n;
    return 0;
}

/* Asks for the secret on the controlling terminal with echo off. */
static int read_secret_tty(char **ret, size_t *ret_len)
{
    _cleanup_close_ int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -ENOTTY;
    struct termios old, quiet;
    if (tcgetattr(fd, &old) < 0)
        return -ENOTTY;
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
    quiet.c_lflag |= ICANON;
    static const char prompt[] = "KMS passphrase or PIN: ";
    /* echo off first: once the prompt shows, what is typed is hidden */
    if (tcsetattr(fd, TCSAFLUSH, &quiet) < 0)
        return -ENOTTY;
    if (write(fd, prompt, STRLEN(prompt)) < 0) {
        tcsetattr(fd, TCSAFLUSH, &old);
        return -ENOTTY;
    }
    char buf[KMS_SECRET_MAX + 2];
    ssize_t n = read(fd, buf, sizeof(buf));
    tcsetattr(fd, TCSAFLUSH, &old);
    (void)!write(fd, "\n", 1);
    int r = 0;
    size_t len = n > 0 ? (size_t)n : 0;
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (n <= 0 || len > KMS_SECRET_MAX || memchr(buf, 0, len))
        r = -EINVAL;
    else if (!(*ret = strndup(buf, len)))
        r = -ENOMEM;
    else
        *ret_len = len;
    OPENSSL_cleanse(buf, sizeof(buf));
    return r;
}

int unseal_read_secret(int fd, char **ret, size_t *ret_len)
{
    return fd >= 0 ? read_secret_fd(fd, ret, ret_len) : read_secret_tty(ret, ret_len);
}

/* Prints the KMS's error answer ANS (or the transport error R); returns 1. */
static int report(const char *what, int r, json_t *ans, const char *socket)
{
    json_t *e = json_object_get(ans, "error");
    if (r < 0)
        fprintf(stderr, "cloisterd unseal: cannot reach the KMS at %s (%s); %s\n", socket, strerror(-r),
                r == -EACCES                   ? "the TLS handshake failed: check the certificates (the kms role logs "
                                                 "a refused one)"
                : peer_address_is_url(socket) ? "is the kms role listening there (kms.listen)?"
                                               : "is cloisterd running on that data dir?");
    else
        fprintf(stderr, "cloisterd unseal: %s: %s\n", what,
                json_string_value(json_object_get(e, "message")) ?: "unexpected answer");
    return 1;
}

/* The unseal socket of the cloisterd running on DATA_DIR into ADDRESS.
 * Returns 0 or the exit status (said on stderr). */
static int local_kms(const char *data_dir, char *address, size_t size)
{
    char real[PATH_MAX];
    if (!realpath(data_dir, real)) {
        fprintf(stderr, "cloisterd unseal: no data dir %s\n", data_dir);
        return 1;
    }
    snprintf(address, size, "%s/run/kms-unseal.sock", real);
    return 0;
}

/* A kms role on another machine at URL, reached with the api role's
 * certificate of PKI_DIR (the kms role serves status and unseal to the roles
 * it serves, as on kms.sock): URL into ADDRESS. Returns 0 or the exit status
 * (said on stderr). */
static int remote_kms(const char *url, const char *pki_dir, char *address, size_t size)
{
    if (!pki_dir) {
        fprintf(stderr, "cloisterd unseal: --kms needs --pki-dir DIR (pki.dir of cloisterd --init: ca.pem and "
                        "roles/api.pem, roles/api.key)\n");
        return 2;
    }
    if (!peer_address_is_url(url) || strlen(url) >= size) {
        fprintf(stderr, "cloisterd unseal: --kms takes https://HOST:PORT (the kms role's kms.listen)\n");
        return 2;
    }
    char cert[PATH_MAX], key[PATH_MAX], ca[PATH_MAX];
    snprintf(cert, sizeof(cert), "%s/roles/api.pem", pki_dir);
    snprintf(key, sizeof(key), "%s/roles/api.key", pki_dir);
    snprintf(ca, sizeof(ca), "%s/ca.pem", pki_dir);
    const char *const files[] = {cert, key, ca};
    for (size_t i = 0; i < ELEMENTSOF(files); i++)
        if (access(files[i], R_OK) < 0) {
            fprintf(stderr, "cloisterd unseal: cannot read %s (%s)\n", files[i], strerror(errno));
            return 1;
        }
    if (peer_tls_set_identity(cert, key, ca) < 0) {
        fprintf(stderr, "cloisterd unseal: --pki-dir is too long\n");
        return 2;
    }
    strcpy(address, url);
    return 0;
}

int cloisterd_unseal(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data-dir", required_argument, NULL, 'd'},
        {"kms", required_argument, NULL, 'k'},
        {"pki-dir", required_argument, NULL, 'p'},
        {"passphrase-fd", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {},
    };
    const char *data_dir = "./cloister-data", *kms_url = NULL, *pki_dir = NULL;
    int fd = -1, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            data_dir = optarg;
            break;
        case 'k':
            kms_url = optarg;
            break;
        case 'p':
            pki_dir = optarg;
            break;
        case 'f': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || !*optarg || n < 0 || n > INT_MAX) {
                fprintf(stderr, "cloisterd unseal: --passphrase-fd takes a file descriptor number\n");
                return 2;
            }
            fd = (int)n;
            break;
        }
        case 'h':
            unseal_usage(stdout);
            return 0;
        default:
            unseal_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        unseal_usage(stderr);
        return 2;
    }
    char socket[PATH_MAX + 32];
    int r = kms_url ? remote_kms(kms_url, pki_dir, socket, sizeof(socket))
                    : local_kms(data_dir, socket, sizeof(socket));
    if (r != 0)
        return r;

    json_t *status = NULL;
    r = kms_call(socket, "/v1/status", NULL, &status);
    int ret;
    if (r != 200)
        ret = report("cannot read the KMS status", r, status, socket);
    else if (json_is_false(json_object_get(status, "sealed"))) {
        printf("the KMS is already unsealed\n");
        ret = 0;
    } else {
        char *secret = NULL;
        size_t len = 0;
        bool dev = strcmp(json_string_value(json_object_get(status, "mode")) ?: "", "dev") == 0;
        r = dev ? 0 : unseal_read_secret(fd, &secret, &len);
        if (r < 0) {
            fprintf(stderr, "cloisterd unseal: %s\n",
                    r == -ENOTTY ? "no terminal to ask for the passphrase on; use --passphrase-fd N"
                                 : "cannot read the passphrase (at most 1024 bytes, one line)");
            ret = 1;
        } else {
            json_t *body = json_pack("{s:s#}", "secret", secret ? secret : "", (int)len);
            json_t *ans = NULL;
            r = body ? kms_call(socket, "/v1/unseal", body, &ans) : -ENOMEM;
            kms_json_wipe_decref(body);
            if (r == 200) {
                printf("the KMS is unsealed\n");
                ret = 0;
            } else
                ret = report("unseal refused", r, ans, socket);
            json_decref(ans);
        }
        if (secret) {
            OPENSSL_cleanse(secret, len);
            free(secret);
        }
    }
    json_decref(status);
    kms_client_cleanup();
    return ret;
}
