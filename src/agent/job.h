/* The agent's job mode (docs/analytics.md "The run"): one run of one Job
 * inside a sandbox of the job engine's bundle. The agent
 *   1. gets evidence binding its ephemeral key (public_key), the job's
 *      digest (user_data) and the run (nonce: release_job_nonce());
 *   2. asks, through the channel, for the inputs' file keys: the kms role
 *      verifies everything and seals each to the agent's key (JWE); each is
 *      written to SECRETS_DIR/<input>.key (16 bytes, 0400);
 *   3. fetches each input's ciphertext through the channel into WORK_DIR,
 *      writes the engine's manifest, and runs the engine (the command of
 *      the bundle's enclave.yaml, with --manifest FILE appended) under the
 *      memory limit;
 *   4. uploads the encrypted result through the channel in parts and ends
 *      the run with the engine's report ({sha256, size, rows}) or its
 *      error ({error}); a failed run uploads nothing.
 * The runner forwards these calls for this sandbox's own job and run only. */
#pragma once

#include <cjose/cjose.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#define AGENT_JOB_NAME_MAX 64

typedef struct agent_job {
    char name[AGENT_JOB_NAME_MAX];
    uint64_t run;
    uint8_t digest[32];
    char digest_hex[65];
} agent_job;

/* Parses --job NAME:RUN:DIGEST (a resource name, a run number from 1, 64
 * lower-case hex digits) into RET. Returns 0 or -EINVAL. */
int agent_job_parse(const char *arg, agent_job *ret);

/* Makes evidence binding the agent's key, NONCE and USER_DATA: the raw
 * document into *RET (malloc'd). Returns 0 or a negative errno (logged). */
typedef int (*agent_evidence_fn)(void *userdata, const uint8_t *nonce, size_t nonce_len, const uint8_t *user_data,
                                 size_t user_data_len, uint8_t **ret, size_t *ret_len);

/* What the run needs of the agent; borrowed. */
typedef struct agent_job_env {
    const char *channel;
    const char *secrets_dir;
    const char *work_dir;         /* the ciphertexts, the manifest and the result */
    cjose_jwk_t *jwk;             /* the ephemeral private key the file keys are sealed to */
    const uint8_t *spki;          /* its DER SubjectPublicKeyInfo */
    size_t spki_len;
    char *const *command;         /* the engine's command */
    const sigset_t *blocked;      /* unblocked in the engine */
    unsigned long long memory_bytes; /* the engine's RLIMIT_AS; 0: none */
    agent_evidence_fn evidence;
    void *evidence_userdata;
} agent_job_env;

/* Runs JOB; returns the agent's exit status (0: the run succeeded and its
 * result was accepted). Every failure is logged and, once the keys were
 * released, reported to the API as the run's error. */
int agent_job_main(const agent_job *job, const agent_job_env *env);
