/* The portal's static files (docs/portal.md): where the built app is and how
 * a file of it is answered, with the headers that hold the page to its
 * Content-Security-Policy. The proxy serves them for a Service whose
 * upstream is {portal: true} (src/proxy/portal.c). */
#pragma once

#include <h2o.h>
#include <stdbool.h>
#include <stddef.h>

/* The Content-Security-Policy of every portal file: scripts, styles and
 * connections from the portal's own origin only, no inline script, no
 * framing, no <base>, forms posted only to itself. */
#define PORTAL_CSP                                                                                                    \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "            \
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

/* The directory of the built portal (holding index.html) into OUT (SIZE):
 * $CLOISTER_PORTAL_DIR (absolute), else beside this executable:
 * ../share/cloister/portal (installed) or ../../portal (the build tree).
 * Returns 0 or -ENOENT (none: the portal answers 503 saying how to build it). */
int portal_dir_locate(char *out, size_t size);

/* Whether PATH (LEN bytes, the normalised path without the query) names a
 * portal file: "/" (index.html) or one name of lower-case letters, digits,
 * '-' and '.' not starting with '.'; the file's name into OUT (SIZE). */
bool portal_file_name(const char *path, size_t len, char *out, size_t size);

/* Answers REQ with the file NAME (portal_file_name()) of the portal in DIR
 * and the security headers (CSP, nosniff, no referrer, no framing; the
 * page is revalidated, the script and style too: they keep their names
 * across builds). Returns 0 (answered), or -ENOENT when there is no such
 * file (REQ unanswered). */
int portal_send_file(h2o_req_t *req, const char *dir, const char *name);
