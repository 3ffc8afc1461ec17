/*
 * maildir_test.c - unit tests of src/maildir.c: folder name mapping (hostile
 * names, TESTMATRIX I10), opening, unique names, batched delivery, crash
 * safety at every step of a commit (F2), write, sync and rename failures
 * (F1), stale tmp cleanup, scanning, flags and deletion.
 *
 * Layer: tests. Every test works in its own directory under /tmp, removed
 * afterwards. Crashes are simulated by a child process that _exit()s at a
 * commit step; the parent then inspects the maildir.
 *
 * Built with -DMAILDIR_TEST_WRAP and
 * -Wl,--wrap=syncfs,--wrap=fsync,--wrap=fdatasync,--wrap=malloc,--wrap=realloc,--wrap=calloc
 * it also counts and fails the sync calls (one syncfs per commit, the
 * fdatasync fallback, real sync errors) and fails every allocation in turn.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tern.h"

#include "err.h"
#include "tbuf.h"

#include "maildir.h"

/* A string literal and its length without the terminating NUL. */
#define LIT(s) (s), (sizeof(s) - 1)

#ifdef MAILDIR_TEST_WRAP
int __real_syncfs(int fd);
int __real_fsync(int fd);
int __real_fdatasync(int fd);
void *__real_malloc(size_t n);
void *__real_realloc(void *p, size_t n);
void *__real_calloc(size_t n, size_t size);
int __wrap_syncfs(int fd);
int __wrap_fsync(int fd);
int __wrap_fdatasync(int fd);
void *__wrap_malloc(size_t n);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_calloc(size_t n, size_t size);

static int syncfs_calls, fsync_calls, fdatasync_calls;
static int syncfs_errno, fsync_errno; /* fail with this when not 0 */
static long alloc_fail_at = -1;       /* fail the allocation with this index */
static long alloc_count;

int
__wrap_syncfs(int fd)
{
    syncfs_calls++;
    if (syncfs_errno) {
        errno = syncfs_errno;
        return -1;
    }
    return __real_syncfs(fd);
}

int
__wrap_fsync(int fd)
{
    fsync_calls++;
    if (fsync_errno) {
        errno = fsync_errno;
        return -1;
    }
    return __real_fsync(fd);
}

int
__wrap_fdatasync(int fd)
{
    fdatasync_calls++;
    return __real_fdatasync(fd);
}

static bool
alloc_fails(void)
{
    return alloc_fail_at >= 0 && alloc_count++ == alloc_fail_at;
}

void *
__wrap_malloc(size_t n)
{
    return alloc_fails() ? NULL : __real_malloc(n);
}

void *
__wrap_realloc(void *p, size_t n)
{
    return alloc_fails() ? NULL : __real_realloc(p, n);
}

void *
__wrap_calloc(size_t n, size_t size)
{
    return alloc_fails() ? NULL : __real_calloc(n, size);
}
#endif

/* ---- helpers ---- */

struct fixture {
    char dir[64]; /* the test's directory */
    char *root;   /* DIR/mail */
    struct maildir *md;
    struct tern_err err;
};

static char *
path_join(const char *a, const char *b)
{
    struct tbuf t;
    tbuf_init(&t, 0);
    assert_int_equal(tbuf_addf(&t, "%s/%s", a, b), TERN_OK);
    char *s = tbuf_take(&t);
    assert_non_null(s);
    return s;
}

static int
rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void
rm_rf(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int
setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    memcpy(f->dir, "/tmp/maildir_test.XXXXXX", sizeof("/tmp/maildir_test.XXXXXX"));
    assert_non_null(mkdtemp(f->dir));
    f->root = path_join(f->dir, "mail");
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;
    maildir_set_commit_hook(NULL, NULL);
    maildir_close(f->md);
    rm_rf(f->dir);
    free(f->root);
    tern_err_clear(&f->err);
    free(f);
    return 0;
}

/* Opens (creating) folder NAME of the fixture as f->md. */
static void
open_inbox(struct fixture *f)
{
    assert_int_equal(maildir_open_folder(f->root, LIT("INBOX"), MAILDIR_CREATE, &f->md, &f->err),
                     TERN_OK);
}

/* Entries in DIR other than "." and ".."; -1 when DIR cannot be read. */
static int
count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static int
count_sub(struct fixture *f, const char *sub)
{
    char *p = path_join(maildir_get_path(f->md), sub);
    int n = count_entries(p);
    free(p);
    return n;
}

/* The whole file at PATH (owned, NUL-terminated), its length in *LEN. */
static char *
slurp_fd(int fd, size_t *len)
{
    struct tbuf t;
    char buf[4096];
    ssize_t n;
    tbuf_init(&t, 0);
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        assert_int_equal(tbuf_add(&t, buf, (size_t)n), TERN_OK);
    assert_true(n == 0);
    *len = t.len;
    char *s = tbuf_take(&t);
    assert_non_null(s);
    return s;
}

/* The content of test message I: an index in the subject and a trailer. */
static char *
message_text(int i, size_t *len)
{
    struct tbuf t;
    tbuf_init(&t, 0);
    assert_int_equal(tbuf_addf(&t, "From: test@example.org\nSubject: message %d\n\n", i), TERN_OK);
    for (int k = 0; k < 100 + (i * 37) % 500; k++)
        assert_int_equal(tbuf_addc(&t, (char)('a' + (i + k) % 26)), TERN_OK);
    assert_int_equal(tbuf_addf(&t, "\nEND %d\n", i), TERN_OK);
    *len = t.len;
    char *s = tbuf_take(&t);
    assert_non_null(s);
    return s;
}

/* Adds message I to batch B in MD (FLAGS as maildir_batch_add). */
static size_t
add_message(struct maildir_batch *b, struct maildir *md, const char *flags, int i,
            struct tern_err *err)
{
    size_t idx, len;
    char *text = message_text(i, &len);
    assert_int_equal(maildir_batch_add(b, md, flags, &idx, NULL, err), TERN_OK);
    /* In two pieces, as a network download would deliver it. */
    assert_int_equal(maildir_batch_write(b, idx, text, len / 2, err), TERN_OK);
    assert_int_equal(maildir_batch_write(b, idx, text + len / 2, len - len / 2, err), TERN_OK);
    free(text);
    return idx;
}

/* ---- name mapping ---- */

static void
check_encode(const char *name, size_t len, const char *want)
{
    char *out = NULL, *back = NULL;
    size_t backlen = 0;
    struct tern_err err = {0};
    assert_int_equal(maildir_name_encode(name, len, &out, &err), TERN_OK);
    assert_string_equal(out, want);
    assert_int_equal(maildir_name_decode(out, strlen(out), &back, &backlen, &err), TERN_OK);
    assert_int_equal(backlen, len);
    assert_memory_equal(back, name, len);
    free(out);
    free(back);
}

static void
name_plain_names_unchanged(void **state)
{
    check_encode(LIT("INBOX"), "INBOX");
    check_encode(LIT("Archive/2024/Receipts"), "Archive/2024/Receipts");
    check_encode(LIT("Entw\xC3\xBCrfe"), "Entw\xC3\xBCrfe");
    check_encode(LIT("\xE6\x97\xA5\xE6\x9C\xAC"), "\xE6\x97\xA5\xE6\x9C\xAC");
    check_encode(LIT("a.b"), "a.b");
    check_encode(LIT("a b+c"), "a b+c");
    /* Shell metacharacters are harmless in file names nobody evaluates. */
    check_encode(LIT("`id`$(rm -rf ~);|&<>*?'\""), "`id`$(rm -rf ~);|&<>*?'\"");
    check_encode(LIT("current/news/tmpl"), "current/news/tmpl");
}

