/*
 * account_test.c - unit tests of src/account.c: the password of an
 * account, from its `password` key or its `password_command`.
 *
 * Layer: tests of src/.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tern.h"

#include "err.h"

#include "account.h"

/* An account named "work" with only a password_command (or nothing). */
static struct tern_account
account_with(const char *command)
{
    struct tern_account a;
    memset(&a, 0, sizeof a);
    a.name = "work";
    a.password_command = (char *)(uintptr_t)command;
    return a;
}

/* Runs COMMAND; expects success and returns the password. */
static char *
password_of(const char *command)
{
    struct tern_account a = account_with(command);
    struct tern_err err = {NULL};
    char *pw = NULL;
    enum tern_status st = account_password(&a, &pw, &err);
    if (st != TERN_OK)
        fail_msg("%s: %s", command, tern_err_msg(&err));
    assert_null(err.msg);
    assert_non_null(pw);
    return pw;
}

/* Runs COMMAND; expects status WANT and sentence SENTENCE. */
static void
assert_command_fails(const char *command, enum tern_status want, const char *sentence)
{
    struct tern_account a = account_with(command);
    struct tern_err err = {NULL};
    char *pw = (char *)&pw;
    enum tern_status st = account_password(&a, &pw, &err);
    assert_int_equal(st, want);
    assert_null(pw);
    assert_string_equal(tern_err_msg(&err), sentence);
    tern_err_clear(&err);
}

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
test_password_key(void **state)
{
    struct tern_account a = account_with("exit 1");
    a.password = "hunter2";
    char *pw = NULL;
    struct tern_err err = {NULL};
    /* The password key wins; the command is not run. */
    assert_int_equal(account_password(&a, &pw, &err), TERN_OK);
    assert_string_equal(pw, "hunter2");
    assert_ptr_not_equal(pw, a.password);
    assert_null(err.msg);
    free(pw);
}

static void
test_neither(void **state)
{
    assert_command_fails(NULL, TERN_E_AUTH, "no password or password_command for account work");

    char *pw = (char *)&pw;
    struct tern_err err = {NULL};
    assert_int_equal(account_password(NULL, &pw, &err), TERN_E_USAGE);
    assert_null(pw);
    tern_err_clear(&err);
    struct tern_account a = account_with("echo x");
    assert_int_equal(account_password(&a, NULL, &err), TERN_E_USAGE);
    tern_err_clear(&err);
    /* A NULL error slot is allowed. */
    assert_int_equal(account_password(&a, &pw, NULL), TERN_OK);
    assert_string_equal(pw, "x");
    free(pw);
}

static void
test_command_output(void **state)
{
    char *pw;
    pw = password_of("echo hunter2");
    assert_string_equal(pw, "hunter2");
    free(pw);
    /* Only one trailing newline goes; inner blanks stay. */
    pw = password_of("printf ' pass word \\n'");
    assert_string_equal(pw, " pass word ");
    free(pw);
    pw = password_of("printf 'no-newline'");
    assert_string_equal(pw, "no-newline");
    free(pw);
    pw = password_of("printf 'crlf\\r\\n'");
    assert_string_equal(pw, "crlf");
    free(pw);
    /* `pass show` prints the password first and metadata after it. */
    pw = password_of("printf 'first\\nuser: alice\\nurl: x\\n'");
    assert_string_equal(pw, "first");
    free(pw);
    /* Shell syntax works, and stderr does not mix into the password. */
    pw = password_of("echo warning >&2; x=abc; echo \"$x\" | tr a-c A-C");
    assert_string_equal(pw, "ABC");
    free(pw);
    /* UTF-8 passes through. */
    pw = password_of("printf 'p\\303\\244ss\\n'");
    assert_string_equal(pw, "p\xc3\xa4ss");
    free(pw);
    /* Exactly the cap is accepted. */
    pw = password_of("head -c 65536 /dev/zero | tr '\\0' x");
    assert_int_equal(strlen(pw), 65536);
    free(pw);
}

