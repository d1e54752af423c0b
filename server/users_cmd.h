/*
 * `jwksd users list|add|passwd|lock|unlock|delete`: user accounts, on the
 * store a server uses (same --backend, --db, --pg-schema), safe while
 * servers run on it. INTERNAL to server/: main.c dispatches to it.
 */
#ifndef JWKS_USERS_CMD_H
#define JWKS_USERS_CMD_H

/* argv[0] is "users". Returns the exit status. */
int users_cmd_main(int argc, char **argv);

#endif /* JWKS_USERS_CMD_H */
