/* cloisterd: the configuration every role sees, and the role table. */
#pragma once

#include <stdbool.h>

#include "api/api.h"

typedef struct daemon_config {
    bool dev;
    char data_dir[4096];
    char api_listen[256];
    char proxy_listen[256];
    char proxy_http_listen[256];
    char domain[256];
    unsigned api_threads;
    /* paths inside data_dir */
    char ca_cert[4200], ca_key[4200];
    char api_cert[4200], api_key[4200];
    char store_url[4200];
    char admin_token[4200];
} daemon_config;

/* A role: a process the supervisor forks and restarts. MAIN runs in the
 * child with SIGTERM and SIGINT blocked, sets HEALTH->ready once serving,
 * and returns the exit status after a SIGTERM. */
typedef struct role_def {
    const char *name;
    int (*main)(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all);
} role_def;

int role_api_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all);
