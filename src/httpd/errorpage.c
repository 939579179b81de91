/* The browser pages of the proxy and the API (see errorpage.h). */
#include "httpd/errorpage.h"

#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "basic/encoding.h"
#include "basic/macro.h"
#include "httpd/json.h"

/* The page's one style; the CSP allows exactly this text by its hash. */
static const char page_style[] =
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}"
    "main{max-width:40em;margin:4em auto;padding:2em;background:#fff;border-radius:8px;"
    "box-shadow:0 1px 3px rgba(0,0,0,.15)}"
    "h1{font-size:1.5em;margin-top:0}h2{font-size:1em;margin-bottom:.2em}"
    ".meta{color:#5c6370;font-size:.875em;border-top:1px solid #e3e5e8;padding-top:1em;margin-top:2em}"
    "code{font-family:ui-monospace,monospace;word-break:break-all}"
    "button{font:inherit;padding:.4em 1.2em;cursor:pointer}";

static pthread_once_t csp_once = PTHREAD_ONCE_INIT;
static char csp[256];

static void csp_init(void)
{
    uint8_t digest[SHA256_DIGEST_LENGTH];
    char b64[64];
    SHA256((const uint8_t *)page_style, sizeof(page_style) - 1, digest);
    base64_encode(digest, sizeof(digest), b64, false);
    snprintf(csp, sizeof(csp),
             "default-src 'none'; style-src 'sha256-%s'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
             b64);
}

const char *error_page_csp(void)
{
    pthread_once(&csp_once, csp_init);
    return csp;
}

bool error_page_wanted(const h2o_req_t *req)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_ACCEPT, -1);
    if (i < 0)
        return false;
    h2o_iovec_t v = req->headers.entries[i].value;
    size_t n = 0;
    while (n < v.len && (v.base[n] == ' ' || v.base[n] == '\t'))
        n++;
    static const char html[] = "text/html";
    if (v.len - n < sizeof(html) - 1 || strncasecmp(v.base + n, html, sizeof(html) - 1) != 0)
        return false;
    n += sizeof(html) - 1;
    return n == v.len || v.base[n] == ',' || v.base[n] == ';' || v.base[n] == ' ' || v.base[n] == '\t';
}

/* The heading of a page of STATUS without its own title. */
static const char *title_of(int status)
{
    switch (status) {
    case 400: return "Bad request";
    case 401: return "Sign-in required";
    case 403: return "Access denied";
    case 404: return "Not found";
    case 405: return "Method not allowed";
    case 413: return "Request too large";
    case 421: return "Wrong address";
    case 429: return "Too many requests";
    case 502: return "The service could not be reached";
    case 503: return "The service is unavailable";
    case 504: return "The service did not answer in time";
    default: return status >= 500 ? "Something went wrong" : "The request could not be served";
    }
}

/* The entity byte C is written as, or NULL when it stays; control bytes
 * other than tab and newline become '?'. */
static const char *escape_of(unsigned char c)
{
    switch (c) {
    case '&': return "&amp;";
    case '<': return "&lt;";
    case '>': return "&gt;";
    case '"': return "&quot;";
    case '\'': return "&#39;";
    case '\t': case '\n': return NULL;
    default: return c < 0x20 || c == 0x7f ? "?" : NULL;
    }
}

/* Appends S HTML-escaped (for text and attribute values alike). */
static int append_escaped(strbuf *out, const char *s)
{
    const char *run = s;
    for (; *s; s++) {
        const char *rep = escape_of((unsigned char)*s);
        if (!rep)
            continue;
        int e = strbuf_append(out, run, (size_t)(s - run));
        if (e == 0)
            e = strbuf_append(out, rep, strlen(rep));
        if (e < 0)
            return e;
        run = s + 1;
    }
    return strbuf_append(out, run, (size_t)(s - run));
}

/* Appends the literal text S. */
static int append(strbuf *out, const char *s)
{
    return strbuf_append(out, s, strlen(s));
}

/* Appends <p>TEXT</p> (escaped) under the heading H when TEXT is set. */
static int append_section(strbuf *out, const char *h, const char *text)
{
    if (!text || !*text)
        return 0;
    int e = append(out, "<h2>");
    if (e == 0)
        e = append(out, h);
    if (e == 0)
        e = append(out, "</h2><p>");
    if (e == 0)
        e = append_escaped(out, text);
    return e == 0 ? append(out, "</p>") : e;
}

