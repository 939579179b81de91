/* Feeds arbitrary bytes to manifest_parse(), validates every document,
 * prints each as YAML and checks that parsing the YAML gives it back. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "basic/strbuf.h"
#include "resource/manifest.h"
#include "resource/resource.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    _cleanup_(manifest_free) manifest m = {};
    resource_error err;
    if (manifest_parse((const char *)data, size, &m, &err) < 0)
        return 0;
    for (size_t i = 0; i < m.n_docs; i++) {
        if (resource_validate(m.docs[i].value, &err) < 0)
            (void)manifest_field_line((const char *)data, size, &m, i, err.path);
        json_t *view = resource_public_view(m.docs[i].value);
        json_decref(view);

        _cleanup_strbuf_ strbuf yaml;
        strbuf_init(&yaml, 64u << 20);
        if (yaml_emit_json(m.docs[i].value, &yaml) < 0)
            abort();
        _cleanup_(manifest_free) manifest again = {};
        if (manifest_parse(yaml.data, yaml.len, &again, &err) < 0 || again.n_docs != 1 ||
            !json_equal(again.docs[0].value, m.docs[i].value))
            abort();
    }
    return 0;
}