static void
name_hostile_components_encoded(void **state)
{
    check_encode(LIT(""), "%");
    check_encode(LIT("."), "%2E");
    check_encode(LIT(".."), "%2E.");
    check_encode(LIT("../../etc/passwd"), "%2E./%2E./etc/passwd");
    check_encode(LIT("/etc"), "%/etc");
    check_encode(LIT("a//b"), "a/%/b");
    check_encode(LIT("a/"), "a/%");
    check_encode(LIT("/"), "%/%");
    check_encode(LIT(".hidden/x"), "%2Ehidden/x");
    check_encode(LIT("a/./b"), "a/%2E/b");
    check_encode(LIT("100%"), "100%25");
    check_encode(LIT("%2E"), "%252E");
    check_encode(LIT("a\nb\rc\td"), "a%0Ab%0Dc%09d");
    check_encode(LIT("esc\x1b[31m"), "esc%1B[31m");
    check_encode(LIT("del\x7f"), "del%7F");
    check_encode(LIT("nul\0byte"), "nul%00byte");
    check_encode(LIT("c1\xC2\x85\xC2\x9B"), "c1%C2%85%C2%9B");
    check_encode(LIT("\xC2\xA0nbsp"), "\xC2\xA0nbsp"); /* U+00A0 is no control */
    check_encode(LIT("bad\xFF\xC3"), "bad%FF%C3");
    check_encode(LIT("\xC0\xAF"), "%C0%AF");        /* overlong "/" */
    check_encode(LIT("\xED\xA0\x80"), "%ED%A0%80"); /* a surrogate */
    check_encode(LIT("\xE6\x97"), "%E6%97");        /* truncated */
    check_encode(LIT("cur"), "%63ur");
    check_encode(LIT("x/new/tmp"), "x/%6Eew/%74mp");
    check_encode(LIT("..."), "%2E..");
}

/*
 * Checks the promises of an encoded path: elements 1-255 bytes, none "." or
 * "..", none hidden or a maildir subdirectory, no NUL or control byte.
 */
static void
check_path_safe(const char *path)
{
    size_t len = strlen(path);
    assert_true(len > 0);
    assert_true(path[0] != '/');
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && path[i] != '/') {
            unsigned char c = (unsigned char)path[i];
            assert_true(c >= 0x20 && c != 0x7F);
            continue;
        }
        size_t n = i - start;
        const char *e = path + start;
        assert_true(n >= 1 && n <= 255);
        assert_true(e[0] != '.');
        assert_false(n == 3 &&
                     (!memcmp(e, "cur", 3) || !memcmp(e, "new", 3) || !memcmp(e, "tmp", 3)));
        start = i + 1;
    }
}

static void
check_roundtrip(const char *name, size_t len)
{
    char *out = NULL, *back = NULL;
    size_t backlen = 0;
    struct tern_err err = {0};
    assert_int_equal(maildir_name_encode(name, len, &out, &err), TERN_OK);
    check_path_safe(out);
    assert_int_equal(maildir_name_decode(out, strlen(out), &back, &backlen, &err), TERN_OK);
    assert_int_equal(backlen, len);
    assert_memory_equal(back, name, len);
    free(out);
    free(back);
}

static void
name_long_components_split(void **state)
{
    char name[2000];
    char *out;
    struct tern_err err = {0};

    memset(name, 'a', sizeof(name));
    /* 255 bytes fit in one element; 256 become 253 + "%+" and 3. */
    assert_int_equal(maildir_name_encode(name, 255, &out, &err), TERN_OK);
    assert_int_equal(strlen(out), 255);
    assert_null(strchr(out, '/'));
    free(out);
    assert_int_equal(maildir_name_encode(name, 256, &out, &err), TERN_OK);
    assert_int_equal(strlen(out), 255 + 1 + 3);
    assert_memory_equal(out + 253, "%+/aaa", 6);
    free(out);
    for (size_t n = 250; n < 2000; n += 7)
        check_roundtrip(name, n);

    /* Dots at every split point never make a hidden or ".." element. */
    memset(name, '.', sizeof(name));
    for (size_t n = 1; n < 1000; n += 13)
        check_roundtrip(name, n);

    /* Escapes and UTF-8 sequences are never cut. */
    for (size_t i = 0; i + 2 < sizeof(name); i += 3)
        memcpy(name + i, i % 2 ? "\xE2\x82\xAC" : "%\n\xFF", 3);
    for (size_t n = 100; n < 1990; n += 11)
        check_roundtrip(name, n - n % 3);

    /* A component that ends in "cur" after a split. */
    memset(name, 'b', sizeof(name));
    memcpy(name + 253, "cur", 3);
    assert_int_equal(maildir_name_encode(name, 256, &out, &err), TERN_OK);
    assert_string_equal(out + 253, "%+/%63ur");
    free(out);
}

static void
name_random_roundtrips(void **state)
{
    /* Names from an alphabet of trouble, of every length up to 600 bytes. */
    static const char *const pieces[] = {
        "/",
        ".",
        "..",
        "%",
        "%2E",
        "%+",
        "a",
        "cur",
        "new",
        "tmp",
        "\n",
        "\0",
        "\x7f",
        "\xC2\x85",
        "\xFF",
        "\xC3",
        "\xC3\xA9",
        "\xE2\x82\xAC",
        "\xF0\x9F\x98\x80",
        "`",
        "$(",
        " ",
    };
    char name[700];
    unsigned seed = 12345;
    for (int round = 0; round < 5000; round++) {
        size_t len = 0;
        size_t want = (size_t)(rand_r(&seed) % (round % 10 == 0 ? 600 : 40));
        while (len < want) {
            const char *p = pieces[rand_r(&seed) % (sizeof(pieces) / sizeof(pieces[0]))];
            size_t n = p[0] ? strlen(p) : 1;
            memcpy(name + len, p, n);
            len += n;
        }
        check_roundtrip(name, len);
    }
}

static void
check_decode_rejects(const char *path, size_t len)
{
    char *out = (char *)"untouched";
    struct tern_err err = {0};
    assert_int_equal(maildir_name_decode(path, len, &out, NULL, &err), TERN_E_PROTO);
    assert_string_equal(out, "untouched");
    assert_non_null(strstr(tern_err_msg(&err), "is not the path of a folder name"));
    tern_err_clear(&err);
}

static void
name_decode_rejects_foreign_paths(void **state)
{
    check_decode_rejects(LIT(""));
    check_decode_rejects(LIT("/"));
    check_decode_rejects(LIT("/a"));
    check_decode_rejects(LIT("a/"));
    check_decode_rejects(LIT("a//b"));
    check_decode_rejects(LIT("."));
    check_decode_rejects(LIT(".."));
    check_decode_rejects(LIT("a/../b"));
    check_decode_rejects(LIT(".hidden"));
    check_decode_rejects(LIT("cur"));
    check_decode_rejects(LIT("a/tmp"));
    check_decode_rejects(LIT("%2e")); /* lower-case hex */
    check_decode_rejects(LIT("%41")); /* "A" need not be encoded */
    check_decode_rejects(LIT("%2E%2E"));
    check_decode_rejects(LIT("%%"));
    check_decode_rejects(LIT("%2"));
    check_decode_rejects(LIT("a%"));
    check_decode_rejects(LIT("%G0"));
    check_decode_rejects(LIT("a%+"));   /* continues into nothing */
    check_decode_rejects(LIT("a%+/b")); /* a split that was not needed */
    check_decode_rejects(LIT("%+"));
    check_decode_rejects(LIT("a\nb"));
    check_decode_rejects(LIT("a\0b"));
    check_decode_rejects(LIT("\xFF"));
    check_decode_rejects(LIT("\xC2\x85"));
}

