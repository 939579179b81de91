/* completion and version: a shell completion script generated from the
 * command table, and the versions of the client and of the server. */
#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/strbuf.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "resource/resource.h"

/* Options the table's synopses name taking a file, completed as paths. */
#define FILE_OPTIONS "-f|--filename|--ca|--file|--evidence|--cert|--roots|--crl|--bundle|--query-file|--out|-i"
/* What commands, subcommands and long options are spelt with. */
#define WORD_CHARS "abcdefghijklmnopqrstuvwxyz0123456789-"
/* Options whose value is not a positional argument. */
#define VALUE_OPTIONS "-o|--output|--server|--ca|-f|--filename"

/* Appends to OUT (space-separated, each once) the words of a synopsis: its
 * options (--long and -x) when OPTIONS, else its subcommands (the first
 * word of the synopsis and of each alternative after a lone "|", split at
 * '|', lower-case words only). */
static void synopsis_words(const char *synopsis, bool options, strbuf *out)
{
    char word[64];
    const char *p = synopsis;
    bool first = true, after_bar = false;
    while (*p) {
        p += strspn(p, " \t\n");
        size_t n = strcspn(p, " \t\n");
        if (n == 0)
            break;
        char token[256];
        snprintf(token, sizeof(token), "%.*s", (int)MIN(n, sizeof(token) - 1), p);
        p += n;
        if (options) {
            for (const char *t = token; (t = strchr(t, '-'));) {
                bool starts = t == token || strchr("[|", t[-1]);
                size_t len = 1; /* of "--long" or "-x"; 1: not an option */
                if (t[1] == '-' && t[2] >= 'a' && t[2] <= 'z')
                    len = 2 + strspn(t + 2, WORD_CHARS);
                else if (t[1] >= 'a' && t[1] <= 'z' && (t[2] == 0 || !strchr(WORD_CHARS, t[2])))
                    len = 2;
                /* OUT starts with a space (the caller's), so " -x " finds one already there */
                if (starts && len > 1 && len < sizeof(word) - 2) {
                    snprintf(word, sizeof(word), " %.*s ", (int)len, t);
                    if (!out->data || !strstr(out->data, word))
                        strbuf_printf(out, "%.*s ", (int)len, t);
                }
                t += len;
            }
        } else if (first || after_bar) {
            char *save = NULL;
            for (char *w = strtok_r(token, "|", &save); w; w = strtok_r(NULL, "|", &save))
                if (w[0] >= 'a' && w[0] <= 'z' && strspn(w, WORD_CHARS) == strlen(w))
                    strbuf_printf(out, "%s ", w);
        }
        first = false;
        after_bar = strcmp(token, "|") == 0;
    }
}

/* The bash function: commands, kinds, and each command's subcommands and
 * options, all from the command table. */
static void bash_function(FILE *f)
{
    const cli_command *cmd;
    const resource_kind *k;
    fputs("_cloister() {\n"
          "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n"
          "    local cmd='' cmd_at=0 i\n"
          "    for ((i = 1; i < COMP_CWORD; i++)); do\n"
          "        case ${COMP_WORDS[i]} in\n"
          "        --server|--ca|-o|--output) ((i++)) ;;\n"
          "        -*) ;;\n"
          "        *) cmd=${COMP_WORDS[i]}; cmd_at=$i; break ;;\n"
          "        esac\n"
          "    done\n"
          "    case $prev in\n"
          "    -o|--output) COMPREPLY=($(compgen -W 'json yaml wide name' -- \"$cur\")); return ;;\n"
          "    " FILE_OPTIONS ") COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n"
          "    esac\n"
          "    if [[ -z $cmd ]]; then\n"
          "        COMPREPLY=($(compgen -W ' ",
          f);
    for (size_t i = 0; (cmd = cli_command_get(i)); i++)
        fprintf(f, "%s ", cmd->name);
    fputs("help --server --ca --output --help --version' -- \"$cur\"))\n"
          "        return\n"
          "    fi\n"
          "    local words='' options=''\n"
          "    case $cmd in\n",
          f);
    for (size_t i = 0; (cmd = cli_command_get(i)); i++) {
        _cleanup_strbuf_ strbuf words, options;
        strbuf_init(&words, 4096);
        strbuf_init(&options, 4096);
        strbuf_putc(&options, ' ');
        synopsis_words(cmd->synopsis, false, &words);
        synopsis_words(cmd->synopsis, true, &options);
        fprintf(f, "    %s) words='%s'; options='%s' ;;\n", cmd->name, words.data ? words.data : "",
                options.data ? options.data : "");
    }
    fputs("    esac\n"
          "    if [[ $cur == -* ]]; then\n"
          "        COMPREPLY=($(compgen -W \"$options --server --ca --output --help\" -- \"$cur\"))\n"
          "        return\n"
          "    fi\n"
          "    local args=()\n"
          "    for ((i = cmd_at + 1; i < COMP_CWORD; i++)); do\n"
          "        case ${COMP_WORDS[i]} in\n"
          "        " VALUE_OPTIONS ") ((i++)) ;;\n"
          "        -*) ;;\n"
          "        *) args+=(\"${COMP_WORDS[i]}\") ;;\n"
          "        esac\n"
          "    done\n"
          "    case $cmd in\n"
          "    get|delete|describe)\n"
          "        if ((${#args[@]} == 0)); then\n"
          "            COMPREPLY=($(compgen -W ' ",
          f);
    for (size_t i = 0; (k = resource_kind_get(i)); i++)
        fprintf(f, "%s ", k->plural);
    fputs("' -- \"$cur\"))\n"
          "        elif ((${#args[@]} == 1)); then\n"
          "            COMPREPLY=($(compgen -W \"$(cloister get \"${args[0]}\" -o name 2>/dev/null | sed 's|^[^/]*/||')\" -- \"$cur\"))\n"
          "        fi\n"
          "        return ;;\n"
          "    esac\n"
          "    if ((${#args[@]} == 0)); then\n"
          "        COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
          "    fi\n"
          "}\n",
          f);
}

