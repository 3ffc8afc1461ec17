/*
 * main.c - the tern program: command line, config, and the headless front
 * end (JSON Lines on stdout, DESIGN.md "Command line").
 *
 * Layer: src/cli. Sees the core only through include/tern.h.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern.h"

#define TERN_VERSION_STRING "tern " PACKAGE_VERSION

static void
usage(FILE *f)
{
    fputs("usage: tern [-F CONFIG] [-a ACCOUNT]                  (the TUI)\n"
          "       tern [-F CONFIG] [-a ACCOUNT] --batch [FILE]   (commands from FILE or stdin)\n"
          "       tern [-F CONFIG] [-a ACCOUNT] -e CMD [-e CMD ...]\n"
          "       tern --version | --help\n"
          "Headless results are JSON Lines on stdout; see tern(1).\n",
          f);
}

static void
emit_line(const char *json, size_t len, void *aux)
{
    (void)aux;
    fwrite(json, 1, len, stdout);
    fputc('\n', stdout);
}

/* Writes a JSON string (the command text or message is ours or sanitized). */
static void
put_json_string(const char *s)
{
    fputc('"', stdout);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            printf("\\u%04x", *p);
        else
            fputc(*p, stdout);
    }
    fputc('"', stdout);
}

static void
report_error(const char *command, enum tern_status st, const char *msg)
{
    fputs("{\"error\":{\"command\":", stdout);
    put_json_string(command);
    fputs(",\"code\":", stdout);
    put_json_string(tern_status_name(st));
    fputs(",\"message\":", stdout);
    put_json_string(msg);
    fputs("}}\n", stdout);
    fflush(stdout);
    if (*command)
        fprintf(stderr, "tern: %s: %s\n", command, msg);
    else
        fprintf(stderr, "tern: %s\n", msg);
}

/* TERN_TRACE=1: the protocol conversation on stderr, sanitized. */
static void
trace_line(void *aux, int sent, const char *line, size_t len)
{
    (void)aux;
    fputs(sent ? "C: " : "S: ", stderr);
    for (size_t i = 0; i < len && i < 2000; i++) {
        unsigned char c = (unsigned char)line[i];
        fputc(c < 0x20 || c == 0x7f ? '?' : c, stderr);
    }
    fputs(len > 2000 ? " [...]\n" : "\n", stderr);
}

static int
exit_code(enum tern_status st)
{
    return st == TERN_E_USAGE || st == TERN_E_CONFIG ? 2 : 1;
}

/* Runs one command; returns 0 or the exit status to stop with. */
static int
run_one(struct tern_session *s, const char *cmd)
{
    enum tern_status st = tern_session_run(s, cmd, emit_line, NULL);
    fflush(stdout);
    if (st == TERN_OK)
        return 0;
    report_error(cmd, st, tern_session_error(s));
    return exit_code(st);
}

static int
run_batch(struct tern_session *s, FILE *in)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while (rc == 0 && (n = getline(&line, &cap, in)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        const char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p || *p == '#')
            continue;
        if (strlen(p) != (size_t)(n - (p - line))) {
            report_error("", TERN_E_USAGE, "a command line contains a NUL byte");
            rc = 2;
            break;
        }
        rc = run_one(s, p);
    }
    free(line);
    return rc;
}

static int run(int argc, char **argv, const char **cmds);

int
main(int argc, char **argv)
{
    const char **cmds = calloc((size_t)argc + 1, sizeof(char *));
    if (!cmds)
        return 1;
    int rc = run(argc, argv, cmds);
    free(cmds);
    return rc;
}

static int
run(int argc, char **argv, const char **cmds)
{
    const char *config = NULL, *account = NULL, *batch_file = NULL;
    bool batch = false;
    size_t ncmds = 0;
    signal(SIGPIPE, SIG_IGN);
    static char outbuf[1 << 16];
    setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
            puts(TERN_VERSION_STRING);
            return 0;
        } else if ((strcmp(a, "-F") == 0 || strcmp(a, "-a") == 0 || strcmp(a, "-e") == 0) &&
                   i + 1 < argc) {
            const char *v = argv[++i];
            if (a[1] == 'F')
                config = v;
            else if (a[1] == 'a')
                account = v;
            else
                cmds[ncmds++] = v;
        } else if (strcmp(a, "--batch") == 0) {
            batch = true;
            if (i + 1 < argc && argv[i + 1][0] != '-')
                batch_file = argv[++i];
        } else {
            char msg[256];
            snprintf(msg, sizeof(msg), "unknown or incomplete option '%.200s' (see tern --help)",
                     a);
            report_error("", TERN_E_USAGE, msg);
            return 2;
        }
    }
    if (batch && ncmds) {
        report_error("", TERN_E_USAGE, "--batch and -e cannot be combined");
        return 2;
    }
    if (!batch && !ncmds) {
        report_error("", TERN_E_USAGE,
                     "the full-screen interface is not part of this version; "
                     "use -e CMD or --batch (see tern --help)");
        return 2;
    }

    char *default_path = NULL;
    if (!config) {
        default_path = tern_config_default_path();
        config = default_path;
    }
    if (!config) {
        report_error("", TERN_E_CONFIG, "cannot determine the config file path");
        return 2;
    }
    struct tern_config *cfg = NULL;
    char *errmsg = NULL;
    enum tern_status st = tern_config_load(config, &cfg, &errmsg);
    if (st) {
        report_error("", TERN_E_CONFIG, errmsg ? errmsg : "cannot load the config");
        free(errmsg);
        free(default_path);
        return 2;
    }
    struct tern_session *s = NULL;
    st = tern_session_new(cfg, account, &s, &errmsg);
    if (st) {
        report_error("", TERN_E_CONFIG, errmsg ? errmsg : "cannot open the account");
        free(errmsg);
        tern_config_free(cfg);
        free(default_path);
        return 2;
    }

    const char *trace = getenv("TERN_TRACE");
    if (trace && *trace && strcmp(trace, "0") != 0)
        tern_session_set_trace(s, trace_line, NULL);

    int rc = 0;
    if (batch) {
        FILE *in = stdin;
        if (batch_file && strcmp(batch_file, "-") != 0) {
            in = fopen(batch_file, "r");
            if (!in) {
                char msg[512];
                snprintf(msg, sizeof(msg), "cannot open %.400s: %s", batch_file, strerror(errno));
                report_error("", TERN_E_USAGE, msg);
                rc = 2;
            }
        }
        if (in) {
            rc = run_batch(s, in);
            if (in != stdin)
                fclose(in);
        }
    } else {
        for (size_t i = 0; i < ncmds && rc == 0; i++)
            rc = run_one(s, cmds[i]);
    }
    tern_session_close(s);
    tern_session_free(s);
    tern_config_free(cfg);
    free(default_path);
    if (fflush(stdout) != 0 && rc == 0)
        rc = 1;
    return rc;
}
