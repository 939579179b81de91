/* First start of a data dir: the bootstrap identities. */
#pragma once

#include "store/store.h"

/* Ensures group `admins`, user `admin` in it, policy `cloister-admins`
 * allowing the group, and credential `admin-bootstrap` whose token is written
 * to TOKEN_PATH (mode 0600). An existing token file is left alone; a missing
 * one gets a fresh token (the old one stops working). Returns 0 or a
 * negative errno. */
int bootstrap_admin(store *s, const char *token_path);

/* The identity of the proxy role, an ordinary API client: user
 * `cloister-proxy` (a workload) with policy `cloister-proxy` attached, which
 * grants nothing (its configuration stream, GET /v1/proxy/config, is served
 * to this identity alone, whatever policies say), and credential
 * `cloister-proxy` whose token is written to TOKEN_PATH (mode 0600), kept and
 * replaced as bootstrap_admin() does. Its user and policy are brought to this
 * version's on every start. Returns 0 or a negative errno. */
int bootstrap_proxy(store *s, const char *token_path);

/* The identity of the runner role, which forwards what an enclave's agent
 * asks the API for over its channel: user `cloister-runner` (a workload)
 * with policy `cloister-runner`, whose one rule allows only `create` on
 * AttestationChallenge (POST /v1/attest/challenge) and `release` on a Key
 * (POST /v1/kms/keys/{name}/release) or a Secret (POST
 * /v1/enclaves/{name}/secret-release), and credential `cloister-runner` whose
 * token is written to TOKEN_PATH (mode 0600), kept and replaced as
 * bootstrap_admin() does. Its user and policy are brought to this version's
 * on every start. Returns 0 or a negative errno. */
int bootstrap_runner(store *s, const char *token_path);
