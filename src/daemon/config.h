/* cloisterd's configuration, from one place: the --dev preset (the
 * defaults), the YAML file of --config over it, and the command line over
 * both. The file's keys are documented in docs/deployment.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "daemon/daemon.h"

#define CONFIG_FILE_MAX (256u * 1024)
#define CONFIG_PROBLEMS_MAX 100

/* The roles in the supervisor's order (cloisterd.c's table). */
#define DAEMON_N_ROLES 5
extern const char *const daemon_role_names[DAEMON_N_ROLES];

/* What is wrong with a configuration: every problem, each one line naming
 * FILE:LINE: KEY: what is wrong (and what to do). */
typedef struct config_problems {
    char **items;
    size_t n;
} config_problems;

void config_problems_free(config_problems *p);

/* Adds one problem (printf-style); past CONFIG_PROBLEMS_MAX only counts. */
void config_problem(config_problems *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Whether S is HOST:PORT with a port from 1 to 65535. */
bool config_valid_listen(const char *s);

/* Fills CFG with the --dev preset: data dir ./cloister-data, API
 * 127.0.0.1:7443, proxy 127.0.0.1:8443, domain localhost, every role, the
 * dev seal, two threads each. */
void daemon_config_defaults(daemon_config *cfg);

/* Applies the YAML text TEXT (LEN bytes) of the file NAME over CFG: every
 * unknown key, bad value, unreadable file and unworkable combination is
 * added to PROBLEMS with the file, line and key. Returns 0 when nothing was
 * wrong, -EINVAL when PROBLEMS got something. */
int daemon_config_parse(const char *name, const char *text, size_t len, daemon_config *cfg,
                        config_problems *problems);

/* daemon_config_parse() of the file PATH (at most CONFIG_FILE_MAX bytes). */
int daemon_config_load(const char *path, daemon_config *cfg, config_problems *problems);
