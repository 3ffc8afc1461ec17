"""Tests of tests/check-layers and tests/check-banned on small fake trees.

Layer: tests/integration (needs no server). Each case builds a source tree
with one rule broken (or none) and checks the verdict and the message. The
repository itself is checked by tests/run, which runs both scripts.
"""

import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import tern  # noqa: E402

LAYERS = os.path.join(tern.REPO, "tests", "check-layers")
BANNED = os.path.join(tern.REPO, "tests", "check-banned")

BASE = {
    "include/tern.h": "#include <stddef.h>\n#include <stdio.h>\n",
    "proto/tbuf.h": '#include "tern.h"\n',
    "proto/imap.h": '#include "tbuf.h"\n',
    "src/config.h": '#include "tern.h"\n',
    "src/store.h": '#include "tern.h"\n',
    "ui/screen.h": '#include "tern.h"\n',
}


class Tree:
    def __init__(self, extra):
        self.tmp = tempfile.TemporaryDirectory()
        files = dict(BASE)
        files.update(extra)
        for rel, text in files.items():
            path = os.path.join(self.tmp.name, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)

    def run(self, script):
        proc = subprocess.run([script, self.tmp.name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        return proc.returncode, proc.stdout.decode() + proc.stderr.decode()

    def close(self):
        self.tmp.cleanup()


class CheckLayersTest(unittest.TestCase):
    def verdict(self, files):
        tree = Tree(files)
        try:
            return tree.run(LAYERS)
        finally:
            tree.close()

    def test_clean_tree_passes(self):
        rc, out = self.verdict({
            "proto/imap.c": '#include <stdlib.h>\n#include <openssl/ssl.h>\n#include "imap.h"\n'
                            '#include "tern.h"\n#include "config.h"\n',
            "src/store.c": '#include <lmdb.h>\n#include <notmuch.h>\n#include "store.h"\n'
                           '#include "imap.h"\n',
            "ui/screen.c": '#include <ncursesw/curses.h>\n#include "screen.h"\n'
                           '#include "tern.h"\n',
        })
        self.assertEqual(rc, 0, out)

    def test_violations(self):
        cases = [
            ("proto/x.c", "#include <lmdb.h>\n", "lmdb.h"),
            ("proto/x.c", "#  include <gmime/gmime.h>\n", "gmime/gmime.h"),
            ("proto/x.c", "#include <notmuch.h>\n", "notmuch.h"),
            ("proto/x.c", "#include <ncurses.h>\n", "ncurses.h"),
            ("proto/x.c", '#include "store.h"\n', "store.h"),
            ("proto/x.h", '#include "screen.h"\n', "screen.h"),
            ("ui/x.c", "#include <openssl/ssl.h>\n", "openssl/ssl.h"),
            ("ui/x.c", "#include <sys/socket.h>\n", "sys/socket.h"),
            ("ui/x.c", "#include <netdb.h>\n", "netdb.h"),
            ("ui/x.c", "#include <netinet/in.h>\n", "netinet/in.h"),
            ("ui/x.c", '#include "imap.h"\n', "imap.h"),
            ("src/x.c", "#include <curses.h>\n", "curses.h"),
            ("src/cli/x.c", '#include "screen.h"\n', "screen.h"),
            ("include/tern2.h", "#include <lmdb.h>\n", "lmdb.h"),
        ]
        for path, text, needle in cases:
            with self.subTest(path=path, include=needle):
                rc, out = self.verdict({path: "/* file */\n" + text})
                self.assertEqual(rc, 1, out)
                self.assertIn(needle, out)
                self.assertIn("%s:2" % path, out)


class CheckBannedTest(unittest.TestCase):
    def verdict(self, code):
        tree = Tree({"src/x.c": code})
        try:
            return tree.run(BANNED)
        finally:
            tree.close()

    def test_banned_calls_found(self):
        for call in ("strcpy(a, b);", "strcat(a, b);", "n = sprintf(buf, \"%d\", 1);",
                     "vsprintf(buf, fmt, ap);", "gets(buf);", "p = strtok(s, \",\");",
                     "n = atoi (s);", "n = atol(s);", "sscanf(s, \"%d\", &n);",
                     "strncpy(a, b, 3);", "if (x) { strcpy(a, b); }"):
            with self.subTest(call=call):
                rc, out = self.verdict("int f(void)\n{\n    %s\n}\n" % call)
                self.assertEqual(rc, 1, out)
                self.assertIn("src/x.c:3", out)

    def test_allowed_code_passes(self):
        code = ("/* strcpy(a, b) in a comment */\n"
                "/*\n * sprintf(x) inside a block comment\n * atoi(s)\n */\n"
                "// strcat(x, y)\n"
                "int f(void)\n{\n"
                "    snprintf(buf, sizeof buf, \"%d\", 1);\n"
                "    fgets(buf, 10, stdin);\n"
                "    strtok_r(s, \",\", &save);\n"
                "    my_atoi_checked(s);\n"
                "    log(\"do not use strcpy( here\");\n"
                "    x = 1; /* not sscanf( */ y = 2;\n"
                "    vsnprintf(buf, n, fmt, ap);\n"
                "}\n")
        rc, out = self.verdict(code)
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    unittest.main()