static void
name_bad_arguments(void **state)
{
    char *out = NULL;
    struct tern_err err = {0};
    static char big[MAILDIR_NAME_MAX + 1];
    assert_int_equal(maildir_name_encode(NULL, 0, &out, &err), TERN_E_USAGE);
    assert_int_equal(maildir_name_encode("a", 1, NULL, &err), TERN_E_USAGE);
    assert_int_equal(maildir_name_decode(NULL, 0, &out, NULL, &err), TERN_E_USAGE);
    memset(big, 'x', sizeof(big));
    assert_int_equal(maildir_name_encode(big, sizeof(big), &out, &err), TERN_E_USAGE);
    assert_non_null(strstr(tern_err_msg(&err), "longer than 4096 bytes"));
    assert_int_equal(maildir_name_encode(big, MAILDIR_NAME_MAX, &out, &err), TERN_OK);
    free(out);
    /* The error slot is optional. */
    assert_int_equal(maildir_name_encode(big, 1, &out, NULL), TERN_OK);
    assert_string_equal(out, "x");
    free(out);
    assert_int_equal(maildir_name_decode(LIT("%"), &out, NULL, NULL), TERN_OK);
    assert_string_equal(out, "");
    free(out);
    tern_err_clear(&err);
}

/* ---- opening ---- */

static void
open_creates_tree(void **state)
{
    struct fixture *f = *state;
    struct stat sb;
    assert_int_equal(
        maildir_open_folder(f->root, LIT("Lists/tern-dev"), MAILDIR_CREATE, &f->md, &f->err),
        TERN_OK);
    char *p = path_join(f->root, "Lists/tern-dev");
    assert_string_equal(maildir_get_path(f->md), p);
    for (int i = 0; i < 3; i++) {
        char *sub = path_join(p, (const char *[]){"cur", "new", "tmp"}[i]);
        assert_int_equal(stat(sub, &sb), 0);
        assert_true(S_ISDIR(sb.st_mode));
        assert_int_equal(sb.st_mode & 077, 0); /* 0700, whatever the umask adds */
        free(sub);
    }
    free(p);
    maildir_close(f->md);
    f->md = NULL;
    /* Opening again without MAILDIR_CREATE finds it. */
    assert_int_equal(maildir_open_folder(f->root, LIT("Lists/tern-dev"), 0, &f->md, &f->err),
                     TERN_OK);
}

