/* Content-addressed blobs: immutable files named by the SHA-256 of their
 * bytes under DIR/sha256/<hex>, filled through restartable uploads under
 * DIR/uploads/<id> (appended in parts, each fsynced before it is
 * acknowledged) and published by blob_upload_commit(): hash checked, file
 * fsynced, renamed into place, directory fsynced. A blob is therefore either
 * whole and durable or absent; a crash leaves at most an upload behind, never
 * a half-written blob. One small interface so that an object store can
 * replace the directory. Thread-safe: every call works on files only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BLOB_HEX_LEN 64              /* lower-case hex SHA-256 */
#define BLOB_ID_MAX 64               /* an upload id: [A-Za-z0-9_-]{1,64} */
#define BLOB_SIZE_MAX (64ull << 30)  /* 64 GiB */

typedef struct blob_store blob_store;

/* Opens (creating, 0700) the store under DIR. Returns 0 or a negative errno. */
int blob_store_open(const char *dir, blob_store **ret);
/* Accepts NULL. */
void blob_store_free(blob_store *bs);

/* Whether HEX is 64 lower-case hex digits; ID a valid upload id. */
bool blob_hex_valid(const char *hex);
bool blob_id_valid(const char *id);

/* The bytes upload ID holds so far (0 when it does not exist). Returns 0 or a negative errno. */
int blob_upload_size(blob_store *bs, const char *id, uint64_t *ret);
/* Writes N bytes of DATA at OFFSET of upload ID (created at offset 0),
 * dropping whatever followed OFFSET (a part sent again after a crash), and
 * fsyncs them; the upload's new size into *RET_SIZE. -ERANGE when OFFSET is
 * past the upload's end (nothing written; blob_upload_size() tells where to
 * go on), -EFBIG past BLOB_SIZE_MAX, -EBUSY while another part of the same
 * upload is being written. */
int blob_upload_write(blob_store *bs, const char *id, uint64_t offset, const void *data, size_t n,
                      uint64_t *ret_size);
/* Publishes upload ID as the blob of SHA-256 HEX when it holds exactly SIZE
 * bytes hashing to HEX: durable when this returns 0, the upload gone.
 * -EBADMSG when the size or hash differ (the upload is dropped: start
 * again), -ENOENT no such upload, -EBUSY a part is being written. */
int blob_upload_commit(blob_store *bs, const char *id, const char *hex, uint64_t size);
/* Drops upload ID; absent is no error. */
int blob_upload_abort(blob_store *bs, const char *id);

/* Opens blob HEX for reading: its fd (the caller closes it) and size.
 * -ENOENT when absent. */
int blob_open(blob_store *bs, const char *hex, int *ret_fd, uint64_t *ret_size);
/* Removes blob HEX durably; absent is no error. */
int blob_delete(blob_store *bs, const char *hex);
