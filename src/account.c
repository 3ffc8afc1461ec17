/*
 * account.c - the password of an account: the `password` key, or the output
 * of its `password_command` (see account.h).
 *
 * Layer: src/. Includes libc, include/ and proto/ headers only.
 *
 * The command runs under /bin/sh through posix_spawn(), not popen(): popen()
 * gives no way to set stdin to /dev/null, read stderr, or close the
 * descriptors (sockets, LMDB files) the process holds, and its pclose()
 * status is easy to misread. The child has the default disposition of
 * every signal, because the event loop ignores SIGPIPE and a shell pipeline
 * such as `gpg ... | head -1` relies on it.
 */
#include "account.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tern.h"

#include "err.h"
#include "tbuf.h"

extern char **environ;

/* How much of the command's stderr is kept to quote its last line. */
#define ACCOUNT_STDERR_KEEP (16 * 1024)
/* How much of that last line an error sentence quotes. */
#define ACCOUNT_STDERR_QUOTE 200

/*
 * Appends N bytes of stderr to B, keeping only the most recent
 * ACCOUNT_STDERR_KEEP bytes or so: only the last line is ever shown.
 */
static enum tern_status
keep_stderr(struct tbuf *b, const char *p, size_t n)
{
    if (n > ACCOUNT_STDERR_KEEP) {
        p += n - ACCOUNT_STDERR_KEEP;
        n = ACCOUNT_STDERR_KEEP;
    }
    if (tbuf_len(b) + n > ACCOUNT_STDERR_KEEP)
        tbuf_consume(b, tbuf_len(b) + n - ACCOUNT_STDERR_KEEP);
    return tbuf_add(b, p, n);
}

/*
 * Points *LINE at the last non-empty line of the command's stderr, at most
 * ACCOUNT_STDERR_QUOTE bytes of it, and returns its length (0: none).
 */
static int
last_stderr_line(const struct tbuf *b, const char **line)
{
    const char *p = tbuf_ptr(b);
    size_t len = tbuf_len(b);
    while (len && (p[len - 1] == '\n' || p[len - 1] == '\r' || p[len - 1] == ' '))
        len--;
    size_t start = len;
    while (start && p[start - 1] != '\n')
        start--;
    *line = p + start;
    size_t n = len - start;
    return (int)(n > ACCOUNT_STDERR_QUOTE ? ACCOUNT_STDERR_QUOTE : n);
}

/*
 * Reads what is ready on FD, into BUF (stdout, at most CAP bytes in all) or
 * ERRBUF (stderr). *OPEN becomes false at EOF; *IDLE tells that nothing was
 * ready. TERN_E_PROTO when stdout exceeds CAP.
 */
static enum tern_status
drain(int fd, bool *open, bool *idle, char *buf, size_t cap, size_t *len, struct tbuf *errbuf)
{
    char tmp[4096];
    char *dst = buf ? buf + *len : tmp;
    size_t room = buf ? cap - *len : sizeof tmp;
    /* One byte more than the cap tells "too much" from "exactly full". */
    if (buf && room == 0) {
        dst = tmp;
        room = 1;
    }
    *idle = false;
    ssize_t n = read(fd, dst, room);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) {
            *idle = errno == EAGAIN;
            return TERN_OK;
        }
        return TERN_E_IO;
    }
    if (n == 0) {
        *open = false;
        return TERN_OK;
    }
    if (buf) {
        if (dst == tmp) {
            explicit_bzero(tmp, sizeof tmp);
            return TERN_E_PROTO;
        }
        *len += (size_t)n;
        return TERN_OK;
    }
    return keep_stderr(errbuf, tmp, (size_t)n);
}

/* The sentence for a failure of drain(); errno still holds a read error. */
static enum tern_status
read_error(enum tern_status st, struct tern_err *err)
{
    if (st == TERN_E_PROTO)
        return tern_err_set(err, TERN_E_AUTH, "password_command printed more than %d KiB",
                            ACCOUNT_PASSWORD_MAX / 1024);
    if (st == TERN_E_NOMEM)
        return tern_err_set(err, TERN_E_NOMEM, "out of memory");
    return tern_err_set(err, TERN_E_IO, "cannot read password_command: %s", strerror(errno));
}

