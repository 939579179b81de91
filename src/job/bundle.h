/* Where the job engine's measured bundle is (docs/analytics.md "The
 * engine's bundle"): a directory holding enclave.yaml and cloister-job, whose
 * `cloister enclave measure` is the engine PCR0 every job digest names. */
#pragma once

#include <stddef.h>

/* The path inside the sandbox where the agent writes the manifest: the
 * bundle's enclave.yaml runs `/app/cloister-job --manifest` on it. */
#define JOB_MANIFEST_SANDBOX_PATH "/tmp/job/manifest.json"

/* Finds the bundle: $CLOISTER_JOB_BUNDLE, else cloister-job-bundle next to
 * this executable, else ../libexec/cloister/job-bundle from it (meson
 * install), else ../job/bundle from it (the build tree: src/daemon, src/cli).
 * A candidate counts only when it holds enclave.yaml. Writes its absolute
 * path to OUT; -ENOENT when there is none (or it does not fit SIZE). */
int job_bundle_locate(char *out, size_t size);
