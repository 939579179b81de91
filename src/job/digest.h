/* A job's digest and its approvals (DESIGN.md "Confidential analytics"):
 * the digest is SHA-256 over the RFC 8785 (JCS) canonical JSON of
 *   {apiVersion, workspace, query, inputs: [{name, sha256}], recipients: ["age1…"],
 *    engine: {pcr0}, maxRuns, notAfter}
 * and an approval is an Ed25519 signature over
 *   "cloister job approval v1\n" || lower-case hex(digest) || "\n".
 * Shared by the CLI (which recomputes and signs), the api role (which computes
 * and verifies) and the kms role (which verifies again before a release). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JOB_API_VERSION "cloister.dev/v1"
#define JOB_DIGEST_SIZE 32
#define JOB_MAX_RUNS_DEFAULT 1
#define JOB_APPROVAL_PREFIX "cloister job approval v1\n"
/* The signed message: prefix, 64 hex digits, "\n" (no terminator counted). */
#define JOB_APPROVAL_MESSAGE_LEN (sizeof(JOB_APPROVAL_PREFIX) - 1 + 2 * JOB_DIGEST_SIZE + 1)
#define JOB_ED25519_PUBLIC_SIZE 32
#define JOB_ED25519_SIGNATURE_SIZE 64
/* The largest canonical text jcs_serialize() makes (a job's query is capped at
 * 64 KiB, so a digest input stays well below this). */
#define JCS_MAX_SIZE (1024 * 1024)

/* RFC 8785 canonical JSON of V: object members sorted by their names' UTF-16
 * code units, no whitespace, strings escaped as ECMAScript's JSON.stringify
 * does, integers in decimal. Numbers that are not integers of magnitude at
 * most 2^53 - 1 are refused (a job never uses them), as is nesting deeper
 * than 32 levels. *RET is a heap NUL-terminated string the caller frees.
 * Returns 0, -EINVAL (a value JCS form is not defined for here), -E2BIG
 * (longer than JCS_MAX_SIZE) or -ENOMEM. */
int jcs_serialize(const json_t *v, char **ret);

/* The object a job's digest covers, built from JOB_SPEC (the Job's spec:
 * workspace, query, inputs [dataset names], maxRuns (default 1), notAfter
 * (RFC 3339 text, or absent: null)) and RESOLVED, what the server looked up
 * for it: {"inputs": [{"name", "sha256"}] (in the spec's order),
 * "recipients": ["age1…"], "engine": {"pcr0": hex}}. Every value is checked
 * (names match the spec's inputs, sha256 is 64 lower-case hex digits, pcr0
 * 96, recipients start with "age1"). *RET is a new reference.
 * Returns 0, -EINVAL (a missing or malformed field) or -ENOMEM. */
int job_digest_input(const json_t *job_spec, const json_t *resolved, json_t **ret);

/* SHA-256 of the JCS form of DIGEST_INPUT into RET. Returns 0 or a
 * jcs_serialize() error. */
int job_digest(const json_t *digest_input, uint8_t ret[JOB_DIGEST_SIZE]);

/* The message an approval signs for DIGEST into OUT (JOB_APPROVAL_MESSAGE_LEN
 * bytes plus a terminator). */
void job_approval_message(const uint8_t digest[JOB_DIGEST_SIZE], char out[JOB_APPROVAL_MESSAGE_LEN + 1]);

/* Whether SIG is a valid Ed25519 signature by ED25519_PUB over the approval
 * message of DIGEST. */
bool job_approval_verify(const uint8_t digest[JOB_DIGEST_SIZE], const uint8_t ed25519_pub[JOB_ED25519_PUBLIC_SIZE],
                         const uint8_t sig[JOB_ED25519_SIGNATURE_SIZE]);