static enum tern_status
run_password_command(const struct tern_account *acct, char **out, struct tern_err *err)
{
    enum tern_status st = TERN_OK;
    int outp[2] = {-1, -1}, errp[2] = {-1, -1};
    pid_t pid = -1;
    bool have_fa = false, have_attr = false;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    struct tbuf errbuf;
    tbuf_init(&errbuf, 0);
    size_t cap = ACCOUNT_PASSWORD_MAX, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf)
        return tern_err_set(err, TERN_E_NOMEM, "out of memory");

    if (pipe2(outp, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0) {
        st = tern_err_set(err, TERN_E_IO, "cannot run password_command: %s", strerror(errno));
        goto done;
    }
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc == 0) {
        have_fa = true;
        rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    }
    if (rc == 0)
        rc = posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
    if (rc == 0)
        rc = posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    /* The helper inherits no sockets or mail files (STYLE.md §9, privilege). */
    if (rc == 0)
        rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
    if (rc == 0) {
        rc = posix_spawnattr_init(&attr);
        have_attr = rc == 0;
    }
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    if (rc == 0)
        rc = posix_spawnattr_setsigmask(&attr, &none);
    if (rc == 0)
        rc = posix_spawnattr_setsigdefault(&attr, &all);
    if (rc == 0)
        rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (rc == 0) {
        char *argv[] = {"sh", "-c", acct->password_command, NULL};
        rc = posix_spawn(&pid, "/bin/sh", &fa, &attr, argv, environ);
    }
    if (rc != 0) {
        pid = -1;
        st = tern_err_set(err, TERN_E_IO, "cannot run password_command: %s", strerror(rc));
        goto done;
    }
    close(outp[1]);
    close(errp[1]);
    outp[1] = errp[1] = -1;

    /*
     * Read both pipes until they close or the shell exits. A background
     * job of the command may keep them open long after that, so once the
     * shell is gone only what is already in the pipes is read.
     */
    bool out_open = true, err_open = true, reaped = false, idle;
    int status = 0;
    while (out_open || err_open) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            reaped = true;
            pid = -1;
            break;
        }
        if (w < 0 && errno != EINTR) {
            st = tern_err_set(err, TERN_E_IO, "cannot wait for password_command: %s",
                              strerror(errno));
            pid = -1;
            goto done;
        }
        struct pollfd pfd[2] = {{.fd = out_open ? outp[0] : -1, .events = POLLIN},
                                {.fd = err_open ? errp[0] : -1, .events = POLLIN}};
        if (poll(pfd, 2, 100) < 0 && errno != EINTR) {
            st = tern_err_set(err, TERN_E_IO, "cannot read password_command: %s", strerror(errno));
            goto done;
        }
        if (out_open && pfd[0].revents)
            st = drain(outp[0], &out_open, &idle, buf, cap, &len, NULL);
        if (st == TERN_OK && err_open && pfd[1].revents)
            st = drain(errp[0], &err_open, &idle, NULL, 0, NULL, &errbuf);
        if (st != TERN_OK) {
            st = read_error(st, err);
            goto done;
        }
    }
    if (!reaped) {
        pid_t w;
        while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
            ;
        pid = -1;
        if (w < 0) {
            st = tern_err_set(err, TERN_E_IO, "cannot wait for password_command: %s",
                              strerror(errno));
            goto done;
        }
    }
    for (int k = 0; k < 2; k++) {
        int fd = k == 0 ? outp[0] : errp[0];
        bool *open = k == 0 ? &out_open : &err_open;
        if (*open && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
            st = tern_err_set(err, TERN_E_IO, "cannot read password_command: %s", strerror(errno));
            goto done;
        }
        idle = false;
        while (st == TERN_OK && *open && !idle)
            st = k == 0 ? drain(fd, open, &idle, buf, cap, &len, NULL)
                        : drain(fd, open, &idle, NULL, 0, NULL, &errbuf);
        if (st != TERN_OK) {
            st = read_error(st, err);
            goto done;
        }
    }

    if (WIFSIGNALED(status)) {
        st = tern_err_set(err, TERN_E_AUTH, "password_command was killed by signal %d",
                          WTERMSIG(status));
        goto done;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        const char *line;
        int n = last_stderr_line(&errbuf, &line);
        if (n > 0)
            st = tern_err_set(err, TERN_E_AUTH, "password_command exited with status %d: %.*s",
                              WEXITSTATUS(status), n, line);
        else
            st = tern_err_set(err, TERN_E_AUTH, "password_command exited with status %d",
                              WEXITSTATUS(status));
        goto done;
    }
    if (memchr(buf, '\0', len)) {
        st = tern_err_set(err, TERN_E_AUTH, "password_command printed a NUL byte");
        goto done;
    }
    /* The password is the first line, as `pass show` prints it. */
    char *nl = memchr(buf, '\n', len);
    size_t plen = nl ? (size_t)(nl - buf) : len;
    if (plen && buf[plen - 1] == '\r')
        plen--;
    if (plen == 0) {
        st = tern_err_set(err, TERN_E_AUTH, "password_command printed no password");
        goto done;
    }
    if (!(*out = strndup(buf, plen))) {
        st = tern_err_set(err, TERN_E_NOMEM, "out of memory");
        goto done;
    }

done:
    if (pid > 0) {
        /* Stopped early: do not leave the child running or unreaped. */
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    for (int k = 0; k < 2; k++) {
        if (outp[k] >= 0)
            close(outp[k]);
        if (errp[k] >= 0)
            close(errp[k]);
    }
    if (have_fa)
        posix_spawn_file_actions_destroy(&fa);
    if (have_attr)
        posix_spawnattr_destroy(&attr);
    explicit_bzero(buf, cap + 1);
    free(buf);
    tbuf_free(&errbuf);
    return st;
}

enum tern_status
account_password(const struct tern_account *acct, char **out, struct tern_err *err)
{
    if (!out)
        return tern_err_set(err, TERN_E_USAGE, "account_password: no place for the result");
    *out = NULL;
    if (!acct)
        return tern_err_set(err, TERN_E_USAGE, "account_password: no account");
    if (acct->password) {
        if (!(*out = strdup(acct->password)))
            return tern_err_set(err, TERN_E_NOMEM, "out of memory");
        return TERN_OK;
    }
    if (!acct->password_command)
        return tern_err_set(err, TERN_E_AUTH, "no password or password_command for account %s",
                            acct->name ? acct->name : "(unnamed)");
    return run_password_command(acct, out, err);
}
