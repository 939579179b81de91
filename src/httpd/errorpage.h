/* The HTML pages the proxy and the API answer a browser with (errors, the
 * sign-out pages): one small self-contained document, no external resource
 * and no script, its one style allowed by hash in a strict
 * Content-Security-Policy. Everything a page echoes is HTML-escaped.
 *
 * Whether a request gets HTML is decided by error_page_wanted(): the first
 * media range of its Accept header is text/html (what browsers send when
 * they navigate); API clients, curl and tests keep their JSON. */
#pragma once

#include <h2o.h>
#include <stdbool.h>

#include "basic/strbuf.h"

#define ERROR_PAGE_MAX (64 * 1024) /* bytes of a rendered page */

/* What a page shows; every string may be NULL but MESSAGE, and is borrowed. */
typedef struct error_page {
    int status;              /* the HTTP status answered (200 for the sign-out pages) */
    const char *title;       /* the heading; NULL: a human name of STATUS ("Access denied") */
    const char *message;     /* the human reason */
    const char *explanation; /* the deciding Policy's spec.explanation */
    const char *remediation; /* the deciding Policy's spec.remediation */
    const char *request_id;
    const char *signout_url; /* a "Sign out" link */
    const char *form_action; /* a POST form with one button labelled FORM_LABEL (no script needed) */
    const char *form_label;
    const char *link_url;    /* one more link, labelled LINK_LABEL (http(s) URLs only; others are dropped) */
    const char *link_label;
} error_page;

/* Whether REQ asks for HTML first: the first media range of its Accept
 * header is text/html. */
bool error_page_wanted(const h2o_req_t *req);
/* Appends the page P to OUT. Returns 0 or -E2BIG/-ENOMEM (strbuf's). */
int error_page_render(const error_page *p, strbuf *out);
/* The Content-Security-Policy value of every page (a static string). */
const char *error_page_csp(void);
/* Sets REQ's response to page P (status, headers as error_page_send(), the
 * length) without starting it; returns the body (from REQ's pool). */
h2o_iovec_t error_page_prepare(h2o_req_t *req, const error_page *p);
/* Answers REQ with page P: P->status, text/html, the CSP, no-store,
 * nosniff, no framing, no referrer, a known length. Falls back to a plain
 * 500 when the page cannot be made. */
void error_page_send(h2o_req_t *req, const error_page *p);
