/* libFuzzer target: the API's request-body decoding (size and depth caps,
 * JSON parsing) followed by schema validation of the document, or of every
 * item of an apply, and the public view the API would return. */
#include <stddef.h>
#include <stdint.h>

#include "httpd/json.h"
#include "resource/resource.h"

static void check(const json_t *doc)
{
    resource_error rerr;
    if (resource_validate(doc, &rerr) == 0)
        json_decref(resource_public_view(doc));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    api_error err;
    json_t *body = api_decode_body((const char *)data, size, &err);
    if (!body)
        return 0;
    json_t *items = json_object_get(body, "items");
    if (json_is_array(items)) {
        size_t i;
        json_t *doc;
        json_array_foreach(items, i, doc) check(doc);
    } else
        check(body);
    json_decref(body);
    return 0;
}
