/* Sending JSON that carries secrets (plaintexts, data keys) from an h2o
 * handler: the body lives in the request's pool and is wiped when the
 * request is done. */
#pragma once

#include <h2o.h>
#include <jansson.h>

/* Sends VALUE (borrowed) as a 200 JSON response; the serialised body is
 * wiped when the request's memory is released. */
void kms_send_json_wiped(h2o_req_t *req, const json_t *value);