int cli_completion_script(FILE *f, const char *shell)
{
    if (strcmp(shell, "bash") == 0) {
        fputs("# bash completion of cloister, generated from its command table by `cloister completion bash`.\n"
              "# Load it with: source <(cloister completion bash)\n",
              f);
        bash_function(f);
        fputs("complete -F _cloister cloister\n", f);
    } else if (strcmp(shell, "zsh") == 0) {
        fputs("#compdef cloister\n"
              "# zsh completion of cloister, generated from its command table by `cloister completion zsh`:\n"
              "# the bash completion through zsh's bashcompinit. Load it with: source <(cloister completion zsh)\n"
              "autoload -U +X compinit && compinit\n"
              "autoload -U +X bashcompinit && bashcompinit\n",
              f);
        bash_function(f);
        fputs("complete -F _cloister cloister\n", f);
    } else
        return -EINVAL;
    return 0;
}

int cmd_completion(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
    if (argc - optind != 1)
        return cli_usage_error(cmd, argc - optind == 0 ? "name the shell: bash or zsh" : "one shell at a time");
    if (cli_completion_script(stdout, argv[optind]) < 0)
        return cli_usage_error(cmd, "unknown shell \"%s\": bash or zsh", argv[optind]);
    return CLI_EXIT_OK;
}

/* The client's part of `cloister version`, as a new object. */
static json_t *client_version(void)
{
    curl_version_info_data *curl = curl_version_info(CURLVERSION_NOW);
    return json_pack("{s:s, s:s, s:{s:s, s:s, s:s}}", "version", CLOISTER_VERSION, "build", CLOISTER_BUILD,
                     "libraries", "libcurl", curl ? curl->version : "?", "jansson", JANSSON_VERSION, "openssl",
                     OpenSSL_version(OPENSSL_VERSION));
}

int cmd_version(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    json_auto_t *out = json_pack("{s:o}", "client", client_version());
    if (!out)
        return cli_error("out of memory");
    /* GET /v1/version needs no credential: asked even before login */
    json_auto_t *server = NULL;
    api_error err = {0};
    int r = cli_connect(ctx, false);
    if (r == CLI_EXIT_OK && api_request(ctx, NULL, "GET", "/version", NULL, &server, &err) == 0 &&
        json_is_object(server))
        json_object_set_new(server, "url", json_string(ctx->server));
    else {
        json_decref(server);
        server = json_pack("{s:s?, s:s}", "url", ctx->server, "error",
                           r != CLI_EXIT_OK ? "no server settled" : err.message);
    }
    json_object_set(out, "server", server);
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(out);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(out);
    else {
        const json_t *client = json_object_get(out, "client"), *libs = json_object_get(client, "libraries");
        printf("cloister %s\n  build: %s; libcurl %s, jansson %s, %s\n", CLOISTER_VERSION, CLOISTER_BUILD,
               json_string_value(json_object_get(libs, "libcurl")), JANSSON_VERSION,
               json_string_value(json_object_get(libs, "openssl")));
        char url[512], text[600];
        text_sanitize(json_string_value(json_object_get(server, "url")) ?: "(none)", url, sizeof(url));
        if (json_object_get(server, "version"))
            printf("server %s: cloister %s (API %s)\n", url,
                   text_sanitize(json_string_value(json_object_get(server, "version")) ?: "?", text, sizeof(text)),
                   json_string_value(json_object_get(server, "apiVersion")) ?: "?");
        else
            printf("server %s: not reachable (%s)\n", url,
                   text_sanitize(json_string_value(json_object_get(server, "error")) ?: "", text, sizeof(text)));
        r = 0;
    }
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}