static void
test_command_fails(void **state)
{
    assert_command_fails("exit 3", TERN_E_AUTH, "password_command exited with status 3");
    assert_command_fails("false", TERN_E_AUTH, "password_command exited with status 1");
    /* The last line of stderr explains the failure. */
    assert_command_fails("echo first >&2; echo 'gpg: decryption failed: No secret key' >&2; "
                         "exit 2",
                         TERN_E_AUTH,
                         "password_command exited with status 2: gpg: decryption failed: No "
                         "secret key");
    /* Control characters from stderr are neutralized. */
    assert_command_fails("printf 'bad \\033[31mred\\n' >&2; exit 4", TERN_E_AUTH,
                         "password_command exited with status 4: bad ?[31mred");
    assert_command_fails("kill -9 $$", TERN_E_AUTH, "password_command was killed by signal 9");
    assert_command_fails("kill -TERM $$", TERN_E_AUTH, "password_command was killed by signal 15");

    struct tern_account a = account_with("tern-no-such-command-xyz");
    struct tern_err err = {NULL};
    char *pw = NULL;
    assert_int_equal(account_password(&a, &pw, &err), TERN_E_AUTH);
    assert_null(pw);
    assert_true(strncmp(tern_err_msg(&err), "password_command exited with status 127: ", 41) == 0);
    assert_non_null(strstr(tern_err_msg(&err), "tern-no-such-command-xyz"));
    tern_err_clear(&err);

    assert_command_fails("true", TERN_E_AUTH, "password_command printed no password");
    assert_command_fails("echo", TERN_E_AUTH, "password_command printed no password");
    assert_command_fails("printf '\\nsecond\\n'", TERN_E_AUTH,
                         "password_command printed no password");
    assert_command_fails("printf 'ab\\000cd\\n'", TERN_E_AUTH,
                         "password_command printed a NUL byte");
    assert_command_fails("head -c 65537 /dev/zero | tr '\\0' x", TERN_E_AUTH,
                         "password_command printed more than 64 KiB");
}

static void
test_password_never_in_error(void **state)
{
    static const char *const commands[] = {
        "echo s3cretpw; exit 5",
        "echo s3cretpw; kill -9 $$",
        "printf 's3cretpw\\000'",
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        struct tern_account a = account_with(commands[i]);
        struct tern_err err = {NULL};
        char *pw = NULL;
        assert_int_not_equal(account_password(&a, &pw, &err), TERN_OK);
        assert_null(strstr(tern_err_msg(&err), "s3cretpw"));
        assert_non_null(strstr(tern_err_msg(&err), "password_command"));
        tern_err_clear(&err);
    }
}

static void
test_child_environment(void **state)
{
    char *pw;
    /* stdin is /dev/null: reading it finds the end at once. */
    pw = password_of("if read line; then echo \"read:$line\"; else echo eof; fi");
    assert_string_equal(pw, "eof");
    free(pw);

    /* The caller's other descriptors are not inherited. */
    int fd = open("/dev/null", O_RDONLY); /* no O_CLOEXEC on purpose */
    assert_true(fd > 2);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "if [ -e /proc/self/fd/%d ]; then echo leaked; else echo closed; fi",
             fd);
    pw = password_of(cmd);
    assert_string_equal(pw, "closed");
    free(pw);
    close(fd);

    /*
     * Signals the caller ignores are back to their defaults in the child:
     * SIGPIPE and SIGINT (bits 0x1000 and 0x2 of SigIgn) are not ignored.
     */
    struct sigaction ign, old_pipe, old_int;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, &old_pipe);
    sigaction(SIGINT, &ign, &old_int);
    pw = password_of("m=$(awk '/^SigIgn/ { print $2 }' /proc/self/status); "
                     "echo \"$(( 0x$m & 0x1002 ))\"");
    assert_string_equal(pw, "0");
    free(pw);
    /* The check itself sees an ignored signal. */
    pw = password_of("trap '' PIPE; m=$(awk '/^SigIgn/ { print $2 }' /proc/self/status); "
                     "echo \"$(( 0x$m & 0x1002 ))\"");
    assert_string_equal(pw, "4096");
    free(pw);
    sigaction(SIGPIPE, &old_pipe, NULL);
    sigaction(SIGINT, &old_int, NULL);
}

static void
test_background_job(void **state)
{
    /*
     * A background job that keeps stdout and stderr open must not hold the
     * caller until it ends.
     */
    double start = now();
    char *pw = password_of("sleep 3 & echo quick");
    assert_string_equal(pw, "quick");
    free(pw);
    assert_true(now() - start < 2.0);

    /* Output written just before the shell exits is not lost. */
    pw = password_of("sleep 3 & sleep 0.2; echo late");
    assert_string_equal(pw, "late");
    free(pw);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_password_key),
        cmocka_unit_test(test_neither),
        cmocka_unit_test(test_command_output),
        cmocka_unit_test(test_command_fails),
        cmocka_unit_test(test_password_never_in_error),
        cmocka_unit_test(test_child_environment),
        cmocka_unit_test(test_background_job),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
