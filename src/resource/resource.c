#include "resource/resource.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "basic/macro.h"
#include "basic/strbuf.h"
#include "resource/path.h"
#include "resource/schema.h"

/* ---- building blocks ---------------------------------------------------- */

#define STRING(...) {.type = SCHEMA_STRING, __VA_ARGS__}
#define ARRAY(item, ...) {.type = SCHEMA_ARRAY, .items = (item), __VA_ARGS__}
#define OBJECT(f, ...) {.type = SCHEMA_OBJECT, .fields = (f), __VA_ARGS__}

static const schema s_text = STRING(.format = FORMAT_TEXT);
static const schema s_short_text = STRING(.format = FORMAT_TEXT, .max_len = 253);
static const schema s_name = STRING(.format = FORMAT_NAME);
static const schema s_names = ARRAY(&s_name);
static const schema s_bool = {.type = SCHEMA_BOOL};
static const schema s_true = {.type = SCHEMA_BOOL, .must_be_true = true};
static const schema s_any = {.type = SCHEMA_ANY};
static const schema s_attrs = {.type = SCHEMA_MAP, .format = FORMAT_TEXT, .items = &s_any,
                               .max_items = 128};
static const schema s_time = STRING(.format = FORMAT_RFC3339, .max_len = 64);
static const schema s_data_key = STRING(.format = FORMAT_DATA_KEY);

/* ---- policies: rules and conditions ------------------------------------- */

static const schema s_condition; /* recursive: defined below */
static const schema s_conditions = ARRAY(&s_condition, .min_items = 1, .max_items = 64);
static const schema_field condition_fields[] = {
    {"match", &s_text, false, NULL},
    {"all", &s_conditions, false, NULL},
    {"any", &s_conditions, false, NULL},
    {"not", &s_condition, false, NULL},
    {"matchAny", &s_true, false, NULL},
    {NULL},
};
static const schema s_condition = OBJECT(condition_fields, .exactly_one = true);

static const char *const effects[] = {"allow", "deny", NULL};
static const schema s_effect = STRING(.values = effects);
static const schema s_priority = {.type = SCHEMA_INT, .min = -4, .max = 4};
static const schema_field rule_fields[] = {
    {"name", &s_short_text, false, NULL},
    {"effect", &s_effect, true, NULL},
    {"priority", &s_priority, false, "0"},
    {"condition", &s_condition, true, NULL},
    {NULL},
};
static const schema s_rule = OBJECT(rule_fields);
static const schema s_rules = ARRAY(&s_rule, .min_items = 1);

static const schema s_policy_text = STRING(.format = FORMAT_TEXT, .max_len = 1024);
static const schema_field policy_fields[] = {
    {"rules", &s_rules, true, NULL},
    {"explanation", &s_policy_text, false, NULL}, /* shown to a denied browser (docs/proxy.md "Error pages") */
    {"remediation", &s_policy_text, false, NULL},
    {NULL},
};
static const schema s_policy_spec = OBJECT(policy_fields);

static const schema_field inline_policy_fields[] = {
    {"name", &s_name, false, NULL},
    {"rules", &s_rules, true, NULL},
    {NULL},
};
static const schema s_inline_policy = OBJECT(inline_policy_fields);
static const schema s_inline_policies = ARRAY(&s_inline_policy, .max_items = 32);

/* ---- User, Group -------------------------------------------------------- */

static const char *const user_types[] = {"human", "workload", NULL};
static const schema s_user_type = STRING(.values = user_types);
static const schema s_email = STRING(.format = FORMAT_EMAIL, .max_len = 254);
/* notify.webhooks: where the user's notifications are POSTed (Standard
 * Webhooks; at most NOTIFY_WEBHOOKS_MAX of src/api/notify.h) */
static const schema s_webhook_url = STRING(.format = FORMAT_HTTP_URL, .max_len = 2048);
static const schema s_webhook_urls = ARRAY(&s_webhook_url, .max_items = 4);
static const schema_field user_notify_fields[] = {
    {"webhooks", &s_webhook_urls, false, NULL},
    {NULL},
};
static const schema s_user_notify = OBJECT(user_notify_fields);
static const schema_field user_fields[] = {
    {"type", &s_user_type, false, "\"human\""},
    {"email", &s_email, false, NULL},
    {"groups", &s_names, false, NULL},
    {"policies", &s_names, false, NULL},
    {"disabled", &s_bool, false, NULL},
    {"attrs", &s_attrs, false, NULL},
    {"notify", &s_user_notify, false, NULL},
    {NULL},
};
static const schema s_user_spec = OBJECT(user_fields);

static const schema_field group_fields[] = {
    {"policies", &s_names, false, NULL},
    {"attrs", &s_attrs, false, NULL},
    {NULL},
};
static const schema s_group_spec = OBJECT(group_fields);

/* ---- Plugins (docs/plugins.md), of a Service and of an Enclave ---------- */

static const char *const plugin_phases[] = {"request_headers", "request_body", "response_headers", "response_body",
                                            "log", "egress", NULL};
static const char *const plugin_failures[] = {"open", "closed", NULL};
static const schema s_plugin_phase = STRING(.values = plugin_phases);
static const schema s_plugin_failure = STRING(.values = plugin_failures);
static const schema s_plugin_when = STRING(.format = FORMAT_TEXT, .max_len = 4096);
static const schema s_plugin_timeout = {.type = SCHEMA_INT, .min = 1, .max = 10000};
static const schema_field plugin_fields[] = {
    {"name", &s_name, true, NULL},        /* the file <plugin dir>/<name>.so */
    {"phase", &s_plugin_phase, true, NULL},
    {"when", &s_plugin_when, false, NULL}, /* CEL on ctx, as a policy's match: the plugin runs when it holds */
    {"failure", &s_plugin_failure, false, "\"closed\""},
    {"timeoutMs", &s_plugin_timeout, false, "200"},
    {"config", &s_any, false, "{}"},      /* handed to the plugin's init as JSON text */
    {NULL},
};

