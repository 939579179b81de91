/* Until the audit role exists, events are written to the log as one JSON
 * line each, which is what an operator can collect today. */
#include "audit/event.h"

#include <stdlib.h>

#include "basic/log.h"

void audit_event_emit(const audit_event *ev)
{
    char *details = ev->details ? json_dumps(ev->details, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    log_fields(LOG_LEVEL_INFO, "audit event", "action", ev->action, "user", ev->user ? ev->user : "", "session",
               ev->session ? ev->session : "", "ip", ev->ip ? ev->ip : "", "kind", ev->kind ? ev->kind : "",
               "name", ev->name ? ev->name : "", "outcome", ev->outcome, "details", details ? details : "{}", NULL);
    free(details);
}
