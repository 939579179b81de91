/* A structural scan of untrusted CBOR before libcbor loads it: one item,
 * definite lengths only, no floats or undefined, nesting bounded, every
 * count plausible for the input size (so libcbor never allocates for a
 * length the input cannot hold). Shared by attestation documents
 * (attest/nitro.c) and WebAuthn messages (auth/webauthn.c). */
#pragma once

#include <cbor.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum cbor_scan_error {
    CBOR_SCAN_MALFORMED = 1, /* not CBOR, or cut short inside an item */
    CBOR_SCAN_UNSUPPORTED,   /* indefinite length, float, undefined or impossible size */
    CBOR_SCAN_TOO_DEEP,      /* nested deeper than MAX_DEPTH */
    CBOR_SCAN_TRUNCATED,     /* a container's items are missing */
} cbor_scan_error;

/* Scans the first CBOR item of DATA (LEN bytes; bytes after it are left
 * alone). Returns 0 with its length in *RET_LEN, or -EBADMSG with what was
 * wrong in *RET_ERROR and the byte offset in *RET_POS. */
int cbor_scan_item(const uint8_t *data, size_t len, unsigned max_depth, size_t *ret_len, cbor_scan_error *ret_error,
                   size_t *ret_pos);

/* Whether ITEM is a definite byte string; its bytes into *RET_P, *RET_LEN. */
bool cbor_get_bytes(const cbor_item_t *item, const uint8_t **ret_p, size_t *ret_len);
/* Whether ITEM is a definite text string; its bytes into *RET_P, *RET_LEN. */
bool cbor_get_text(const cbor_item_t *item, const char **ret_p, size_t *ret_len);

/* Releases *P (may be NULL); _cleanup_cbor_ for locals. */
void cbor_decrefp(cbor_item_t **p);
#define _cleanup_cbor_ __attribute__((cleanup(cbor_decrefp)))