/* A plugin of a Service (any phase but egress) or of an Enclave (egress)
 * whose config serialises within the protocol's cap. */
static int check_plugin_of(const json_t *v, resource_path *path, resource_error *err, bool enclave)
{
    const char *phase = json_string_value(json_object_get(v, "phase"));
    bool egress = phase && strcmp(phase, "egress") == 0;
    const json_t *config = json_object_get(v, "config");
    char *text = config ? json_dumps(config, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    const char *why = NULL, *field = "phase";
    if (enclave && !egress)
        why = "an Enclave's plugins run at its egress: phase must be egress";
    else if (!enclave && egress)
        why = "a Service's plugins run in the proxy: phase egress belongs to an Enclave";
    else if (config && (!text || strlen(text) > 64 * 1024))
        why = "larger than 64 KiB as JSON", field = "config";
    free(text);
    if (!why)
        return 0;
    size_t saved = resource_path_push_key(path, field, strlen(field));
    int r = resource_fail(err, path, "%s", why);
    resource_path_pop(path, saved);
    return r;
}

static int check_service_plugin(const json_t *v, resource_path *path, resource_error *err)
{
    return check_plugin_of(v, path, err, false);
}

static int check_enclave_plugin(const json_t *v, resource_path *path, resource_error *err)
{
    return check_plugin_of(v, path, err, true);
}

static const schema s_service_plugin = OBJECT(plugin_fields, .check = check_service_plugin);
static const schema s_enclave_plugin = OBJECT(plugin_fields, .check = check_enclave_plugin);
static const schema s_service_plugins = ARRAY(&s_service_plugin, .max_items = 16);
static const schema s_enclave_plugins = ARRAY(&s_enclave_plugin, .max_items = 16);

/* ---- Service ------------------------------------------------------------ */

static const schema s_http_url = STRING(.format = FORMAT_HTTP_URL, .max_len = 2048);
static const schema_field upstream_fields[] = {
    {"url", &s_http_url, false, NULL},
    {"enclave", &s_name, false, NULL},
    {"portal", &s_true, false, NULL}, /* the proxy serves the portal app; /v1/ goes to the API (docs/portal.md) */
    {NULL},
};
static const schema s_upstream = OBJECT(upstream_fields, .exactly_one = true);

static const schema s_hostname = STRING(.format = FORMAT_HOSTNAME, .max_len = 253);
static const schema s_hosts = ARRAY(&s_hostname, .max_items = 64);

/* `header` names the header exactly when `as` is header. */
static int check_inject(const json_t *v, resource_path *path, resource_error *err)
{
    const json_t *as = json_object_get(v, "as");
    bool wants_header = as && strcmp(json_string_value(as), "header") == 0;
    bool has_header = json_object_get(v, "header") != NULL;
    if (wants_header == has_header)
        return 0;
    size_t saved = resource_path_push_key(path, "header", STRLEN("header"));
    int r = resource_fail(err, path, wants_header ? "required field missing (as is header)"
                                                  : "only allowed when as is header");
    resource_path_pop(path, saved);
    return r;
}

static const char *const inject_modes[] = {"bearer", "basic", "header", NULL};
static const schema s_inject_as = STRING(.values = inject_modes);
static const schema s_header_name = STRING(.format = FORMAT_HEADER_NAME, .max_len = 256);
static const schema_field inject_fields[] = {
    {"secret", &s_name, true, NULL},
    {"key", &s_data_key, true, NULL},
    {"as", &s_inject_as, false, "\"bearer\""},
    {"header", &s_header_name, false, NULL},
    {NULL},
};
static const schema s_inject = OBJECT(inject_fields, .check = check_inject);

/* request size caps of a Service (the proxy's defaults: 16 MiB body, 64 KiB headers) */
static const schema s_max_body = {.type = SCHEMA_INT, .min = 0, .max = 16 * 1024 * 1024};
static const schema s_max_header_bytes = {.type = SCHEMA_INT, .min = 1024, .max = 64 * 1024};
static const schema_field service_limits_fields[] = {
    {"maxBodyBytes", &s_max_body, false, NULL},
    {"maxHeaderBytes", &s_max_header_bytes, false, NULL},
    {NULL},
};
static const schema s_service_limits = OBJECT(service_limits_fields);

static const schema_field service_fields[] = {
    {"upstream", &s_upstream, true, NULL},
    {"hosts", &s_hosts, false, NULL},
    {"policies", &s_names, false, NULL},
    {"inlinePolicies", &s_inline_policies, false, NULL},
    {"inject", &s_inject, false, NULL},
    {"attrs", &s_attrs, false, NULL},
    {"failClosed", &s_bool, false, NULL},
    {"passAuthorization", &s_bool, false, NULL},
    {"allowPathParameters", &s_bool, false, NULL},
    {"trustTraceContext", &s_bool, false, NULL},
    {"limits", &s_service_limits, false, NULL},
    {"plugins", &s_service_plugins, false, NULL},
    {NULL},
};
static const schema s_service_spec = OBJECT(service_fields);

/* ---- Credential --------------------------------------------------------- */

static const char *const credential_types[] = {"authToken", NULL};
static const schema s_credential_type = STRING(.values = credential_types);
static const schema_field credential_fields[] = {
    {"user", &s_name, true, NULL},
    {"type", &s_credential_type, false, "\"authToken\""},
    {"expiresAt", &s_time, false, NULL},
    {"policies", &s_names, false, NULL},
    {NULL},
};
static const schema s_credential_spec = OBJECT(credential_fields);

/* ---- IdentityProvider --------------------------------------------------- */

static const char *const idp_types[] = {"oidc", NULL};
static const schema s_idp_type = STRING(.values = idp_types);
static const schema s_https_url = STRING(.format = FORMAT_HTTPS_URL, .max_len = 2048);
static const schema s_client_id = STRING(.format = FORMAT_TOKEN, .max_len = 1024);
static const schema s_claim = STRING(.format = FORMAT_TOKEN, .max_len = 253);
static const schema s_scopes = ARRAY(&s_claim, .max_items = 32);
static const schema_field secret_ref_fields[] = {
    {"secret", &s_name, true, NULL},
    {"key", &s_data_key, true, NULL},
    {NULL},
};
static const schema s_secret_ref = OBJECT(secret_ref_fields);
static const schema_field claims_fields[] = {
    {"email", &s_claim, false, NULL},
    {"groups", &s_claim, false, NULL},
    {NULL},
};
static const schema s_claims = OBJECT(claims_fields);
static const schema s_pem_bundle = STRING(.format = FORMAT_TEXT, .max_len = 64 * 1024);
static const schema_field idp_fields[] = {
    {"type", &s_idp_type, true, NULL},
    {"issuer", &s_https_url, true, NULL},
    {"clientId", &s_client_id, true, NULL},
    {"clientSecret", &s_secret_ref, true, NULL},
    {"scopes", &s_scopes, false, NULL},
    {"claims", &s_claims, false, NULL},
    {"createUsers", &s_bool, false, NULL},
    {"ca", &s_pem_bundle, false, NULL}, /* trust anchors of a private provider (PEM); system roots otherwise */
    {NULL},
};
static const schema s_idp_spec = OBJECT(idp_fields);

/* ---- Secret ------------------------------------------------------------- */

static const schema s_secret_value = STRING(.format = FORMAT_TEXT, .allow_empty = true,
                                            .max_len = 64 * 1024);
static const schema s_secret_data = {.type = SCHEMA_MAP, .format = FORMAT_DATA_KEY,
                                     .items = &s_secret_value};
static const schema_field secret_fields[] = {
    {"data", &s_secret_data, true, NULL},
    {NULL},
};
static const schema s_secret_spec = OBJECT(secret_fields);

/* ---- Key (material lives in the kms role only) -------------------------- */

static const char *const key_purposes[] = {"encrypt", "sign", NULL};
static const schema s_key_purpose = STRING(.values = key_purposes);
/* encrypt: aes-256-gcm (the default); sign: ecdsa-p256 (the default) or ed25519 */
static const char *const key_algorithms[] = {"aes-256-gcm", "ecdsa-p256", "ed25519", NULL};
static const schema s_key_algorithm = STRING(.values = key_algorithms);
static const schema_field key_release_fields[] = {
    {"attestationPolicy", &s_name, false, NULL},
    {NULL},
};
static const schema s_key_release = OBJECT(key_release_fields);
static const schema_field key_fields[] = {
    {"purpose", &s_key_purpose, true, NULL},
    {"algorithm", &s_key_algorithm, false, NULL},
    {"release", &s_key_release, false, NULL},
    {NULL},
};
static const schema s_key_spec = OBJECT(key_fields);

/* ---- AttestationPolicy -------------------------------------------------- */

static const char *const evidence_types[] = {"nitro", "sev-snp", "tdx", "sandbox", NULL};
static const schema s_evidence_type = STRING(.values = evidence_types);
static const schema s_evidence_types = ARRAY(&s_evidence_type, .min_items = 1, .max_items = 4);
static const schema s_max_age = {.type = SCHEMA_INT, .min = 1, .max = 86400};
static const schema s_hex_value = STRING(.format = FORMAT_HEX, .max_len = 128);
static const schema s_hex_values = ARRAY(&s_hex_value, .min_items = 1, .max_items = 64);
static const schema s_reference_values = {.type = SCHEMA_MAP, .format = FORMAT_MEASUREMENT,
                                          .items = &s_hex_values, .max_items = 48};
static const schema s_tcb_component = {.type = SCHEMA_INT, .min = 0, .max = 255};
static const schema s_tee_tcb_svn = STRING(.format = FORMAT_HEX, .max_len = 32);
static const schema_field min_tcb_fields[] = {
    {"bootloader", &s_tcb_component, false, NULL}, /* SEV-SNP reported_tcb */
    {"tee", &s_tcb_component, false, NULL},
    {"snp", &s_tcb_component, false, NULL},
    {"microcode", &s_tcb_component, false, NULL},
    {"teeTcbSvn", &s_tee_tcb_svn, false, NULL}, /* TDX, compared byte by byte */
    {NULL},
};
static const schema s_min_tcb = OBJECT(min_tcb_fields);
static const schema_field attestation_policy_fields[] = {
    {"types", &s_evidence_types, true, NULL},
    {"allowSandbox", &s_bool, false, "false"},
    {"allowDebug", &s_bool, false, "false"},
    {"maxAgeSeconds", &s_max_age, false, NULL},
    {"requireNonce", &s_bool, false, "true"},
    {"referenceValues", &s_reference_values, false, NULL},
    {"minTcb", &s_min_tcb, false, NULL},
    {NULL},
};
static const schema s_attestation_policy_spec = OBJECT(attestation_policy_fields);

/* ---- Enclave ------------------------------------------------------------ */

/* min <= max, where an absent field is its default 1. */
static int check_replicas(const json_t *v, resource_path *path, resource_error *err)
{
    const json_t *min = json_object_get(v, "min"), *max = json_object_get(v, "max");
    long long lo = min ? json_integer_value(min) : 1, hi = max ? json_integer_value(max) : 1;
    if (lo <= hi)
        return 0;
    size_t saved = resource_path_push_key(path, "max", STRLEN("max"));
    int r = max ? resource_fail(err, path, "must be at least min (%lld; got %lld)", lo, hi)
                : resource_fail(err, path, "required field missing (min is %lld and max defaults to 1)", lo);
    resource_path_pop(path, saved);
    return r;
}

/* Without `secret`, `key` names a Key, so it must be a resource name; with
 * it, `key` is one of the Secret's data keys. */
static int check_enclave_secret(const json_t *v, resource_path *path, resource_error *err)
{
    const char *key = json_string_value(json_object_get(v, "key"));
    if (json_object_get(v, "secret") || (key && resource_name_valid(key)))
        return 0;
    size_t saved = resource_path_push_key(path, "key", STRLEN("key"));
    int r = resource_fail(err, path, "must name a Key (a DNS-1123 label); to deliver a value of a Secret, "
                                     "set secret to its name and key to its data key");
    resource_path_pop(path, saved);
    return r;
}

/* Two secrets must not write the same file of /run/secrets, and a value of
 * a Secret is released only under the Enclave's attestationPolicy, so one
 * must be named (a Key's own release policy decides for a Key). */
static int check_enclave(const json_t *v, resource_path *path, resource_error *err)
{
    const json_t *secrets = json_object_get(v, "secrets");
    for (size_t i = 1; i < json_array_size(secrets); i++) {
        const char *file = json_string_value(json_object_get(json_array_get(secrets, i), "file"));
        for (size_t j = 0; j < i && file; j++) {
            const char *other = json_string_value(json_object_get(json_array_get(secrets, j), "file"));
            if (!other || strcmp(file, other) != 0)
                continue;
            size_t saved = resource_path_push_key(path, "secrets", STRLEN("secrets"));
            resource_path_push_index(path, i);
            resource_path_push_key(path, "file", STRLEN("file"));
            int r = resource_fail(err, path, "secrets[%zu] already writes /run/secrets/%s", j, file);
            resource_path_pop(path, saved);
            return r;
        }
    }
    for (size_t i = 0; i < json_array_size(secrets) && !json_object_get(v, "attestationPolicy"); i++) {
        if (!json_object_get(json_array_get(secrets, i), "secret"))
            continue;
        size_t saved = resource_path_push_key(path, "attestationPolicy", STRLEN("attestationPolicy"));
        int r = resource_fail(err, path,
                              "required field missing: secrets[%zu] delivers a value of a Secret, which is released "
                              "only to evidence that satisfies the Enclave's AttestationPolicy; name one",
                              i);
        resource_path_pop(path, saved);
        return r;
    }
    return 0;
}

/* An egress entry's host is a lower-case DNS name or an IP literal (IPv6
 * without brackets); the runner checks it again (runner/egress-check.h). */
static int check_egress_entry(const json_t *v, resource_path *path, resource_error *err)
{
    const char *host = json_string_value(json_object_get(v, "host"));
    uint8_t addr[16];
    if (host && (schema_string_matches(FORMAT_HOSTNAME, host, strlen(host)) || inet_pton(AF_INET, host, addr) == 1 ||
                 inet_pton(AF_INET6, host, addr) == 1))
        return 0;
    size_t saved = resource_path_push_key(path, "host", STRLEN("host"));
    int r = resource_fail(err, path, "must be a lower-case DNS name or an IP address (IPv6 without brackets)");
    resource_path_pop(path, saved);
    return r;
}

static const schema s_bundle_path = STRING(.format = FORMAT_ABSOLUTE_PATH, .max_len = 1024);
static const schema s_replica_count = {.type = SCHEMA_INT, .min = 1, .max = RESOURCE_ENCLAVE_REPLICAS_MAX};
static const schema_field replicas_fields[] = {
    {"min", &s_replica_count, false, "1"},
    {"max", &s_replica_count, false, "1"},
    {NULL},
};
static const schema s_replicas = OBJECT(replicas_fields, .check = check_replicas);
static const schema_field enclave_secret_fields[] = {
    {"key", &s_data_key, true, NULL},   /* a Key's name, or with `secret` a data key of that Secret */
    {"secret", &s_name, false, NULL},
    {"file", &s_data_key, true, NULL},  /* written as /run/secrets/<file> */
    {NULL},
};
static const schema s_enclave_secret = OBJECT(enclave_secret_fields, .check = check_enclave_secret);
static const schema s_enclave_secrets = ARRAY(&s_enclave_secret, .max_items = 32);
static const schema s_egress_host = STRING(.format = FORMAT_TEXT, .max_len = 253);
static const schema s_port = {.type = SCHEMA_INT, .min = 1, .max = 65535};
static const schema_field egress_entry_fields[] = {
    {"host", &s_egress_host, true, NULL},
    {"port", &s_port, true, NULL},
    {"tls", &s_bool, false, "false"}, /* true: the tunnel's ClientHello must name host (SNI) */
    {NULL},
};
static const schema s_egress_entry = OBJECT(egress_entry_fields, .check = check_egress_entry);
static const schema s_egress = ARRAY(&s_egress_entry, .max_items = 32);
static const schema s_memory_mib = {.type = SCHEMA_INT, .min = 8, .max = 1024 * 1024};
static const schema s_pids = {.type = SCHEMA_INT, .min = 1, .max = 65536};
static const schema_field enclave_limits_fields[] = {
    {"memoryMiB", &s_memory_mib, false, NULL},
    {"pids", &s_pids, false, NULL},
    {NULL},
};
static const schema s_enclave_limits = OBJECT(enclave_limits_fields);
static const schema s_in_flight_per_replica = {.type = SCHEMA_INT, .min = 1, .max = RESOURCE_SCALING_IN_FLIGHT_MAX};
static const schema s_memory_percent = {.type = SCHEMA_INT, .min = 1, .max = 100};
static const schema s_scaling_after = {.type = SCHEMA_INT, .min = 1, .max = RESOURCE_SCALING_AFTER_MAX};
/* the autoscaler's thresholds (controller/decide.h has the same defaults
 * for an Enclave stored without them) */
static const schema_field enclave_scaling_fields[] = {
    {"inFlightPerReplica", &s_in_flight_per_replica, false, "4"},
    {"memoryPercent", &s_memory_percent, false, "80"},
    {"upAfterSeconds", &s_scaling_after, false, "3"},
    {"downAfterSeconds", &s_scaling_after, false, "15"},
    {NULL},
};
static const schema s_enclave_scaling = OBJECT(enclave_scaling_fields);
static const schema_field enclave_fields[] = {
    {"bundle", &s_bundle_path, true, NULL},
    {"replicas", &s_replicas, false, "{\"min\": 1, \"max\": 1}"},
    {"secrets", &s_enclave_secrets, false, NULL},
    {"attestationPolicy", &s_name, false, NULL},
    {"limits", &s_enclave_limits, false, NULL},
    {"scaling", &s_enclave_scaling, false,
     "{\"inFlightPerReplica\": 4, \"memoryPercent\": 80, \"upAfterSeconds\": 3, \"downAfterSeconds\": 15}"},
    {"egress", &s_egress, false, NULL}, /* allow-only: what the agent's proxy may reach */
    {"plugins", &s_enclave_plugins, false, NULL}, /* egress interceptors, asked by the runner */
    {NULL},
};
static const schema s_enclave_spec = OBJECT(enclave_fields, .check = check_enclave);

/* ---- Workspace and Dataset (confidential analytics) --------------------- */

static const schema s_members = ARRAY(&s_name, .min_items = 1, .max_items = 256);
static const char *const approval_modes[] = {"owners", "all", NULL};
static const schema s_approvals = STRING(.values = approval_modes);
static const schema_field workspace_fields[] = {
    {"members", &s_members, true, NULL},
    {"approvals", &s_approvals, false, "\"owners\""}, /* owners: every owner of a job's inputs; all: every member */
    {"attestationPolicy", &s_name, false, NULL},
    {NULL},
};
static const schema s_workspace_spec = OBJECT(workspace_fields);

/* A column name is an SQL identifier without quoting: [A-Za-z_][A-Za-z0-9_]*. */
static int check_column(const json_t *v, resource_path *path, resource_error *err)
{
    const char *name = json_string_value(json_object_get(v, "name"));
    for (size_t i = 0; name && name[i]; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
        if (!ok) {
            size_t saved = resource_path_push_key(path, "name", STRLEN("name"));
            int r = resource_fail(err, path, "must be a column name: a letter or '_', then letters, digits or '_'");
            resource_path_pop(path, saved);
            return r;
        }
    }
    return 0;
}

/* Column names are unique, compared without case (as SQL does). */
static int check_dataset(const json_t *v, resource_path *path, resource_error *err)
{
    const json_t *cols = json_object_get(v, "schema");
    for (size_t i = 1; i < json_array_size(cols); i++) {
        const char *a = json_string_value(json_object_get(json_array_get(cols, i), "name"));
        for (size_t j = 0; j < i && a; j++) {
            const char *b = json_string_value(json_object_get(json_array_get(cols, j), "name"));
            if (!b || strcasecmp(a, b) != 0)
                continue;
            size_t saved = resource_path_push_key(path, "schema", STRLEN("schema"));
            resource_path_push_index(path, i);
            int r = resource_fail(err, path, "column %s is already schema[%zu]", a, j);
            resource_path_pop(path, saved);
            return r;
        }
    }
    return 0;
}

static const schema s_column_name = STRING(.max_len = 63);
static const char *const column_types[] = {"integer", "real", "text", NULL};
static const schema s_column_type = STRING(.values = column_types);
static const schema_field column_fields[] = {
    {"name", &s_column_name, true, NULL},
    {"type", &s_column_type, true, NULL},
    {NULL},
};
static const schema s_column = OBJECT(column_fields, .check = check_column);
static const schema s_columns = ARRAY(&s_column, .min_items = 1, .max_items = 256);
static const schema_field dataset_fields[] = {
    {"workspace", &s_name, true, NULL},
    {"schema", &s_columns, true, NULL},
    {NULL},
};
static const schema s_dataset_spec = OBJECT(dataset_fields, .check = check_dataset);

/* A Job: a query over datasets of one workspace, run once every required
 * approver signed its digest (src/job/digest.h); the server computes the
 * rest (status). */
#define JOB_QUERY_MAX (64 * 1024)
#define JOB_INPUTS_MAX 16
#define JOB_RECIPIENTS_MAX 64
#define JOB_MAX_RUNS_MAX 1000

/* Refuses a name twice in array FIELD of V (inputs, recipients). */
static int check_unique_names(const json_t *v, const char *field, resource_path *path, resource_error *err)
{
    const json_t *a = json_object_get(v, field);
    for (size_t i = 1; i < json_array_size(a); i++)
        for (size_t j = 0; j < i; j++) {
            if (!json_equal(json_array_get(a, i), json_array_get(a, j)))
                continue;
            size_t saved = resource_path_push_key(path, field, strlen(field));
            resource_path_push_index(path, i);
            int r = resource_fail(err, path, "%s is already %s[%zu]", json_string_value(json_array_get(a, i)),
                                  field, j);
            resource_path_pop(path, saved);
            return r;
        }
    return 0;
}

/* The code point of the UTF-8 sequence at S (jansson holds valid UTF-8
 * only) into *RET; returns the bytes it took. */
static size_t utf8_decode(const unsigned char *s, uint32_t *ret)
{
    if (s[0] < 0x80) {
        *ret = s[0];
        return 1;
    }
    size_t n = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : 2, i = 1;
    uint32_t cp = s[0] & (0x7f >> n);
    for (; i < n && s[i]; i++) /* never past the terminator, whatever the bytes */
        cp = cp << 6 | (s[i] & 0x3f);
    *ret = cp;
    return i;
}

/* Whether CP changes how text around it is shown without being seen: the
 * bidirectional controls and the zero-width characters ("Trojan Source",
 * CVE-2021-42574). */
static bool invisible_format(uint32_t cp)
{
    return (cp >= 0x200b && cp <= 0x200f) || (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069) ||
           cp == 0x061c || cp == 0xfeff;
}

/* Inputs and recipients each named once; a query an approver reads as it
 * runs: no bidirectional controls or invisible characters in it. */
static int check_job(const json_t *v, resource_path *path, resource_error *err)
{
    int r = check_unique_names(v, "inputs", path, err);
    if (r == 0)
        r = check_unique_names(v, "recipients", path, err);
    const unsigned char *q = (const unsigned char *)json_string_value(json_object_get(v, "query"));
    for (size_t i = 0; r == 0 && q && q[i];) {
        uint32_t cp;
        size_t n = utf8_decode(q + i, &cp);
        if (invisible_format(cp)) {
            size_t saved = resource_path_push_key(path, "query", STRLEN("query"));
            r = resource_fail(err, path, "holds U+%04X at byte %zu, a bidirectional control or invisible character: "
                              "what an approver sees would not be what runs", (unsigned)cp, i);
            resource_path_pop(path, saved);
        }
        i += n;
    }
    return r;
}

static const schema s_query = STRING(.format = FORMAT_TEXT, .max_len = JOB_QUERY_MAX);
static const schema s_job_inputs = ARRAY(&s_name, .min_items = 1, .max_items = JOB_INPUTS_MAX);
static const schema s_job_recipients = ARRAY(&s_name, .min_items = 1, .max_items = JOB_RECIPIENTS_MAX);
static const schema s_max_runs = {.type = SCHEMA_INT, .min = 1, .max = JOB_MAX_RUNS_MAX};
static const schema_field job_fields[] = {
    {"workspace", &s_name, true, NULL},
    {"query", &s_query, true, NULL},
    {"inputs", &s_job_inputs, true, NULL},
    {"recipients", &s_job_recipients, false, NULL}, /* absent: every member, filled in by the server */
    {"maxRuns", &s_max_runs, false, "1"},
    {"notAfter", &s_time, false, NULL},
    {NULL},
};
static const schema s_job_spec = OBJECT(job_fields, .check = check_job);

/* ---- Session (written by the auth server only) --------------------------- */

static const char *const auth_methods[] = {"token", "oidc", NULL};
static const schema s_auth_method = STRING(.values = auth_methods);
static const schema s_token_generation = {.type = SCHEMA_INT, .min = 0, .max = LLONG_MAX};
/* bound by uid and token generation (auth/session.h) */
static const schema_field session_fields[] = {
    {"user", &s_name, true, NULL},
    {"userUid", &s_short_text, false, NULL},
    {"credential", &s_name, false, NULL},
    {"credentialUid", &s_short_text, false, NULL},
    {"tokenGeneration", &s_token_generation, false, NULL},
    {"identityProvider", &s_name, false, NULL},
    {"authMethod", &s_auth_method, true, NULL},
    {"expiresAt", &s_time, true, NULL},
    {"clientIp", &s_short_text, false, NULL},
    {NULL},
};
static const schema s_session_spec = OBJECT(session_fields);

/* ---- the kinds ---------------------------------------------------------- */

static const resource_column user_columns[] = {
    {"TYPE", {"spec.type"}, false, "human"},
    {"EMAIL", {"spec.email"}, false, NULL},
    {"GROUPS", {"spec.groups"}, false, NULL},
    {NULL},
};
static const resource_column group_columns[] = {
    {"POLICIES", {"spec.policies"}, false, NULL},
    {NULL},
};
static const resource_column service_columns[] = {
    {"UPSTREAM", {"spec.upstream.url", "spec.upstream.enclave"}, false, NULL},
    {"HOSTS", {"spec.hosts"}, false, NULL},
    {"POLICIES", {"spec.policies"}, false, NULL},
    {NULL},
};
static const resource_column policy_columns[] = {
    {"RULES", {"spec.rules"}, true, NULL},
    {NULL},
};
static const resource_column credential_columns[] = {
    {"USER", {"spec.user"}, false, NULL},
    {"EXPIRES", {"spec.expiresAt"}, false, "never"},
    {NULL},
};
static const resource_column idp_columns[] = {
    {"TYPE", {"spec.type"}, false, NULL},
    {"ISSUER", {"spec.issuer"}, false, NULL},
    {NULL},
};
static const resource_column secret_columns[] = {
    {"KEYS", {"status.keys"}, false, NULL},
    {NULL},
};

static const resource_column attestation_policy_columns[] = {
    {"TYPES", {"spec.types"}, false, NULL},
    {"SANDBOX", {"spec.allowSandbox"}, false, "false"},
    {"MAX-AGE", {"spec.maxAgeSeconds"}, false, "none"},
    {NULL},
};

static const resource_column key_columns[] = {
    {"PURPOSE", {"spec.purpose"}, false, NULL},
    {"ALGORITHM", {"spec.algorithm"}, false, "default"},
    {NULL},
};

static const resource_column enclave_columns[] = {
    {"BUNDLE", {"spec.bundle"}, false, NULL},
    {"READY", {"status.ready"}, false, "0"},
    {"DESIRED", {"status.desired"}, false, "-"},
    {"RESTARTS", {"status.restarts"}, false, "0"},
    {NULL},
};

static const resource_column session_columns[] = {
    {"USER", {"spec.user"}, false, NULL},
    {"METHOD", {"spec.authMethod"}, false, NULL},
    {"EXPIRES", {"spec.expiresAt"}, false, NULL},
    {NULL},
};

static const resource_column workspace_columns[] = {
    {"MEMBERS", {"spec.members"}, false, NULL},
    {"APPROVALS", {"spec.approvals"}, false, "owners"},
    {"RECIPIENT", {"status.recipient"}, false, "-"},
    {NULL},
};

static const resource_column dataset_columns[] = {
    {"WORKSPACE", {"spec.workspace"}, false, NULL},
    {"OWNER", {"status.owner"}, false, "-"},
    {"SIZE", {"status.size"}, false, "-"},
    {"UPLOADED", {"status.uploadedAt"}, false, "-"},
    {NULL},
};

static const resource_column job_columns[] = {
    {"WORKSPACE", {"spec.workspace"}, false, NULL},
    {"STATE", {"status.state"}, false, "-"},
    {"INPUTS", {"spec.inputs"}, false, NULL},
    {"MISSING", {"status.missingApprovers"}, false, "-"},
    {NULL},
};

/* `cloister get -o wide`: what the default columns leave out */
static const resource_column user_wide[] = {
    {"POLICIES", {"spec.policies"}, false, NULL},
    {"DISABLED", {"spec.disabled"}, false, "false"},
    {NULL},
};
static const resource_column service_wide[] = {
    {"INLINE-POLICIES", {"spec.inlinePolicies"}, true, NULL},
    {"INJECT-SECRET", {"spec.inject.secret"}, false, NULL},
    {NULL},
};
static const resource_column credential_wide[] = {
    {"POLICIES", {"spec.policies"}, false, NULL},
    {NULL},
};
static const resource_column idp_wide[] = {
    {"CLIENT-ID", {"spec.clientId"}, false, NULL},
    {"CREATE-USERS", {"spec.createUsers"}, false, "false"},
    {NULL},
};
static const resource_column key_wide[] = {
    {"RELEASE-POLICY", {"spec.release.attestationPolicy"}, false, NULL},
    {NULL},
};
static const resource_column attestation_policy_wide[] = {
    {"DEBUG", {"spec.allowDebug"}, false, "false"},
    {NULL},
};
static const resource_column enclave_wide[] = {
    {"ATTESTATION-POLICY", {"spec.attestationPolicy"}, false, NULL},
    {"SECRETS", {"spec.secrets"}, true, NULL},
    {NULL},
};
static const resource_column workspace_wide[] = {
    {"ATTESTATION-POLICY", {"spec.attestationPolicy"}, false, NULL},
    {NULL},
};
static const resource_column job_wide[] = {
    {"RECIPIENTS", {"spec.recipients"}, false, NULL},
    {"MAX-RUNS", {"spec.maxRuns"}, false, NULL},
    {NULL},
};

static const resource_kind kinds[] = {
    {"User", "users", false, &s_user_spec, user_columns, false, user_wide},
    {"Group", "groups", false, &s_group_spec, group_columns, false, NULL},
    {"Service", "services", false, &s_service_spec, service_columns, false, service_wide},
    {"Policy", "policies", false, &s_policy_spec, policy_columns, false, NULL},
    {"Credential", "credentials", false, &s_credential_spec, credential_columns, false, credential_wide},
    {"IdentityProvider", "identityproviders", false, &s_idp_spec, idp_columns, false, idp_wide},
    {"Secret", "secrets", true, &s_secret_spec, secret_columns, false, NULL},
    {"Key", "keys", false, &s_key_spec, key_columns, false, key_wide},
    {"Session", "sessions", false, &s_session_spec, session_columns, true, NULL},
    {"AttestationPolicy", "attestationpolicies", false, &s_attestation_policy_spec, attestation_policy_columns,
     false, attestation_policy_wide},
    {"Enclave", "enclaves", false, &s_enclave_spec, enclave_columns, false, enclave_wide},
    {"Workspace", "workspaces", false, &s_workspace_spec, workspace_columns, false, workspace_wide},
    {"Dataset", "datasets", false, &s_dataset_spec, dataset_columns, false, NULL},
    {"Job", "jobs", false, &s_job_spec, job_columns, false, job_wide},
};

/* ---- the document around the spec -------------------------------------- */

static const char *const api_versions[] = {RESOURCE_API_VERSION, NULL};
static const schema s_api_version = STRING(.values = api_versions);
static const schema s_kind_name = STRING(.max_len = 64);
static const schema s_label_value = STRING(.format = FORMAT_TEXT, .allow_empty = true,
                                           .max_len = 253);
static const schema s_labels = {.type = SCHEMA_MAP, .format = FORMAT_LABEL_KEY,
                                .items = &s_label_value, .max_items = RESOURCE_LABELS_MAX};
static const schema s_server_text = STRING(.max_len = 128);
static const schema_field metadata_fields[] = {
    {"name", &s_name, true, NULL},
    {"labels", &s_labels, false, NULL},
    {"uid", &s_server_text, false, NULL},
    {"resourceVersion", &s_server_text, false, NULL},
    {"createdAt", &s_time, false, NULL},
    {"updatedAt", &s_time, false, NULL},
    {NULL},
};
static const schema s_metadata = OBJECT(metadata_fields);

/* spec is checked next, against its kind's schema; status is the server's
 * and ignored (only the depth cap applies). */
static const schema_field document_fields[] = {
    {"apiVersion", &s_api_version, true, NULL},
    {"kind", &s_kind_name, true, NULL},
    {"metadata", &s_metadata, true, NULL},
    {"spec", NULL, false, NULL},
    {"status", NULL, false, NULL},
    {NULL},
};
static const schema s_document = OBJECT(document_fields);

const resource_kind *resource_kind_find(const char *name)
{
    for (size_t i = 0; i < ELEMENTSOF(kinds); i++)
        if (strcasecmp(name, kinds[i].kind) == 0 || strcasecmp(name, kinds[i].plural) == 0)
            return &kinds[i];
    return NULL;
}

const resource_kind *resource_kind_get(size_t i)
{
    return i < ELEMENTSOF(kinds) ? &kinds[i] : NULL;
}

bool resource_name_valid(const char *name)
{
    return schema_string_matches(FORMAT_NAME, name, strlen(name));
}

bool resource_data_key_valid(const char *key)
{
    return schema_string_matches(FORMAT_DATA_KEY, key, strlen(key));
}

/* Resolves the document's kind; the Kind must be spelled exactly. */
static int document_kind(const json_t *doc, resource_path *path, resource_error *err,
                         const resource_kind **ret)
{
    const char *name = json_string_value(json_object_get(doc, "kind"));
    const resource_kind *k = resource_kind_find(name);
    size_t saved = resource_path_push_key(path, "kind", STRLEN("kind"));
    char q[80];
    int r = 0;
    if (!k) {
        char list[256];
        strbuf b;
        strbuf_init_static(&b, list, sizeof(list));
        for (size_t i = 0; i < ELEMENTSOF(kinds); i++)
            strbuf_printf(&b, "%s%s", i ? ", " : "", kinds[i].kind);
        r = resource_fail(err, path, "unknown kind %s; known kinds are: %s",
                          quote_for_message(name, q, sizeof(q)), list);
    } else if (strcmp(name, k->kind) != 0)
        r = resource_fail(err, path, "must be \"%s\" (kinds are case-sensitive; got %s)", k->kind,
                          quote_for_message(name, q, sizeof(q)));
    resource_path_pop(path, saved);
    if (r == 0)
        *ret = k;
    return r;
}

int resource_validate(const json_t *doc, resource_error *err)
{
    resource_path path;
    resource_path_init(&path);
    if (!json_is_object(doc))
        return resource_fail(err, &path, "a document must be an object");
    int r = schema_check_depth(doc, 1, RESOURCE_MAX_DEPTH, &path, err);
    if (r < 0)
        return r;
    r = schema_validate(&s_document, doc, &path, err);
    if (r < 0)
        return r;
    const resource_kind *k = NULL;
    r = document_kind(doc, &path, err, &k);
    if (r < 0)
        return r;
    /* An absent spec is an empty one, so its required fields are named. */
    json_auto_t *empty = NULL;
    const json_t *spec = json_object_get(doc, "spec");
    if (!spec) {
        spec = empty = json_object();
        if (!empty)
            return -ENOMEM;
    }
    resource_path_push_key(&path, "spec", STRLEN("spec"));
    return schema_validate(k->spec, spec, &path, err);
}

int resource_apply_defaults(json_t *doc)
{
    const resource_kind *k = NULL;
    const char *name = json_string_value(json_object_get(doc, "kind"));
    if (name)
        k = resource_kind_find(name);
    if (!k)
        return -EINVAL;
    json_t *spec = json_object_get(doc, "spec");
    if (!spec) {
        spec = json_object();
        if (!spec || json_object_set_new(doc, "spec", spec) < 0)
            return -ENOMEM;
    }
    return schema_apply_defaults(k->spec, spec);
}

/* qsort() comparator of C strings. */
static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* status.keys of a write-only document: the sorted names of spec.data. */
static json_t *sorted_keys(const json_t *data)
{
    size_t n = json_object_size(data), i = 0;
    _cleanup_free_ const char **names = calloc(n ? n : 1, sizeof(*names));
    json_auto_t *keys = json_array();
    if (!names || !keys)
        return NULL;
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)data, key, value)
        names[i++] = key;
    qsort(names, n, sizeof(*names), compare_strings);
    for (i = 0; i < n; i++)
        if (json_array_append_new(keys, json_string(names[i])) < 0)
            return NULL;
    return TAKE_PTR(keys);
}

json_t *resource_public_view(const json_t *doc)
{
    if (!json_is_object(doc))
        return NULL;
    json_auto_t *view = json_deep_copy(doc);
    if (!view)
        return NULL;
    const char *name = json_string_value(json_object_get(doc, "kind"));
    const resource_kind *k = name ? resource_kind_find(name) : NULL;
    if (!k || !k->write_only_spec)
        return TAKE_PTR(view);

    json_t *keys = sorted_keys(json_object_get(json_object_get(doc, "spec"), "data"));
    if (!keys)
        return NULL;
    json_t *status = json_object_get(view, "status");
    if (!json_is_object(status)) {
        status = json_object();
        if (!status || json_object_set_new(view, "status", status) < 0) {
            json_decref(keys);
            return NULL;
        }
    }
    if (json_object_set_new(status, "keys", keys) < 0 ||
        json_object_set_new(view, "spec", json_object()) < 0)
        return NULL;
    return TAKE_PTR(view);
}
