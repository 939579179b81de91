/* Files in and out of age_encrypt()/age_decrypt() for the CLI: the input is
 * a file or stdin; the output is stdout, or -o FILE written to a temporary
 * beside it (0600) and renamed over FILE only once the whole operation
 * succeeded, so a file that does not verify leaves nothing behind. An
 * existing non-regular FILE (/dev/null, a FIFO) is written in place. */
#pragma once

#include <stdbool.h>

#include "age/age.h"

typedef struct ageio_out {
    int fd;          /* where to write */
    char *path;      /* the final path, or NULL for stdout */
    char *tmp_path;  /* the temporary, while it exists */
    bool direct;     /* an existing non-regular file (a device, a pipe), written in place */
} ageio_out;

/* What to do: encrypt to N RECIPIENTS, or (RECIPIENTS NULL) decrypt with N IDENTITIES. */
typedef struct ageio_keys {
    const age_recipient *recipients;
    const age_identity *identities;
    size_t n;
} ageio_keys;
/* Encrypts or decrypts (K) from IN_PATH (stdin when NULL or "-") to
 * OUT_PATH (as ageio_out_open()), keeping the output only when all of it
 * succeeded. Prints what failed and returns an exit status. */
int ageio_run(const char *in_path, const char *out_path, const ageio_keys *k);

/* Opens PATH for reading (stdin when NULL or "-"). Returns an fd or a negative errno. */
int ageio_open_in(const char *path);
/* Prepares OUT for PATH (stdout when NULL or "-"). Returns 0 or a negative errno. */
int ageio_out_open(ageio_out *out, const char *path);
/* Ends OUT: on SUCCESS fsyncs and renames the temporary over the final
 * path; otherwise removes it. Returns 0 or a negative errno (the temporary removed). */
int ageio_out_finish(ageio_out *out, bool success);
