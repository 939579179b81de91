/* Agent-mode sandboxes of the runner role (docs/enclaves.md): the launch
 * parameter, the per-sandbox directory <runner_dir>/<name>/ holding the
 * channel socket the runner serves and the aTLS socket the agent serves,
 * and the channel itself, where the runner answers exactly what an enclave
 * may ask for:
 *
 *   POST /v1/evidence {"nonce"?, "user_data"?, "public_key"?}   (hex)
 *        this sandbox's evidence, never another's: the sandbox is the one
 *        whose socket the connection came through, and a "name" is refused
 *   POST /v1/attest/challenge {}
 *   POST /v1/kms/keys/{key}/release {"type": "sandbox", "evidence", "publicKey"}
 *        forwarded to the api role as the runner's identity, for the Keys
 *        named in the sandbox's launch request only
 *   POST /v1/secrets/{secret}/{key}/release {"type": "sandbox", "evidence", "publicKey"}
 *        forwarded as POST /v1/enclaves/{enclave}/secret-release for the
 *        Secret values named in the launch request only (the Enclave is
 *        the one of the launch's owner tag)
 *
 *   POST /v1/status {"ready"?: bool, "error"?: string}
 *        the agent's report: its workload answers on its port (ready), or
 *        why it stops (the release refused, the workload exited); listed
 *        by GET /v1/sandboxes ("ready", "error", and an exit's "error")
 *
 * and, in job mode only (the launch's "agent": {"job": {name, run, digest}}:
 * the agent runs one run of one Job, docs/analytics.md "The run"), the job
 * routes, forwarded to the API's /v1/job-runs/{job}/{run}/… under the
 * sandbox's own job and run (a sandbox cannot name another):
 *
 *   POST /v1/job/release {"type", "evidence", "publicKey"}   the inputs' file keys
 *   POST /v1/job/input {"name", "offset"}     up to RUNNER_JOB_PART_MAX bytes of
 *        that input's ciphertext from OFFSET (application/octet-stream)
 *   POST /v1/job/result/{offset}   a part of the encrypted result, raw bytes,
 *        at most RUNNER_JOB_PART_MAX (the one body above RUNNER_CHANNEL_BODY_MAX),
 *        the whole at most RUNNER_JOB_RESULT_MAX
 *   POST /v1/job/finish {"sha256", "size", "rows"} | {"error"}   the run's end
 *
 * and nothing else (404). Each sandbox has at most RUNNER_CHANNEL_CONNS_MAX
 * connections open, and token buckets on evidence, forwarded calls and a
 * job's data calls. */
#pragma once

#include <h2o.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "httpd/json.h"
#include "sandbox/launch.h"

#define RUNNER_AGENT_SECRETS_MAX 16
#define RUNNER_AGENT_ERROR_MAX 512 /* the agent's last reported error, with the NUL */
#define RUNNER_CHANNEL_CONNS_MAX 4
#define RUNNER_CHANNEL_BODY_MAX (128 * 1024)
/* a job's input chunks and result parts: their own cap, the channel's
 * largest body (the runner's request body limit follows it) */
#define RUNNER_JOB_PART_MAX (1024 * 1024)
#define RUNNER_JOB_RESULT_MAX (256ull << 20)

typedef struct runner_agent runner_agent;

/* Finds the agent executable: $CLOISTER_AGENT, else cloister-agent next to
 * this executable, else ../agent/cloister-agent from it (the build tree).
 * Writes its absolute path to OUT; -ENOENT when there is none. */
int runner_agent_locate(char *out, size_t size);

/* Finds the job engine's bundle directory (docs/analytics.md "The run"):
 * $CLOISTER_JOB_BUNDLE, else cloister-job-bundle next to this executable,
 * else ../job/cloister-job-bundle from it (the build tree). Writes its
 * absolute path to OUT; -ENOENT when there is none. */
int runner_engine_locate(char *out, size_t size);
/* The same for cloister-plugin-sandbox (or $CLOISTER_PLUGIN_SANDBOX), the
 * host of an untrusted plugin in its sandbox (runner/plugins.h). */
