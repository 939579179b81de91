/* First start of a data dir: the bootstrap identity. */
#pragma once

#include "store/store.h"

/* Ensures group `admins`, user `admin` in it, policy `cloister-admins`
 * allowing the group, and credential `admin-bootstrap` whose token is written
 * to TOKEN_PATH (mode 0600). An existing token file is left alone; a missing
 * one gets a fresh token (the old one stops working). */
int bootstrap_admin(store *s, const char *token_path);
