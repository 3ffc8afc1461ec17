/*
 * account.h - what the core does with one configured account beyond reading
 * its struct: for now, obtaining its password.
 *
 * Layer: src/. Includes libc, include/ and proto/ headers only.
 */
#ifndef TERN_ACCOUNT_H
#define TERN_ACCOUNT_H

#include "tern.h"

#include "err.h"

#include "config.h"

/* The most output password_command may print; more is an error. */
#define ACCOUNT_PASSWORD_MAX (64 * 1024)

/*
 * Gives the password of ACCT in *OUT, an owned string the caller wipes
 * (explicit_bzero) and frees.
 *
 * The account's `password` is returned when set. Otherwise its
 * `password_command` runs as `/bin/sh -c COMMAND`, with stdin from
 * /dev/null, stdout and stderr read through pipes, default signal
 * dispositions and no other inherited file descriptors; the password is the
 * first line of its stdout, without the line ending ("\n" or "\r\n").
 *
 * Returns TERN_OK; TERN_E_AUTH when neither key is set ("no password or
 * password_command for account work"), when the command exits non-zero
 * ("password_command exited with status 3", followed by ": " and the last
 * line it wrote to stderr, if any), is killed ("password_command was killed
 * by signal 9"), prints nothing on its first line, prints a NUL byte or
 * more than ACCOUNT_PASSWORD_MAX bytes; TERN_E_IO when it cannot be started
 * or waited for; TERN_E_USAGE when ACCT or OUT is NULL; TERN_E_NOMEM. The
 * sentence goes into ERR and never holds the password or the command's
 * stdout.
 *
 * It blocks until the command ends (it may ask for a passphrase on the
 * terminal or a graphical prompt), so the event loop calls it from a job
 * thread (DESIGN.md). It does not touch SIGCHLD; a SIGCHLD handler that
 * reaps every child would make it fail with TERN_E_IO.
 */
enum tern_status account_password(const struct tern_account *acct, char **out,
                                  struct tern_err *err);

#endif
