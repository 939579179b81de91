/* picohttpparser, the parser h2o's HTTP/1 uses: libh2o carries and exports
 * it without installing its header, so its declarations live here (the
 * version h2o 2.2.5 ships). Parsing with the very same code means a checker
 * sees each field exactly where h2o saw it. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len, const char **path,
                      size_t *path_len, int *minor_version, struct phr_header *headers, size_t *num_headers,
                      size_t last_len);
/* The response head in BUF (LEN bytes): as phr_parse_request, for a client
 * (the proxy's upstream connections, src/proxy/upstream.c). */
int phr_parse_response(const char *buf, size_t len, int *minor_version, int *status, const char **msg, size_t *msg_len,
                       struct phr_header *headers, size_t *num_headers, size_t last_len);

/* The decoder's state; zero it to start. Later picohttpparser versions
 * append members: the padding keeps room for them. */
struct phr_chunked_decoder {
    size_t bytes_left_in_chunk;
    char consume_trailer;
    char _hex_count;
    char _state;
    char _reserved[64];
};

/* Decodes the chunked body bytes in BUF (*BUFSZ of them) in place: *BUFSZ
 * becomes the decoded length. Returns -2 when more is needed, -1 on an
 * error, else the bytes left after the end of the body. */
ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);
/* Whether the decoder is inside a chunk's data (a peer closing there cut a
 * chunk short). */
int phr_decode_chunked_is_in_data(struct phr_chunked_decoder *decoder);
