/* The saved session: $XDG_CONFIG_HOME/cloister/session.json (default
 * ~/.config/cloister/), {"server": URL, "ca": PATH or null, "access_token",
 * "refresh_token", "session"} as `cloister login` gets them from the auth
 * server (files of earlier versions hold a credential "token" instead), in a
 * 0700 directory, mode 0600. A session file others can read is refused, as
 * ssh refuses such keys. */
#pragma once

#include <stdbool.h>

typedef struct cli_session {
    char *server;
    char *ca;    /* absolute path, or NULL */
    char *token;         /* a credential token (older session files), or NULL */
    char *access_token;  /* the session's access token (JWT), or NULL */
    char *refresh_token; /* its single-use refresh token, or NULL */
    char *session_id;    /* the server's session id, or NULL */
} cli_session;

/* Cap on the session file's size. */
#define SESSION_MAX_SIZE (64 * 1024)

/* The directory of the session and of the keys ($XDG_CONFIG_HOME/cloister),
 * a heap string the caller frees. Returns 0, -ENOENT or -ENOMEM. */
int session_dir(char **ret);
/* The session file's path, a heap string the caller frees. Returns 0,
 * -ENOENT when no home directory can be found, or -ENOMEM. */
int session_path(char **ret_path);
/* Loads the session into *RET (released with session_done()). Returns 0,
 * -ENOENT when there is none, -EPERM when the file is open to other users
 * or not ours, -EINVAL when it is malformed, or another negative errno. */
int session_load(cli_session *ret);
/* Saves S atomically, creating the directory. Returns 0 or a negative errno. */
int session_save(const cli_session *s);
/* Removes the session file. Returns 0, -ENOENT when there was none, or a
 * negative errno. */
int session_remove(void);
/* Takes the session lock ($XDG_CONFIG_HOME/cloister/session.lock, an
 * exclusive flock held until the returned fd is closed): the processes of a
 * user refresh one session in turn. Returns the fd or a negative errno. */
int session_lock(void);
/* Frees S's strings, wiping the tokens; accepts an empty session. */
void session_done(cli_session *s);
