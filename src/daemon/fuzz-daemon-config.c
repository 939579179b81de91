/* libFuzzer target: cloisterd's configuration parser (config.c) over any
 * bytes as a YAML file: libyaml's document, the walk over every section
 * (aliases capped), the values' checks and the problem list. */
#include <stddef.h>
#include <stdint.h>

#include "daemon/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static daemon_config cfg; /* large: not on the stack */
    config_problems problems = {0};
    daemon_config_defaults(&cfg);
    daemon_config_parse("fuzz.yaml", (const char *)data, size, &cfg, &problems);
    config_problems_free(&problems);
    return 0;
}
