/* Builtin functions defined outside cel-funcs.c, registered in its table.
 * Each follows cel_fn: arguments are evaluated and free of errors and
 * unknowns; the result may be an error value. */
#pragma once

#include "cel/cel-internal.h"

#define CEL_FN(name) cel_value name(ev *e, const node *n, cel_value *a, size_t na)

/* cel-time.c */
CEL_FN(cel_fn_timestamp);
CEL_FN(cel_fn_duration);
CEL_FN(cel_fn_time_get);   /* getFullYear, getHours, ... on timestamps and durations */

/* cel-strings.c: the strings extension */
CEL_FN(cel_fn_char_at);
CEL_FN(cel_fn_index_of);
CEL_FN(cel_fn_last_index_of);
CEL_FN(cel_fn_lower_ascii);
CEL_FN(cel_fn_upper_ascii);
CEL_FN(cel_fn_replace);
CEL_FN(cel_fn_split);
CEL_FN(cel_fn_substring);
CEL_FN(cel_fn_trim);
CEL_FN(cel_fn_join);
CEL_FN(cel_fn_quote);
CEL_FN(cel_fn_format);
CEL_FN(cel_fn_reverse);

/* cel-net.c: the network extension */
CEL_FN(cel_fn_ip);           /* ip(string) and cidr.ip() */
CEL_FN(cel_fn_cidr);
CEL_FN(cel_fn_is_ip);
CEL_FN(cel_fn_ip_is_canonical);
CEL_FN(cel_fn_ip_family);
CEL_FN(cel_fn_ip_predicate); /* isUnspecified, isLoopback, ... by name */
CEL_FN(cel_fn_contains_ip);
CEL_FN(cel_fn_contains_cidr);
CEL_FN(cel_fn_cidr_prefix_length);
CEL_FN(cel_fn_cidr_masked);
/* string() of an ip or cidr value */
cel_value cel_net_to_string(ev *e, const cel_value *v);