int runner_plugin_sandbox_locate(char *out, size_t size);

/* Prepares agent mode for sandbox NAME from PARAMS, the launch request's
 * "agent" member ({"secrets"?: [{"key", "file"}], "refreshSeconds"?}),
 * the bundle's enclave.yaml YAML (its "port" is where aTLS connections go;
 * without one the agent serves no aTLS) and the workload's command ARGV
 * (NULL-terminated, borrowed). AGENT_PATH is the executable to bind into
 * the sandbox. Creates <RUNNER_DIR>/<NAME>/ (0700) with the listening
 * channel.sock and atls.sock. Returns the new state, or NULL with ERR
 * (400 for a bad parameter, 500 otherwise). */
/* MEMORY_BYTES (0: none) is the workload's address-space limit, which the
 * agent applies to it. */
/* OWNER (may be NULL) is the launch's owner tag: a {secret, key, file}
 * entry is released for the Enclave it names (enclave/<name>/…). */
runner_agent *runner_agent_new(const char *runner_dir, const char *agent_path, const char *name, const char *owner,
                               const json_t *params, const json_t *yaml, char *const *argv, uint64_t memory_bytes,
                               api_error *err);

/* Sets SPEC's argv (the agent, its options, "--", the workload's command),
 * channel, agent executable and inherited aTLS socket. AG keeps them alive. */
void runner_agent_fill_spec(runner_agent *ag, sandbox_spec *spec);

/* SHA-384 of the agent executable bound into the sandbox (its PCR3). */
const uint8_t *runner_agent_measurement(const runner_agent *ag);

/* After the launch: serves the channel on CTX's loop (the runner's thread)
 * with connections tagged TAG, and closes the runner's copy of the aTLS
 * socket (the sandbox has it). Returns 0 or a negative errno. */
int runner_agent_started(runner_agent *ag, h2o_context_t *ctx, uint64_t tag);

/* Adds "agent": true, "atls": host path (when served) and "secrets" to a
 * GET /v1/sandboxes ITEM. */
void runner_agent_describe(const runner_agent *ag, json_t *item);

/* Whether the agent reported its workload up, and its last reported error ("" when none). */
bool runner_agent_ready(const runner_agent *ag);
const char *runner_agent_error(const runner_agent *ag);

/* Stops serving the channel, removes the sockets and the directory; accepts NULL. */
void runner_agent_free(runner_agent *ag);

/* Issues evidence for BODY, which names the sandbox; the runner's own
 * POST /v1/evidence. Returns the answer or NULL with ERR. */
typedef json_t *(*runner_issue_fn)(void *userdata, const json_t *body, api_error *err);

/* Answers REQ, which came through AG's channel (httpd_conn_tag()); ISSUE
 * makes evidence. Forwarded calls answer later, from the runner's loop. */
void runner_channel_serve(runner_agent *ag, h2o_req_t *req, runner_issue_fn issue, void *userdata);

/* The forwarder of key-release calls to the api role at API_URL (https,
 * verified with CA_FILE), authenticated with the credential token in
 * TOKEN_FILE, or, when API_ROLE_URL is given (the api's api.roleListen,
 * https://HOST:PORT; NULL or "": none), there over mutual TLS with the
 * runner's role certificate instead (daemon/peer-tls.h): an offload pool of
 * one worker (httpd/offload.h), answers delivered on CTX's loop. A missing
 * token is logged and makes every forward fail with 503. Returns 0 or a
 * negative errno. */
int runner_forward_start(h2o_context_t *ctx, const char *api_url, const char *api_role_url, const char *ca_file,
                         const char *token_file);
/* True while forwarded calls are in flight (thread_busy). */
bool runner_forward_busy(void);
/* Once the loop no longer runs: skips the calls not sent yet, waits for the
 * one being sent, releases everything. */
void runner_forward_stop(void);

static inline void runner_agent_freep(runner_agent **p)
{
    runner_agent_free(*p);
}