static void
open_missing_is_notfound(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(maildir_open_folder(f->root, LIT("Nope"), 0, &f->md, &f->err),
                     TERN_E_NOTFOUND);
    assert_null(f->md);
    assert_int_equal(mkdir(f->root, 0700), 0);
    char *p = path_join(f->root, "Half");
    assert_int_equal(mkdir(p, 0700), 0);
    free(p);
    /* A directory without cur/new/tmp is not a maildir. */
    assert_int_equal(maildir_open_folder(f->root, LIT("Half"), 0, &f->md, &f->err),
                     TERN_E_NOTFOUND);
    assert_non_null(strstr(tern_err_msg(&f->err), "does not exist"));
    assert_int_equal(maildir_open(NULL, 0, &f->md, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_open_folder(f->root, NULL, 0, 0, &f->md, &f->err), TERN_E_USAGE);
}

static void
open_non_directory_is_error(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(mkdir(f->root, 0700), 0);
    char *p = path_join(f->root, "file");
    int fd = open(p, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(maildir_open_folder(f->root, LIT("file"), MAILDIR_CREATE, &f->md, &f->err),
                     TERN_E_IO);
    assert_non_null(strstr(tern_err_msg(&f->err), "exists and is not a directory"));
    assert_non_null(strstr(tern_err_msg(&f->err), p));
    assert_int_equal(maildir_open_folder(f->root, LIT("file/sub"), MAILDIR_CREATE, &f->md, &f->err),
                     TERN_E_IO);
    free(p);

    /* cur as a file inside an otherwise good folder. */
    p = path_join(f->root, "x");
    assert_int_equal(mkdir(p, 0700), 0);
    char *cur = path_join(p, "cur");
    fd = open(cur, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(maildir_open_folder(f->root, LIT("x"), MAILDIR_CREATE, &f->md, &f->err),
                     TERN_E_IO);
    assert_non_null(strstr(tern_err_msg(&f->err), cur));
    free(cur);
    free(p);

    /* The root itself as a file. */
    p = path_join(f->dir, "rootfile");
    fd = open(p, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(maildir_open(p, MAILDIR_CREATE, &f->md, &f->err), TERN_E_IO);
    assert_non_null(strstr(tern_err_msg(&f->err), "not a directory"));
    free(p);
    assert_null(f->md);
}

static void
open_stays_inside_root(void **state)
{
    struct fixture *f = *state;
    struct stat sb;
    char *outside = path_join(f->dir, "outside");
    assert_int_equal(mkdir(outside, 0700), 0);
    assert_int_equal(mkdir(f->root, 0700), 0);

    /* ".." climbs nowhere: it names the directory "%2E." inside the root. */
    assert_int_equal(
        maildir_open_folder(f->root, LIT("../outside"), MAILDIR_CREATE, &f->md, &f->err), TERN_OK);
    assert_int_equal(count_entries(outside), 0);
    char *p = path_join(f->root, "%2E./outside/new");
    assert_int_equal(stat(p, &sb), 0);
    free(p);
    maildir_close(f->md);
    f->md = NULL;

    /* A planted symbolic link below the root is not followed. */
    char *link = path_join(f->root, "link");
    assert_int_equal(symlink(outside, link), 0);
    assert_int_equal(maildir_open_folder(f->root, LIT("link"), MAILDIR_CREATE, &f->md, &f->err),
                     TERN_E_IO);
    assert_int_equal(maildir_open_folder(f->root, LIT("link/x"), MAILDIR_CREATE, &f->md, &f->err),
                     TERN_E_IO);
    assert_int_equal(count_entries(outside), 0);
    free(link);

    /* The root itself may be a link (a user's choice). */
    char *rootlink = path_join(f->dir, "rootlink");
    assert_int_equal(symlink(outside, rootlink), 0);
    assert_int_equal(maildir_open_folder(rootlink, LIT("INBOX"), MAILDIR_CREATE, &f->md, &f->err),
                     TERN_OK);
    assert_int_equal(count_entries(outside), 1);
    free(rootlink);
    free(outside);
}

/* ---- unique names ---- */

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
unique_names_are_unique(void **state)
{
    enum { N = 10000 };
    char **names = calloc(N, sizeof(*names));
    char want[64];
    assert_non_null(names);
    snprintf(want, sizeof(want), "P%ldQ", (long)getpid());
    for (int i = 0; i < N; i++) {
        names[i] = maildir_unique_name();
        assert_non_null(names[i]);
        /* SEC.M<usec>P<pid>Q<n>.HOST, no "/" or ":" anywhere. */
        const char *p = names[i];
        while (*p >= '0' && *p <= '9')
            p++;
        assert_true(p > names[i]);
        assert_memory_equal(p, ".M", 2);
        p += 2;
        while (*p >= '0' && *p <= '9')
            p++;
        assert_memory_equal(p, want, strlen(want));
        assert_null(strchr(names[i], '/'));
        assert_null(strchr(names[i], ':'));
        assert_true(strlen(names[i]) <= 255);
    }
    qsort(names, N, sizeof(*names), cmp_str);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(names[i - 1], names[i]);
    for (int i = 0; i < N; i++)
        free(names[i]);
    free(names);
}

/* ---- batches ---- */

struct scan_count {
    int n, in_new, in_cur;
    uint64_t bytes;
    char flags[16];
};

static enum tern_status
count_cb(const struct maildir_entry *e, void *aux)
{
    struct scan_count *c = aux;
    c->n++;
    if (e->is_new)
        c->in_new++;
    else {
        c->in_cur++;
        snprintf(c->flags, sizeof(c->flags), "%s", e->flags);
    }
    c->bytes += e->size;
    return TERN_OK;
}

static void
batch_commits_1000(void **state)
{
    struct fixture *f = *state;
    struct maildir_batch *b;
    struct timespec t0, t1;
    enum { N = 1000 };
    uint64_t total = 0;
    open_inbox(f);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    for (int i = 0; i < N; i++) {
        size_t idx = add_message(b, f->md, i % 10 == 0 ? "SF" : NULL, i, &f->err);
        assert_int_equal(idx, (size_t)i);
        assert_non_null(maildir_batch_name(b, idx));
        assert_int_equal(maildir_batch_finish(b, idx, &f->err), TERN_OK);
        size_t len;
        free(message_text(i, &len));
        total += len;
        assert_int_equal(maildir_batch_size(b, idx), len);
    }
    assert_int_equal(maildir_batch_count(b), N);
    assert_int_equal(maildir_batch_bytes(b), total);
    assert_int_equal(count_sub(f, "tmp"), N);
    assert_int_equal(count_sub(f, "new"), 0);
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    print_message("1,000 messages written and committed in %.3f s\n",
                  (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    assert_int_equal(count_sub(f, "tmp"), 0);
    assert_int_equal(count_sub(f, "new"), N - N / 10);
    assert_int_equal(count_sub(f, "cur"), N / 10);

    /* The names the batch gives are the files now in place, with content. */
    for (int i = 0; i < N; i += 97) {
        const char *file = maildir_batch_file(b, (size_t)i);
        assert_non_null(file);
        if (i % 10 == 0) {
            assert_memory_equal(file, "cur/", 4);
            assert_string_equal(file + strlen(file) - 5, ":2,FS");
        } else
            assert_memory_equal(file, "new/", 4);
        const char *name = maildir_batch_name(b, (size_t)i);
        assert_memory_equal(file + 4, name, strlen(name));
        char *p = path_join(maildir_get_path(f->md), file);
        int fd = open(p, O_RDONLY);
        assert_true(fd >= 0);
        size_t len, wantlen;
        char *got = slurp_fd(fd, &len);
        char *want = message_text(i, &wantlen);
        assert_int_equal(len, wantlen);
        assert_memory_equal(got, want, len);
        free(got);
        free(want);
        close(fd);
        free(p);
    }
    struct scan_count c = {0};
    assert_int_equal(maildir_scan(f->md, count_cb, &c, &f->err), TERN_OK);
    assert_int_equal(c.n, N);
    assert_int_equal(c.in_cur, N / 10);
    assert_string_equal(c.flags, "FS");
    assert_int_equal(c.bytes, total);

    /* Names: borrowed, then taken (owned), then gone from the batch. */
    char *name = maildir_batch_take_name(b, 5);
    assert_non_null(name);
    assert_null(maildir_batch_name(b, 5));
    assert_null(maildir_batch_take_name(b, 5));
    assert_null(maildir_batch_name(b, N));
    assert_int_equal(maildir_msg_find(f->md, name, NULL, &f->err), TERN_OK);
    free(name);
    /* A committed batch takes nothing more. */
    size_t idx;
    assert_int_equal(maildir_batch_add(b, f->md, NULL, &idx, NULL, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_E_USAGE);
    maildir_batch_free(b);
    assert_int_equal(count_sub(f, "new"), N - N / 10);
}

static void
batch_streams_through_fd(void **state)
{
    struct fixture *f = *state;
    struct maildir_batch *b;
    size_t idx;
    int fd;
    char chunk[65536];
    open_inbox(f);
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    assert_int_equal(maildir_batch_add(b, f->md, NULL, &idx, &fd, &f->err), TERN_OK);
    assert_true(fd >= 0);
    /* 8 MiB in 64 KiB chunks, half through the descriptor, half through us. */
    for (int i = 0; i < 128; i++) {
        memset(chunk, 'A' + i % 26, sizeof(chunk));
        if (i % 2)
            assert_int_equal(write(fd, chunk, sizeof(chunk)), (ssize_t)sizeof(chunk));
        else
            assert_int_equal(maildir_batch_write(b, idx, chunk, sizeof(chunk), &f->err), TERN_OK);
    }
    assert_int_equal(maildir_batch_bytes(b), 64 * sizeof(chunk));
    assert_int_equal(maildir_batch_finish(b, idx, &f->err), TERN_OK);
    assert_int_equal(maildir_batch_size(b, idx), 128 * sizeof(chunk));
    assert_int_equal(maildir_batch_bytes(b), 128 * sizeof(chunk));
    /* A finished message takes no more bytes. */
    assert_int_equal(maildir_batch_write(b, idx, "x", 1, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_batch_finish(b, idx, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_batch_write(b, 7, "x", 1, &f->err), TERN_E_USAGE);
    /* An empty message is a message too. */
    assert_int_equal(maildir_batch_add(b, f->md, "", &idx, NULL, &f->err), TERN_OK);
    assert_int_equal(maildir_batch_write(b, idx, NULL, 0, &f->err), TERN_OK);
    assert_int_equal(maildir_batch_write(b, idx, NULL, 5, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    assert_int_equal(maildir_batch_size(b, idx), 0);
    assert_string_equal(maildir_batch_file(b, idx) + strlen(maildir_batch_file(b, idx)) - 3, ":2,");
    struct scan_count c = {0};
    assert_int_equal(maildir_scan(f->md, count_cb, &c, &f->err), TERN_OK);
    assert_int_equal(c.n, 2);
    assert_int_equal(c.bytes, 128 * sizeof(chunk));
    maildir_batch_free(b);
}

static void
batch_discard_abort_free(void **state)
{
    struct fixture *f = *state;
    struct maildir_batch *b;
    size_t idx;
    open_inbox(f);

    /* Discard drops one message and keeps the rest. */
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    add_message(b, f->md, NULL, 0, &f->err);
    idx = add_message(b, f->md, NULL, 1, &f->err);
    add_message(b, f->md, NULL, 2, &f->err);
    maildir_batch_discard(b, idx);
    maildir_batch_discard(b, idx); /* twice is harmless */
    maildir_batch_discard(b, 99);
    assert_null(maildir_batch_name(b, idx));
    assert_null(maildir_batch_file(b, idx));
    assert_int_equal(count_sub(f, "tmp"), 2);
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    assert_int_equal(count_sub(f, "new"), 2);
    assert_int_equal(count_sub(f, "tmp"), 0);
    maildir_batch_free(b);

    /* Abort removes the tmp files and ends the batch. */
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    add_message(b, f->md, NULL, 3, &f->err);
    add_message(b, f->md, "S", 4, &f->err);
    assert_int_equal(count_sub(f, "tmp"), 2);
    maildir_batch_abort(b);
    assert_int_equal(count_sub(f, "tmp"), 0);
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_E_USAGE);
    assert_non_null(strstr(tern_err_msg(&f->err), "failed"));
    assert_int_equal(maildir_batch_add(b, f->md, NULL, &idx, NULL, &f->err), TERN_E_USAGE);
    maildir_batch_free(b);

    /* Freeing an uncommitted batch aborts it. */
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    add_message(b, f->md, NULL, 5, &f->err);
    maildir_batch_free(b);
    assert_int_equal(count_sub(f, "tmp"), 0);
    assert_int_equal(count_sub(f, "new"), 2);
    maildir_batch_free(NULL);

    /* Bad flags are refused without harming the batch. */
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    assert_int_equal(maildir_batch_add(b, f->md, "S1", &idx, NULL, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_batch_add(b, f->md, "S/", &idx, NULL, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_batch_add(b, NULL, NULL, &idx, NULL, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_batch_add(NULL, f->md, NULL, &idx, NULL, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_batch_add(b, f->md, "TSFSaD", &idx, NULL, &f->err), TERN_OK);
    assert_string_equal(strchr(maildir_batch_file(b, idx), ':'), ":2,DFSTa");
    /* An empty batch, or one of only discarded messages, commits. */
    maildir_batch_discard(b, idx);
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    maildir_batch_free(b);
    assert_int_equal(maildir_batch_new(NULL, &f->err), TERN_E_USAGE);
    assert_int_equal(count_sub(f, "new") + count_sub(f, "cur") + count_sub(f, "tmp"), 2);
}

static void
batch_spans_maildirs(void **state)
{
    struct fixture *f = *state;
    struct maildir *other = NULL;
    struct maildir_batch *b;
    open_inbox(f);
    char *outbox = path_join(f->dir, "outbox");
    assert_int_equal(maildir_open(outbox, MAILDIR_CREATE, &other, &f->err), TERN_OK);
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    for (int i = 0; i < 10; i++)
        add_message(b, i % 2 ? other : f->md, i % 3 ? NULL : "S", i, &f->err);
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    struct scan_count c1 = {0}, c2 = {0};
    assert_int_equal(maildir_scan(f->md, count_cb, &c1, &f->err), TERN_OK);
    assert_int_equal(maildir_scan(other, count_cb, &c2, &f->err), TERN_OK);
    assert_int_equal(c1.n, 5);
    assert_int_equal(c2.n, 5);
    maildir_batch_free(b);
    maildir_close(other);
    free(outbox);
}

/* ---- failures: injected at commit steps, and EFBIG ---- */

struct inject {
    enum maildir_step step;
    size_t index;
    int errnum;
};

static int
inject_hook(enum maildir_step step, size_t i, void *aux)
{
    const struct inject *in = aux;
    return step == in->step && i == in->index ? in->errnum : 0;
}

/* Commits one message (the "earlier batch") and returns its file, owned. */
static char *
earlier_batch(struct fixture *f)
{
    struct maildir_batch *b;
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    size_t idx = add_message(b, f->md, NULL, 999, &f->err);
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    char *file = path_join(maildir_get_path(f->md), maildir_batch_file(b, idx));
    maildir_batch_free(b);
    return file;
}

static void
check_earlier_intact(const char *file)
{
    size_t len, wantlen;
    int fd = open(file, O_RDONLY);
    assert_true(fd >= 0);
    char *got = slurp_fd(fd, &len);
    char *want = message_text(999, &wantlen);
    assert_int_equal(len, wantlen);
    assert_memory_equal(got, want, len);
    free(got);
    free(want);
    close(fd);
}

static void
check_injected(struct fixture *f, enum maildir_step step, size_t index, int errnum,
               const char *sentence)
{
    struct maildir_batch *b;
    struct inject in = {step, index, errnum};
    char *earlier = earlier_batch(f);
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    for (int i = 0; i < 6; i++)
        add_message(b, f->md, i % 2 ? "S" : NULL, i, &f->err);
    maildir_set_commit_hook(inject_hook, &in);
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_E_IO);
    maildir_set_commit_hook(NULL, NULL);
    assert_non_null(strstr(tern_err_msg(&f->err), sentence));
    assert_non_null(strstr(tern_err_msg(&f->err), strerror(errnum)));
    assert_non_null(strstr(tern_err_msg(&f->err), maildir_get_path(f->md)));
    /* Nothing of this batch remains anywhere; the earlier one is whole. */
    assert_int_equal(count_sub(f, "tmp"), 0);
    assert_int_equal(count_sub(f, "new") + count_sub(f, "cur"), 1);
    check_earlier_intact(earlier);
    assert_null(maildir_batch_name(b, 0));
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_E_USAGE);
    maildir_batch_free(b);
    unlink(earlier);
    free(earlier);
}

static void
batch_failures_clean_up(void **state)
{
    struct fixture *f = *state;
    open_inbox(f);
    check_injected(f, MAILDIR_STEP_SYNC, 0, EIO, "cannot sync the messages in");
    check_injected(f, MAILDIR_STEP_RENAME, 0, ENOSPC, "cannot move");
    check_injected(f, MAILDIR_STEP_RENAME, 3, EIO, "cannot move");
    check_injected(f, MAILDIR_STEP_RENAME, 5, EROFS, "/tmp/");
    check_injected(f, MAILDIR_STEP_DIRSYNC, 0, EIO, "cannot sync directory");
}

/*
 * In a child with RLIMIT_FSIZE of 64 KiB and SIGXFSZ ignored: an earlier
 * batch commits, then a write past the limit fails with EFBIG. The child
 * checks and reports through its exit status (the line that failed).
 */
static int
efbig_child(struct fixture *f)
{
    struct rlimit rl = {65536, 65536};
    char chunk[8192];
    struct maildir_batch *b;
    size_t idx;
    enum tern_status st = TERN_OK;
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
        return __LINE__;
    char *earlier = earlier_batch(f);
    if (maildir_batch_new(&b, &f->err))
        return __LINE__;
    add_message(b, f->md, NULL, 1, &f->err);
    if (maildir_batch_add(b, f->md, NULL, &idx, NULL, &f->err))
        return __LINE__;
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < 16 && !st; i++)
        st = maildir_batch_write(b, idx, chunk, sizeof(chunk), &f->err);
    if (st != TERN_E_IO)
        return __LINE__;
    if (!strstr(tern_err_msg(&f->err), "cannot write ") ||
        !strstr(tern_err_msg(&f->err), strerror(EFBIG)) || !strstr(tern_err_msg(&f->err), "/tmp/"))
        return __LINE__;
    if (count_sub(f, "tmp") != 0 || count_sub(f, "new") != 1)
        return __LINE__;
    if (maildir_batch_commit(b, &f->err) != TERN_E_USAGE)
        return __LINE__;
    maildir_batch_free(b);
    check_earlier_intact(earlier);
    free(earlier);
    return 0;
}

static void
batch_efbig_reports_and_cleans(void **state)
{
    struct fixture *f = *state;
    int status;
    open_inbox(f);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(efbig_child(f));
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* Seen from here too: one message, nothing in tmp/. */
    assert_int_equal(count_sub(f, "tmp"), 0);
    assert_int_equal(count_sub(f, "new"), 1);
}

/* ---- crash safety ---- */

struct crash_at {
    enum maildir_step step;
    size_t index;
};

static int
crash_hook(enum maildir_step step, size_t i, void *aux)
{
    const struct crash_at *at = aux;
    if (step == at->step && (step != MAILDIR_STEP_RENAME || i == at->index))
        _exit(0);
    return 0;
}

/* Every message scan reports is complete: exactly the text of its index. */
static void
check_complete(struct maildir *md, const struct maildir_entry *e)
{
    int fd;
    size_t len, wantlen;
    struct tern_err err = {0};
    assert_int_equal(maildir_msg_open(md, e->file, &fd, &err), TERN_OK);
    char *got = slurp_fd(fd, &len);
    close(fd);
    assert_int_equal(len, e->size);
    const char *s = strstr(got, "Subject: message ");
    assert_non_null(s);
    int i = (int)strtol(s + strlen("Subject: message "), NULL, 10);
    char *want = message_text(i, &wantlen);
    assert_int_equal(len, wantlen);
    assert_memory_equal(got, want, len);
    free(got);
    free(want);
}

struct complete_scan {
    struct maildir *md;
    int n;
};

static enum tern_status
complete_scan_cb(const struct maildir_entry *e, void *aux)
{
    struct complete_scan *c = aux;
    check_complete(c->md, e);
    /* What is still in tmp/ never shows up as a message. */
    char *p = path_join(maildir_get_path(c->md), "tmp");
    char *q = path_join(p, e->name);
    assert_false(access(q, F_OK) == 0);
    free(p);
    free(q);
    c->n++;
    return TERN_OK;
}

static void
crash_case(struct fixture *f, struct crash_at *at, bool complete, int want_msgs, int want_tmp)
{
    enum { N = 20 };
    int status;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct maildir_batch *b;
        maildir_set_commit_hook(at ? crash_hook : NULL, at);
        if (maildir_batch_new(&b, &f->err))
            _exit(1);
        for (int i = 0; i < N; i++)
            add_message(b, f->md, i % 4 ? NULL : "S", i, &f->err);
        maildir_batch_commit(b, &f->err);
        _exit(complete ? 0 : 2); /* the hook should have ended us */
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    struct complete_scan c = {f->md, 0};
    assert_int_equal(maildir_scan(f->md, complete_scan_cb, &c, &f->err), TERN_OK);
    assert_int_equal(c.n, want_msgs);
    assert_int_equal(count_sub(f, "tmp"), want_tmp);

    /* The next run's cleanup: leftovers are removed, messages stay. */
    unsigned removed;
    assert_int_equal(maildir_clean_tmp(f->md, 0, &removed, &f->err), TERN_OK);
    assert_int_equal(removed, (unsigned)want_tmp);
    assert_int_equal(count_sub(f, "tmp"), 0);
    c.n = 0;
    assert_int_equal(maildir_scan(f->md, complete_scan_cb, &c, &f->err), TERN_OK);
    assert_int_equal(c.n, want_msgs);

    /* Start the next case from an empty folder. */
    char *dirs[] = {"new", "cur"};
    for (int k = 0; k < 2; k++) {
        char *p = path_join(maildir_get_path(f->md), dirs[k]);
        DIR *d = opendir(p);
        struct dirent *de;
        assert_non_null(d);
        while ((de = readdir(d)))
            if (de->d_name[0] != '.')
                assert_int_equal(unlinkat(dirfd(d), de->d_name, 0), 0);
        closedir(d);
        free(p);
    }
}

static void
crash_at_every_step(void **state)
{
    struct fixture *f = *state;
    open_inbox(f);
    struct crash_at before_sync = {MAILDIR_STEP_SYNC, 0};
    struct crash_at after_sync = {MAILDIR_STEP_RENAME, 0};
    struct crash_at half = {MAILDIR_STEP_RENAME, 10};
    struct crash_at before_dirsync = {MAILDIR_STEP_DIRSYNC, 0};
    struct crash_at after_dirsync = {MAILDIR_STEP_DONE, 0};
    crash_case(f, &before_sync, false, 0, 20);
    crash_case(f, &after_sync, false, 0, 20);
    crash_case(f, &half, false, 10, 10);
    crash_case(f, &before_dirsync, false, 20, 0);
    crash_case(f, &after_dirsync, false, 20, 0);
    crash_case(f, NULL, true, 20, 0);
}

/* ---- stale tmp files ---- */

static void
make_tmp_file(struct fixture *f, const char *name, time_t age)
{
    char *p = path_join(maildir_get_path(f->md), name);
    int fd = open(p, O_CREAT | O_WRONLY | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "partial", 7), 7);
    close(fd);
    if (age) {
        struct timespec ts[2] = {{time(NULL) - age, 0}, {time(NULL) - age, 0}};
        assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
    }
    free(p);
}

static void
stale_tmp_removed_on_open(void **state)
{
    struct fixture *f = *state;
    open_inbox(f);
    make_tmp_file(f, "tmp/old", 37 * 3600);
    make_tmp_file(f, "tmp/young", 35 * 3600);
    make_tmp_file(f, "tmp/fresh", 0);
    char *sub = path_join(maildir_get_path(f->md), "tmp/olddir");
    assert_int_equal(mkdir(sub, 0700), 0);
    maildir_close(f->md);
    f->md = NULL;
    open_inbox(f);
    char *old = path_join(maildir_get_path(f->md), "tmp/old");
    char *young = path_join(maildir_get_path(f->md), "tmp/young");
    assert_int_equal(access(old, F_OK), -1);
    assert_int_equal(access(young, F_OK), 0);
    assert_int_equal(count_sub(f, "tmp"), 3); /* young, fresh, the directory */
    unsigned removed;
    assert_int_equal(maildir_clean_tmp(f->md, 3600, &removed, &f->err), TERN_OK);
    assert_int_equal(removed, 1);
    assert_int_equal(access(young, F_OK), -1);
    assert_int_equal(maildir_clean_tmp(NULL, 0, &removed, &f->err), TERN_E_USAGE);
    free(old);
    free(young);
    free(sub);
}

static void
own_tmp_files_removed(void **state)
{
    struct fixture *f = *state;
    open_inbox(f);
    char *mine = maildir_unique_name();
    struct tbuf t;
    tbuf_init(&t, 0);
    assert_int_equal(tbuf_addf(&t, "tmp/%s", mine), TERN_OK);
    make_tmp_file(f, tbuf_ptr(&t), 0);
    tbuf_free(&t);
    /* Another process's and another host's names stay. */
    char *other = maildir_unique_name();
    char *q = strchr(other, 'P');
    assert_non_null(q);
    tbuf_init(&t, 0);
    assert_int_equal(tbuf_addf(&t, "tmp/%.*sP999999999%s", (int)(q - other), other, strchr(q, 'Q')),
                     TERN_OK);
    make_tmp_file(f, tbuf_ptr(&t), 0);
    tbuf_free(&t);
    tbuf_init(&t, 0);
    assert_int_equal(tbuf_addf(&t, "tmp/%.*s.elsewhere", (int)(strrchr(other, '.') - other), other),
                     TERN_OK);
    make_tmp_file(f, tbuf_ptr(&t), 0);
    tbuf_free(&t);
    make_tmp_file(f, "tmp/garbage", 0);
    unsigned removed;
    assert_int_equal(maildir_clean_own_tmp(f->md, &removed, &f->err), TERN_OK);
    assert_int_equal(removed, 1);
    assert_int_equal(count_sub(f, "tmp"), 3);
    free(mine);
    free(other);
}

/* ---- scanning, reading, flags, deletion ---- */

struct collect {
    char names[8][300];
    char flags[8][64];
    bool is_new[8];
    uint64_t size[8];
    int n;
};

static enum tern_status
collect_cb(const struct maildir_entry *e, void *aux)
{
    struct collect *c = aux;
    assert_true(c->n < 8);
    snprintf(c->names[c->n], sizeof(c->names[0]), "%s", e->name);
    snprintf(c->flags[c->n], sizeof(c->flags[0]), "%s", e->flags);
    c->is_new[c->n] = e->is_new;
    c->size[c->n] = e->size;
    assert_true(e->mtime > 0);
    c->n++;
    return TERN_OK;
}

static int
find_collected(const struct collect *c, const char *name)
{
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->names[i], name))
            return i;
    return -1;
}

static enum tern_status
stop_cb(const struct maildir_entry *e, void *aux)
{
    (*(int *)aux)++;
    return TERN_E_CANCELED;
}

static void
scan_reports_messages_only(void **state)
{
    struct fixture *f = *state;
    open_inbox(f);
    make_tmp_file(f, "new/1000.M1P1Q1.host", 0);
    make_tmp_file(f, "cur/1001.M1P1Q1.host:2,RS", 0);
    make_tmp_file(f, "cur/1002.M1P1Q1.host", 0);       /* no info */
    make_tmp_file(f, "cur/1003.M1P1Q1.host:1,xyz", 0); /* experimental info */
    make_tmp_file(f, "cur/.hidden", 0);
    make_tmp_file(f, "tmp/1004.M1P1Q1.host", 0);
    char *p = path_join(maildir_get_path(f->md), "cur/subdir");
    assert_int_equal(mkdir(p, 0700), 0);
    free(p);
    p = path_join(maildir_get_path(f->md), "new/link");
    assert_int_equal(symlink("/etc/passwd", p), 0);
    free(p);

    struct collect c = {0};
    assert_int_equal(maildir_scan(f->md, collect_cb, &c, &f->err), TERN_OK);
    assert_int_equal(c.n, 4);
    int i = find_collected(&c, "1000.M1P1Q1.host");
    assert_true(i >= 0 && c.is_new[i] && !strcmp(c.flags[i], "") && c.size[i] == 7);
    i = find_collected(&c, "1001.M1P1Q1.host");
    assert_true(i >= 0 && !c.is_new[i] && !strcmp(c.flags[i], "RS"));
    i = find_collected(&c, "1002.M1P1Q1.host");
    assert_true(i >= 0 && !strcmp(c.flags[i], ""));
    i = find_collected(&c, "1003.M1P1Q1.host");
    assert_true(i >= 0 && !strcmp(c.flags[i], ""));
    assert_true(find_collected(&c, "1004.M1P1Q1.host") < 0);

    /* The callback's status stops the scan. */
    int calls = 0;
    assert_int_equal(maildir_scan(f->md, stop_cb, &calls, &f->err), TERN_E_CANCELED);
    assert_int_equal(calls, 1);
    assert_int_equal(maildir_scan(f->md, NULL, NULL, &f->err), TERN_E_USAGE);
}

/* Delivers one message to new/ and returns its unique name (owned). */
static char *
deliver_one(struct fixture *f, int i)
{
    struct maildir_batch *b;
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    size_t idx = add_message(b, f->md, NULL, i, &f->err);
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    char *name = maildir_batch_take_name(b, idx);
    maildir_batch_free(b);
    return name;
}

static void
check_file(struct fixture *f, const char *name, const char *want)
{
    char *file = NULL;
    assert_int_equal(maildir_msg_find(f->md, name, &file, &f->err), TERN_OK);
    assert_string_equal(file, want);
    free(file);
}

static void
flags_rename(void **state)
{
    struct fixture *f = *state;
    struct tbuf want;
    open_inbox(f);
    char *name = deliver_one(f, 7);
    tbuf_init(&want, 0);

    assert_int_equal(tbuf_addf(&want, "new/%s", name), TERN_OK);
    check_file(f, name, tbuf_ptr(&want));

    /* Seen: from new/ to cur/. */
    assert_int_equal(maildir_msg_set_flags(f->md, name, "S", &f->err), TERN_OK);
    tbuf_reset(&want);
    assert_int_equal(tbuf_addf(&want, "cur/%s:2,S", name), TERN_OK);
    check_file(f, name, tbuf_ptr(&want));
    assert_int_equal(count_sub(f, "new"), 0);

    /* Sorted, without duplicates; the same set again changes nothing. */
    assert_int_equal(maildir_msg_set_flags(f->md, name, "TSFST", &f->err), TERN_OK);
    tbuf_reset(&want);
    assert_int_equal(tbuf_addf(&want, "cur/%s:2,FST", name), TERN_OK);
    check_file(f, name, tbuf_ptr(&want));
    assert_int_equal(maildir_msg_set_flags(f->md, name, "FST", &f->err), TERN_OK);
    check_file(f, name, tbuf_ptr(&want));

    /* A stale hint still finds the message (another client renamed it). */
    tbuf_reset(&want);
    assert_int_equal(tbuf_addf(&want, "%s:2,S", name), TERN_OK);
    assert_int_equal(maildir_msg_set_flags(f->md, tbuf_ptr(&want), "", &f->err), TERN_OK);
    tbuf_reset(&want);
    assert_int_equal(tbuf_addf(&want, "cur/%s:2,", name), TERN_OK);
    check_file(f, name, tbuf_ptr(&want));
    struct collect c = {0};
    assert_int_equal(maildir_scan(f->md, collect_cb, &c, &f->err), TERN_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.flags[0], "");
    assert_false(c.is_new[0]);

    /* Reading by name (with or without the info) gives the message. */
    int fd;
    size_t len, wantlen;
    assert_int_equal(maildir_msg_open(f->md, name, &fd, &f->err), TERN_OK);
    char *got = slurp_fd(fd, &len);
    close(fd);
    char *text = message_text(7, &wantlen);
    assert_int_equal(len, wantlen);
    assert_memory_equal(got, text, len);
    free(got);
    free(text);

    /* Bad flags and bad names. */
    assert_int_equal(maildir_msg_set_flags(f->md, name, "S!", &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_msg_set_flags(f->md, name, NULL, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_msg_set_flags(f->md, "../x", "S", &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_msg_set_flags(f->md, ".x", "S", &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_msg_set_flags(f->md, "", "S", &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_msg_open(f->md, NULL, &fd, &f->err), TERN_E_USAGE);
    assert_int_equal(maildir_msg_set_flags(f->md, "123.M1P1Q1.nohost", "S", &f->err),
                     TERN_E_NOTFOUND);
    assert_non_null(strstr(tern_err_msg(&f->err), "no message 123.M1P1Q1.nohost"));
    /* A prefix of a name is not the name. */
    tbuf_reset(&want);
    assert_int_equal(tbuf_add(&want, name, strlen(name) - 1), TERN_OK);
    assert_int_equal(maildir_msg_open(f->md, tbuf_ptr(&want), &fd, &f->err), TERN_E_NOTFOUND);

    /* Deletion. */
    assert_int_equal(maildir_sync_dirs(f->md, &f->err), TERN_OK);
    assert_int_equal(maildir_msg_delete(f->md, name, &f->err), TERN_OK);
    assert_int_equal(maildir_msg_delete(f->md, name, &f->err), TERN_E_NOTFOUND);
    assert_int_equal(maildir_msg_open(f->md, name, &fd, &f->err), TERN_E_NOTFOUND);
    assert_int_equal(count_sub(f, "cur"), 0);
    tbuf_free(&want);
    free(name);
}

#ifdef MAILDIR_TEST_WRAP
static void
reset_counts(void)
{
    syncfs_calls = fsync_calls = fdatasync_calls = 0;
    syncfs_errno = fsync_errno = 0;
}

/* One syncfs for the whole batch, one fsync per target directory. */
static void
wrap_one_sync_per_commit(void **state)
{
    struct fixture *f = *state;
    struct maildir_batch *b;
    open_inbox(f);
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    for (int i = 0; i < 50; i++)
        add_message(b, f->md, i % 5 ? NULL : "S", i, &f->err);
    reset_counts();
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    assert_int_equal(syncfs_calls, 1);
    assert_int_equal(fdatasync_calls, 0);
    assert_int_equal(fsync_calls, 2); /* new/ and cur/ */
    maildir_batch_free(b);

    /* Only new/: one directory fsync. */
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    add_message(b, f->md, NULL, 1, &f->err);
    reset_counts();
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    assert_int_equal(syncfs_calls, 1);
    assert_int_equal(fsync_calls, 1);
    maildir_batch_free(b);

    /* Nothing to commit: no sync at all. */
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    reset_counts();
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    assert_int_equal(syncfs_calls + fsync_calls + fdatasync_calls, 0);
    maildir_batch_free(b);
}

/* Without syncfs (ENOSYS), each file gets an fdatasync instead. */
static void
wrap_fdatasync_fallback(void **state)
{
    struct fixture *f = *state;
    struct maildir_batch *b;
    open_inbox(f);
    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    for (int i = 0; i < 30; i++)
        add_message(b, f->md, NULL, i, &f->err);
    reset_counts();
    syncfs_errno = ENOSYS;
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_OK);
    assert_int_equal(fdatasync_calls, 30);
    assert_int_equal(count_sub(f, "new"), 30);
    reset_counts();
    maildir_batch_free(b);
}

/* Real sync errors (not the hook): the batch is gone, the rest stays. */
static void
wrap_sync_errors(void **state)
{
    struct fixture *f = *state;
    struct maildir_batch *b;
    open_inbox(f);
    char *earlier = earlier_batch(f);

    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    for (int i = 0; i < 5; i++)
        add_message(b, f->md, NULL, i, &f->err);
    reset_counts();
    syncfs_errno = EIO;
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_E_IO);
    assert_non_null(strstr(tern_err_msg(&f->err), strerror(EIO)));
    assert_int_equal(count_sub(f, "tmp"), 0);
    assert_int_equal(count_sub(f, "new"), 1);
    maildir_batch_free(b);

    assert_int_equal(maildir_batch_new(&b, &f->err), TERN_OK);
    for (int i = 0; i < 5; i++)
        add_message(b, f->md, "S", i, &f->err);
    reset_counts();
    fsync_errno = ENOSPC;
    assert_int_equal(maildir_batch_commit(b, &f->err), TERN_E_IO);
    assert_non_null(strstr(tern_err_msg(&f->err), "cannot sync directory"));
    assert_non_null(strstr(tern_err_msg(&f->err), "/cur"));
    assert_int_equal(count_sub(f, "tmp"), 0);
    assert_int_equal(count_sub(f, "cur"), 0);
    assert_int_equal(count_sub(f, "new"), 1);
    check_earlier_intact(earlier);
    reset_counts();
    maildir_batch_free(b);
    free(earlier);
}

/* Every allocation failure is TERN_E_NOMEM and leaks nothing. */
static void
wrap_alloc_failures(void **state)
{
    struct fixture *f = *state;
    static const char name[] = "Lists/\xC3\xA9t\xC3\xA9/../cur/%\n";
    enum tern_status st;
    open_inbox(f);
    for (long n = 0;; n++) {
        char *out = NULL, *back = NULL;
        struct tern_err err = {0};
        alloc_count = 0;
        alloc_fail_at = n;
        st = maildir_name_encode(name, sizeof(name) - 1, &out, &err);
        if (!st) {
            st = maildir_name_decode(out, strlen(out), &back, NULL, &err);
            free(out);
        }
        alloc_fail_at = -1;
        free(back);
        tern_err_clear(&err);
        if (st == TERN_OK)
            break;
        assert_int_equal(st, TERN_E_NOMEM);
    }
    for (long n = 0;; n++) {
        struct maildir_batch *b = NULL;
        size_t idx;
        alloc_count = 0;
        alloc_fail_at = n;
        st = maildir_batch_new(&b, NULL);
        for (int i = 0; !st && i < 3; i++)
            st = maildir_batch_add(b, f->md, i ? "S" : NULL, &idx, NULL, NULL);
        if (!st)
            st = maildir_batch_write(b, idx, "x", 1, NULL);
        if (!st)
            st = maildir_batch_commit(b, NULL);
        alloc_fail_at = -1;
        maildir_batch_free(b);
        if (st == TERN_OK)
            break;
        assert_int_equal(st, TERN_E_NOMEM);
        assert_int_equal(count_sub(f, "tmp"), 0);
        assert_int_equal(count_sub(f, "new") + count_sub(f, "cur"), 0);
    }
    assert_int_equal(count_sub(f, "new") + count_sub(f, "cur"), 3);
}
#endif

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(name_plain_names_unchanged),
        cmocka_unit_test(name_hostile_components_encoded),
        cmocka_unit_test(name_long_components_split),
        cmocka_unit_test(name_random_roundtrips),
        cmocka_unit_test(name_decode_rejects_foreign_paths),
        cmocka_unit_test(name_bad_arguments),
        cmocka_unit_test_setup_teardown(open_creates_tree, setup, teardown),
        cmocka_unit_test_setup_teardown(open_missing_is_notfound, setup, teardown),
        cmocka_unit_test_setup_teardown(open_non_directory_is_error, setup, teardown),
        cmocka_unit_test_setup_teardown(open_stays_inside_root, setup, teardown),
        cmocka_unit_test(unique_names_are_unique),
        cmocka_unit_test_setup_teardown(batch_commits_1000, setup, teardown),
        cmocka_unit_test_setup_teardown(batch_streams_through_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(batch_discard_abort_free, setup, teardown),
        cmocka_unit_test_setup_teardown(batch_spans_maildirs, setup, teardown),
        cmocka_unit_test_setup_teardown(batch_failures_clean_up, setup, teardown),
        cmocka_unit_test_setup_teardown(batch_efbig_reports_and_cleans, setup, teardown),
        cmocka_unit_test_setup_teardown(crash_at_every_step, setup, teardown),
        cmocka_unit_test_setup_teardown(stale_tmp_removed_on_open, setup, teardown),
        cmocka_unit_test_setup_teardown(own_tmp_files_removed, setup, teardown),
        cmocka_unit_test_setup_teardown(scan_reports_messages_only, setup, teardown),
        cmocka_unit_test_setup_teardown(flags_rename, setup, teardown),
#ifdef MAILDIR_TEST_WRAP
        cmocka_unit_test_setup_teardown(wrap_one_sync_per_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(wrap_fdatasync_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(wrap_sync_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(wrap_alloc_failures, setup, teardown),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
