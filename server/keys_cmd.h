/*
 * `jwksd keys ...`: key administration from the command line. INTERNAL to
 * server/ (called by main.c).
 */
#ifndef JWKS_KEYS_CMD_H
#define JWKS_KEYS_CMD_H

/*
 * Run `keys SUBCOMMAND [options]`; argv[0] is "keys". Returns the exit
 * status: 0 done, 1 failed (a message on stderr), 2 bad usage.
 */
int keys_cmd_main(int argc, char **argv);

#endif /* JWKS_KEYS_CMD_H */
