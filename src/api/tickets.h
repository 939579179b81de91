/* Single-use records the api replicas share through the store: a login in
 * progress (OIDC, handlers-oidc.c), a passkey ceremony
 * (handlers-passkeys.c). A record is found by a secret key only its holder
 * knows (a state, a code, a challenge): it is named by the key's SHA-256,
 * its content sealed (api/sealed.h) bound to that name, and taken by a
 * delete that compares its resourceVersion, so it is used once across
 * every replica. Records past their time are refused and swept (at most
 * once per API_TICKET_SWEEP_EVERY_S per process and kind), and at most
 * MAX_LIVE kept, the oldest removed first. Each kind is internal: no API
 * route reads it. */
#pragma once

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/server.h"

#define API_TICKET_SWEEP_EVERY_S 30

typedef struct api_ticket_kind {
    const char *kind;       /* the store's kind, e.g. "PendingLogin" */
    const char *seal_label; /* the label of its sealing key (api_seal_key()) */
    int64_t ttl_s;          /* how long a record is good for */
    size_t max_live;        /* records kept at most */
    size_t content_max;     /* bytes of a record's content */
    _Atomic int64_t swept;  /* when this process last swept (0 at first) */
} api_ticket_kind;

/* Keeps CONTENT (borrowed) under KEY (CLASS, one letter, keeps keys of
 * different uses apart), made at CREATED (unix seconds). Returns 0 or a
 * negative errno (-ENOKEY when the server has no handoff key). */
int api_ticket_put(api_server *srv, api_ticket_kind *k, char class, const char *key, int64_t created,
                   const json_t *content);
/* Takes the live record of KEY and CLASS: its content (new reference; the
 * caller wipes what it holds secret) into *RET. Returns 0, -ENOENT when
 * there is none (unknown, taken, by another replica too, or expired), or a
 * negative errno. */
int api_ticket_take(api_server *srv, api_ticket_kind *k, char class, const char *key, json_t **ret);
/* Copies string member NAME of a record's content V into DST (SIZE bytes);
 * false when it is missing or does not fit. */
bool api_ticket_string(const json_t *v, const char *name, char *dst, size_t size);
/* Wipes the strings of a record's content V (and of the objects it holds),
 * then releases it; accepts NULL. */
void api_ticket_content_free(json_t *v);