int error_page_render(const error_page *p, strbuf *out)
{
    const char *title = p->title ? p->title : title_of(p->status);
    int e = append(out, "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>");
    if (e == 0)
        e = append_escaped(out, title);
    if (e == 0)
        e = append(out, " · Cloister</title><style>");
    if (e == 0)
        e = append(out, page_style);
    if (e == 0)
        e = append(out, "</style></head><body><main><h1>");
    if (e == 0)
        e = append_escaped(out, title);
    if (e == 0)
        e = append(out, "</h1><p>");
    if (e == 0)
        e = append_escaped(out, p->message ? p->message : "");
    if (e == 0)
        e = append(out, "</p>");
    if (e == 0)
        e = append_section(out, "Why", p->explanation);
    if (e == 0)
        e = append_section(out, "What you can do", p->remediation);
    if (e == 0 && p->form_action && p->form_label) {
        e = append(out, "<form method=\"post\" action=\"");
        if (e == 0)
            e = append_escaped(out, p->form_action);
        if (e == 0)
            e = append(out, "\"><button type=\"submit\">");
        if (e == 0)
            e = append_escaped(out, p->form_label);
        if (e == 0)
            e = append(out, "</button></form>");
    }
    if (e == 0 && p->link_url && p->link_label &&
        (strncasecmp(p->link_url, "https://", 8) == 0 || strncasecmp(p->link_url, "http://", 7) == 0)) {
        e = append(out, "<p><a rel=\"noreferrer\" href=\"");
        if (e == 0)
            e = append_escaped(out, p->link_url);
        if (e == 0)
            e = append(out, "\">");
        if (e == 0)
            e = append_escaped(out, p->link_label);
        if (e == 0)
            e = append(out, "</a></p>");
    }
    if (e == 0)
        e = strbuf_printf(out, "<p class=\"meta\">HTTP %d", p->status);
    if (e == 0 && p->request_id) {
        e = append(out, " · request id <code>");
        if (e == 0)
            e = append_escaped(out, p->request_id);
        if (e == 0)
            e = append(out, "</code> (give it to your administrator)");
    }
    if (e == 0 && p->signout_url) {
        e = append(out, " · <a href=\"");
        if (e == 0)
            e = append_escaped(out, p->signout_url);
        if (e == 0)
            e = append(out, "\">Sign out</a>");
    }
    return e == 0 ? append(out, "</p></main></body></html>\n") : e;
}

h2o_iovec_t error_page_prepare(h2o_req_t *req, const error_page *p)
{
    strbuf page;
    strbuf_init(&page, ERROR_PAGE_MAX);
    int e = error_page_render(p, &page);
    h2o_iovec_t body = e == 0 ? h2o_strdup(&req->pool, page.data, page.len) : h2o_iovec_init(NULL, 0);
    strbuf_free(&page);
    h2o_headers_t *h = &req->res.headers;
    req->res.status = body.base ? p->status : 500;
    req->res.reason = http_reason(req->res.status);
    if (!body.base) {
        h2o_add_header(&req->pool, h, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/plain; charset=utf-8"));
        body = h2o_iovec_init(H2O_STRLIT("out of memory\n"));
    } else
        h2o_add_header(&req->pool, h, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/html; charset=utf-8"));
    const char *policy = error_page_csp();
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("content-security-policy"), 0, NULL, policy, strlen(policy));
    h2o_add_header(&req->pool, h, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("x-content-type-options"), 0, NULL, H2O_STRLIT("nosniff"));
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("x-frame-options"), 0, NULL, H2O_STRLIT("DENY"));
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("referrer-policy"), 0, NULL, H2O_STRLIT("no-referrer"));
    req->res.content_length = body.len;
    return body;
}

void error_page_send(h2o_req_t *req, const error_page *p)
{
    static h2o_generator_t generator = {NULL, NULL};
    h2o_iovec_t body = error_page_prepare(req, p);
    h2o_start_response(req, &generator);
    bool head = h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"));
    h2o_send(req, head ? NULL : &body, head ? 0 : 1, H2O_SEND_STATE_FINAL);
}
