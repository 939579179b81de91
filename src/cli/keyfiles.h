/* The user's own keys, made and kept on their machine (DESIGN.md,
 * "Confidential analytics"): $XDG_CONFIG_HOME/cloister/keys/ (0700) holds
 * approval-key.pem (the Ed25519 approval key, PKCS#8 PEM) and
 * age-identity.txt (the age X25519 identity in age-keygen's format), both
 * 0600. The public halves: the approval key as standard base64 of its 32
 * raw bytes, the identity's "age1…" recipient. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "age/age.h"

#define KEYFILE_APPROVAL_B64_LEN 44
#define KEYFILE_SIGNATURE_SIZE 64

/* The keys directory, or one file in it (NAME; NULL for the directory), as a
 * heap string. Returns 0 or a negative errno. */
int keyfile_path(const char *name, char **ret);
/* Reads the identities of the identity file PATH (the user's own when NULL).
 * Returns 0 with them in *RET (free with age_identities_free), -ENOENT,
 * -EINVAL when it holds none or something else, or another negative errno. */
int keyfile_load_identities(const char *path, age_identity **ret, size_t *ret_n);
/* The base64 public key of the saved approval key into OUT. Returns 0 or a negative errno. */
int keyfile_approval_public(char out[static KEYFILE_APPROVAL_B64_LEN + 1]);
/* Signs the N bytes of MSG with the saved approval key (Ed25519) into SIG.
 * Returns 0, -EINVAL when the file holds no Ed25519 key, or a negative errno. */
int keyfile_approval_sign(const void *msg, size_t n, uint8_t sig[static KEYFILE_SIGNATURE_SIZE]);
