/* Workspaces and datasets (DESIGN.md, "Confidential analytics"): the
 * implicit rights of a workspace's members, the server-owned status of
 * Datasets, and /v1/datasets/{name}/data, the dataset's ciphertext (an age
 * file the server cannot read) kept in the blob store. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "api/request.h"
#include "store/store.h"

/* Largest part of an upload: PUT /v1/datasets/{name}/data?offset=N carries
 * at most this many bytes (the API's request body cap). */
#define API_DATASET_PART_MAX (4 * 1024 * 1024)

/* Opens the blob store under DIR (the api role's subtree). Returns 0 or a negative errno. */
int api_datasets_init(const char *dir);
void api_datasets_done(void);

/* The one place a workspace member's implicit rights are decided (no
 * policy needed, none can take them away), for caller C doing VERB on
 * KIND/NAME (DOC: the new document of a write, NULL otherwise):
 *   - get Workspace W: a member of W;
 *   - get Dataset D (the resource and its ciphertext): a member of D's workspace;
 *   - list Dataset: a member of any workspace (the list holds only the
 *     datasets the caller may get);
 *   - create Dataset D: a member of the workspace DOC names;
 *   - upload, update, delete Dataset D: D's owner (who created it), while a
 *     member of its workspace;
 *   - get Job J, and approve, reject or veto it: a member of J's workspace
 *     (whose approval counts and who may veto: handlers-jobs.h);
 *   - list Job: a member of any workspace (the list holds only the jobs
 *     the caller may get);
 *   - create Job J: a member of the workspace DOC names;
 *   - update, delete, run Job J: J's author (who proposed it), while a member of
 *     its workspace;
 *   - get-keys User U (U's registered public keys): a member of a workspace
 *     U is a member of (to check a job's recipients before approving it).
 * Everything else is the policies' to decide. */
bool api_member_allows(api_server *srv, const caller *c, const char *verb, const char *kind, const char *name,
                       const json_t *doc);

/* Makes OP, the store op of a Dataset create by caller C, set the
 * server-owned status {owner: C} (into OP's document, which owns it).
 * Other ops are left as they are. Returns 0 or -ENOMEM. */
int api_dataset_set_owner(store_op *op, const caller *c);

/* Refuses a Dataset write DOC over STORED that moves it to another
 * workspace, or names a workspace that does not exist (400). Returns 0 or
 * -1 with ERR. */
int api_dataset_check(api_server *srv, const json_t *doc, const json_t *stored, api_error *err);

/* What deleting Dataset NAME must clean up, into INPUT (the delete's):
 * its blob's hash and its unfinished upload. Returns 0 or -1 with ERR. */
int api_dataset_delete_input(api_server *srv, const char *name, json_t *input, api_error *err);
/* Once the delete is durable: removes the upload and the blob INPUT names,
 * unless another Dataset has the same content. */
void api_dataset_deleted(api_server *srv, const json_t *input);

/* What deleting Workspace NAME must do first, into INPUT (the delete's):
 * the name of its key (its stored status.key, "workspaceKey"), which the
 * kms role destroys before the delete is written; and OP (the delete) made
 * a compare-and-swap on the version read, so the key destroyed is the one
 * of the Workspace deleted. Nothing comes from the client. Returns 0 (also
 * when there is no such Workspace: the delete answers 404) or -1 with ERR. */
int api_workspace_delete_input(api_server *srv, const char *name, json_t *input, store_op *op, api_error *err);

/* The blob store of datasets and job results (api_datasets_init()). */
struct blob_store *api_blobs(void);

/* Answers R with blob SHA (64 hex), streamed in chunks as
 * application/octet-stream (HEAD: the headers only); its size into
 * *RET_SIZE. Returns 0 once the answer started, or -1 with ERR. */
int api_send_blob(api_request *r, const char *sha, uint64_t *ret_size, api_error *err);

/* GET (download), PUT ?offset=N (a part of the upload), POST {sha256, size}
 * (commit) /v1/datasets/{name}/data. */
int api_handle_dataset_data(api_request *r, const char *name, api_error *err);
