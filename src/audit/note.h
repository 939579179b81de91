/* C2SP signed notes with Ed25519 and C2SP tlog-checkpoint bodies.
 *   key ID       = SHA-256(name || 0x0A || 0x01 || public key)[:4]
 *   signature    = "\xE2\x80\x94 <name> <base64(key ID || Ed25519 signature)>\n"
 *   verifier key = "<name>+<hex key ID>+<base64(0x01 || public key)>"
 *   note         = text (ends in "\n") "\n" signature lines
 *   checkpoint   = "<origin>\n<size>\n<base64 root>\n" */
#pragma once

#include <openssl/evp.h>
#include <stdint.h>

#include "audit/merkle.h"

#define AUDIT_NAME_MAX 255
#define AUDIT_NOTE_MAX (64 * 1024)

typedef struct audit_verifier {
    char name[AUDIT_NAME_MAX + 1];
    uint32_t key_id;
    uint8_t pub[32];
} audit_verifier;

/* Whether NAME may name a key: 1..AUDIT_NAME_MAX bytes, printable ASCII
 * other than space and '+'. */
bool audit_key_name_valid(const char *name);
/* The key ID of the Ed25519 key PUB named NAME. */
uint32_t audit_key_id(const char *name, const uint8_t pub[32]);
/* The verifier key string of PUB named NAME into *RET (heap, caller frees).
 * Returns 0, -EINVAL for a bad name, or -ENOMEM. */
int audit_verifier_format(const char *name, const uint8_t pub[32], char **ret);
/* Parses a verifier key string (trailing whitespace allowed). Returns 0 or
 * -EINVAL (also when the key ID does not match the name and key). */
int audit_verifier_parse(const char *s, audit_verifier *ret);

/* Signs TEXT (non-empty, ends in '\n', no blank line) with KEY (an Ed25519
 * private key) as NAME; *RET is the whole note (heap, caller frees).
 * Returns 0, -EINVAL or -ENOMEM. */
int audit_note_sign(EVP_PKEY *key, const char *name, const char *text, char **ret);
/* Verifies NOTE (LEN bytes) carries a valid signature by V. Signature lines
 * of other keys are ignored; a line with V's name and key ID that fails
 * rejects the note. On success *RET_TEXT_LEN is the length of the signed
 * text at the start of NOTE. Returns 0, -EBADMSG (malformed), -EPERM (no
 * valid signature by V). */
int audit_note_verify(const char *note, size_t len, const audit_verifier *v, size_t *ret_text_len);

/* The checkpoint text for ORIGIN, SIZE and ROOT into *RET (heap). */
int audit_checkpoint_format(const char *origin, uint64_t size, const merkle_hash root, char **ret);
/* Parses a checkpoint text (LEN bytes; extension lines after the root are
 * allowed). ORIGIN_OUT (AUDIT_NAME_MAX + 1 bytes) receives the origin.
 * Returns 0 or -EINVAL. */
int audit_checkpoint_parse(const char *text, size_t len, char *origin_out, uint64_t *ret_size, merkle_hash ret_root);

/* The raw Ed25519 public key of KEY into PUB. Returns 0 or -EINVAL. */
int audit_ed25519_public(EVP_PKEY *key, uint8_t pub[32]);
