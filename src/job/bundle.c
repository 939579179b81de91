/* Finding the job engine's bundle (see bundle.h). */
#include "job/bundle.h"

#include <errno.h>
#include <stdbool.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/macro.h"

/* Whether DIR holds enclave.yaml; its real path in OUT when it does. */
static bool is_bundle(const char *dir, char *out, size_t size)
{
    char yaml[PATH_MAX + 16], real[PATH_MAX];
    snprintf(yaml, sizeof(yaml), "%s/enclave.yaml", dir);
    if (access(yaml, R_OK) < 0 || !realpath(dir, real) || strlen(real) >= size)
        return false;
    strcpy(out, real);
    return true;
}

int job_bundle_locate(char *out, size_t size)
{
    const char *env = getenv("CLOISTER_JOB_BUNDLE");
    if (env && *env)
        return env[0] == '/' && is_bundle(env, out, size) ? 0 : -ENOENT;
    char self[PATH_MAX], candidate[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return -ENOENT;
    self[n] = 0;
    const char *dir = dirname(self);
    static const char *const tries[] = {"cloister-job-bundle", "../libexec/cloister/job-bundle", "../job/bundle"};
    for (size_t i = 0; i < ELEMENTSOF(tries); i++) {
        snprintf(candidate, sizeof(candidate), "%s/%s", dir, tries[i]);
        if (is_bundle(candidate, out, size))
            return 0;
    }
    return -ENOENT;
}
