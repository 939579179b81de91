/* The kms role's job release (docs/kms.md "Job release", DESIGN.md
 * "Confidential analytics"): the file keys of a job's inputs, released to
 * the sandbox that runs the job engine only after the kms role verified,
 * itself, everything the release depends on. The api role gathers the
 * material (it holds the store); nothing it says is taken on trust where the
 * kms role can check it:
 *
 *   digest      SHA-256(JCS(digestInput)) computed here; the evidence must
 *               carry the run's nonce derived from it, so evidence made for
 *               another job or another run does not fit;
 *   evidence    verified against the platform CA the kms role reads itself,
 *               then against the workspace's AttestationPolicy (the built-in
 *               `cloister-jobs` when the workspace names none: sandbox
 *               evidence, allowed only under --dev), binding the sandbox's
 *               public key;
 *   pcr0        the evidence's PCR0 is the digest's engine.pcr0;
 *   approvals   every required approver's signature over the digest
 *               verifies against their registered approval key;
 *   runs        the runs of this digest, counted here (in the kms role's
 *               own files, fsynced before a key leaves), stay below maxRuns
 *               (part of the digest): a replayed or lying api cannot run a
 *               job more often than its approvers signed for;
 *   notAfter    has not passed;
 *   veto        no owner vetoed.
 * Then each input's age header is opened with the workspace key and its
 * file key sealed to the sandbox's key (JWE, ECDH-ES + A256GCM). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "httpd/json.h"
#include "kms/keyring.h"

#define KMS_JOB_INPUTS_MAX 16
#define KMS_JOB_APPROVERS_MAX 64
#define KMS_JOB_HEADER_MAX (8 * 1024) /* an input's age header as sent for unwrapping */

/* What the job release needs of the role besides the ring. Borrowed. */
typedef struct kms_job_config {
    const char *runs_dir;    /* the run counts: one file per digest */
    const char *platform_ca; /* PEM of the roots of sandbox evidence */
    size_t platform_ca_len;
    bool dev;                /* the built-in policy accepts sandbox evidence */
} kms_job_config;

/* POST /v1/job-release with BODY
 *   {job, run, workspaceKey, digestInput, requiredApprovers: [user], approvals:
 *    [{user, signature}], approvalKeys: {user: base64}, vetoes: [user],
 *    attestationPolicy: spec | null, type, evidence, publicKey,
 *    inputs: [{name, header}]}   (binary values standard base64)
 * RUN is the api's number of the run, which the evidence's nonce binds
 * (release_job_nonce()); the count the kms role keeps is its own.
 * Returns {run, runsReleased, digest, evidenceSha256, keys: [{name, jwe}]}
 * (each JWE's payload {"input", "fileKey": base64 of 16 bytes}) or NULL with
 * ERR: 403 "release_refused" whose message starts with the failed check
 * ("evidence: …", "pcr0: …", "approval: …", "runs: …", "notAfter: …",
 * "veto: …", "digest: …", "unwrap: …"), 400 for a malformed body. Every
 * outcome is an audit entry `kms.job.release` naming the check. */
json_t *kms_job_release(kms_keyring *ring, const kms_job_config *cfg, const json_t *body, api_error *err);
