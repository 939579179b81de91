/* The audit event interface: every control-plane write, auth event, key
 * operation and access decision is reported through audit_event_emit(). It
 * never blocks the caller for long and never fails the caller's operation;
 * where events go is the audit component's business. Never put a secret in
 * an event. */
#pragma once

#include <jansson.h>

typedef struct audit_event {
    const char *action;  /* "resource.create", "auth.login", "kms.encrypt", ... */
    const char *user;    /* the actor; NULL when unknown */
    const char *session;
    const char *ip;
    const char *kind;    /* the resource acted on; NULL when none */
    const char *name;
    const char *outcome; /* "success", "failure" or "denied" */
    json_t *details;     /* borrowed, may be NULL */
} audit_event;

/* Records EV. Safe from any thread. */
void audit_event_emit(const audit_event *ev);
