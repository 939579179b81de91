/* /v1/notifications: a user's own notifications (notify.h). No policy is
 * needed and none gives more: every caller sees, watches and marks read
 * their own notifications only, sets their own webhook URLs and gets their
 * own webhook signing secret, as they see their own sessions. */
#pragma once

#include "api/request.h"

/* Most ids one POST /v1/notifications/read marks, and the most bytes of
 * its body. */
#define NOTIFY_READ_IDS_MAX 500
#define NOTIFY_READ_BODY_MAX (32 * 1024)
/* The most bytes of a PUT /v1/notifications/webhooks body. */
#define NOTIFY_WEBHOOKS_BODY_MAX (16 * 1024)

/* GET /v1/notifications[?unread=1][&watch=1[&resourceVersion=N]],
 * POST /v1/notifications/read {ids}, GET|PUT /v1/notifications/webhooks
 * {webhooks: [url]}, POST /v1/notifications/webhook-secret[?rotate=1]. */
int api_handle_notifications(api_request *r, const char *rest, size_t rest_len, api_error *err);
