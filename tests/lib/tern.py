"""Helpers to run the tern binary headless from Python tests.

Layer: test infrastructure (tests/lib). It writes configs, runs
`tern -F CONFIG -e CMD ...` or `--batch` with a timeout, in an environment
that points HOME and the XDG directories into a private directory, and parses
the JSON Lines on stdout. A missing binary, a timeout, a sanitizer report or a
stdout line that is not a JSON object fails the calling test with a clear
message instead of crashing the run.

The binary is $TERN_BIN, else $TERN_BUILD_DIR/tern, else <repo>/tern.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.environ.get("TERN_BUILD_DIR") or REPO

# Error codes of the headless contract (DESIGN.md).
ERROR_CODES = {"usage", "config", "notfound", "refused", "auth", "tls", "proto", "io",
               "timeout", "unsupported", "nomem", "canceled"}

_SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                    "ERROR: UndefinedBehaviorSanitizer", "SUMMARY: AddressSanitizer")


def tern_bin():
    return os.environ.get("TERN_BIN") or os.path.join(BUILD_DIR, "tern")


_gen_mail = None


def gen_mail():
    """The contrib/demo/gen-mail.py module (loaded once)."""
    global _gen_mail
    if _gen_mail is None:
        path = os.path.join(REPO, "contrib", "demo", "gen-mail.py")
        spec = importlib.util.spec_from_file_location("gen_mail", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _gen_mail = module
    return _gen_mail


def seed_demo(dc, user, seed=None):
    """Seeds the demo set into USER's folders on Dovecot DC.

    Returns {name: (folder, uid, Mail)} for every message, with the UIDs read
    back from the server by Message-ID (or, without one, by position).
    """
    gm = gen_mail()
    mails = gm.demo_set() if seed is None else gm.demo_set(seed)
    by_folder = {}
    for m in mails:
        by_folder.setdefault(m.folder, []).append(m)
    index = {}
    for folder, ms in by_folder.items():
        dc.add_messages(user, folder, [(m.data, m.flags, m.keywords, m.internaldate)
                                       for m in ms])
        fetched = dc.fetch(user, folder, "uid hdr.message-id")
        by_mid = {}
        for f in fetched:
            mid = f.get("hdr.message-id", "").strip().strip("<>")
            if mid:
                by_mid[mid] = f["uid"]
        uids = sorted(f["uid"] for f in fetched)
        for pos, m in enumerate(ms):
            uid = by_mid.get(m.message_id) if m.message_id else uids[pos]
            index[m.name] = (folder, uid, m)
    return index


class TernError(AssertionError):
    """Running tern went wrong in a way that fails the test."""


class Result:
    """What one tern run produced."""

    def __init__(self, argv, rc, stdout, stderr, elapsed):
        self.argv = argv
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr.decode("utf-8", "replace")
        self.elapsed = elapsed
        self.objects = []
        self.bad_lines = []
        for line in stdout.split(b"\n"):
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self.bad_lines.append(line)
                continue
            if isinstance(obj, dict):
                self.objects.append(obj)
            else:
                self.bad_lines.append(line)

    @property
    def errors(self):
        """The error objects: {"error": {...}} (a result object may carry an "error"
        string of its own, such as why a message stays in the outbox)."""
        return [o["error"] for o in self.objects if isinstance(o.get("error"), dict)]

    @property
    def results(self):
        return [o for o in self.objects if not isinstance(o.get("error"), dict)]

    def describe(self):
        out = self.stdout.decode("utf-8", "replace")
        if len(out) > 3000:
            out = out[:3000] + "... (%d bytes)" % len(self.stdout)
        return "tern %s\nexit %s after %.1fs\n--- stdout\n%s--- stderr\n%s" % (
            " ".join(repr(a) for a in self.argv[1:]), self.rc, self.elapsed, out,
            self.stderr[-3000:])

    def __repr__(self):
        return "<Result rc=%s objects=%d>" % (self.rc, len(self.objects))


def quote(word):
    """Quotes WORD for the command language when it holds spaces."""
    if word == "" or any(c in word for c in " \t\""):
        return '"%s"' % word.replace("\\", "\\\\").replace('"', '\\"')
    return word


class Workspace:
    """A private directory for configs, caches, HOME and saved files."""

    def __init__(self, prefix="tern-test-"):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        for d in ("home", "config", "data", "cache", "out"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        self._n = 0

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def account(self, dc, user="alice", transport="imaps", host=None, ca=True, password=True,
                **extra):
        """The keys of an account on Dovecot DC (a dict in config order).

        TRANSPORT is imaps (implicit TLS) or imap (STARTTLS). Extra keys are
        added as given; a key set to None is left out.
        """
        port = dc.ports["imaps" if transport == "imaps" else "imap"]
        keys = {
            "from": "%s Example <%s@example.org>" % (user.capitalize(), user),
            "imap": "%s://%s@%s:%d" % (transport, user, host or dc.host, port),
        }
        if password is True:
            keys["password"] = dc.password(user)
        elif password:
            keys["password"] = password
        if ca:
            keys["tls_ca_file"] = dc.ca_file
        self._n += 1
        keys["cache_dir"] = self.path("data", "cache-%d-%s" % (self._n, user))
        keys["timeout"] = "20"
        keys.update(extra)
        return {k: v for k, v in keys.items() if v is not None}

    def write_config(self, accounts, name=None, raw=None):
        """Writes a config file; ACCOUNTS is {name: keys} or [(name, keys)].

        RAW, when given, is written as it is instead (for bad configs).
        Returns the path.
        """
        self._n += 1
        path = self.path("config", name or "config-%d" % self._n)
        if raw is None:
            items = accounts.items() if isinstance(accounts, dict) else accounts
            lines = []
            for acct, keys in items:
                lines.append("[account %s]" % acct)
                for k, v in keys.items():
                    lines.append("%s = %s" % (k, v))
                lines.append("")
            raw = "\n".join(lines)
        with open(path, "w", encoding="utf-8") as f:
            f.write(raw)
        return path

    def env(self, extra=None):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TERN_") or k in ("TERN_BIN",)}
        env.update({
            "HOME": self.path("home"),
            "XDG_CONFIG_HOME": self.path("config"),
            "XDG_DATA_HOME": self.path("data"),
            "XDG_CACHE_HOME": self.path("cache"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
        })
        env.pop("TERN_CONFIG", None)
        if extra:
            env.update(extra)
        return env

    def run(self, config, *commands, batch=None, batch_file=None, account=None, args=(),
            timeout=60, stdin=None, env=None):
        """Runs tern headless and returns a Result.

        COMMANDS become -e arguments. BATCH (str) is fed on stdin to --batch;
        BATCH_FILE is passed to --batch as a file. STDIN defaults to /dev/null
        (closed input: headless must never prompt).
        """
        binary = tern_bin()
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise TernError("tern binary not found at %s (build it, or set TERN_BIN)" % binary)
        argv = [binary]
        if config is not None:
            argv += ["-F", config]
        if account:
            argv += ["-a", account]
        argv += list(args)
        for c in commands:
            argv += ["-e", c]
        data = None
        if batch is not None:
            argv.append("--batch")
            data = batch.encode("utf-8") if isinstance(batch, str) else batch
        elif batch_file is not None:
            argv += ["--batch", batch_file]
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None else
                                (stdin if stdin is not None else subprocess.DEVNULL),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env(env), cwd=self.path("home"),
                                start_new_session=True)
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            res = Result(argv, None, out, err, time.monotonic() - start)
            raise TernError("tern did not finish within %ds\n%s" % (timeout, res.describe()))
        res = Result(argv, proc.returncode, out, err, time.monotonic() - start)
        for mark in _SANITIZER_MARKS:
            if mark in res.stderr:
                raise TernError("sanitizer report\n" + res.describe())
        if res.rc is not None and res.rc < 0:
            raise TernError("tern died of signal %d\n%s" % (-res.rc, res.describe()))
        return res


class TernCase(unittest.TestCase):
    """A TestCase with assertions for the headless contract."""

    maxDiff = 4000

    def assertOk(self, res, count=None):
        """Exit 0, only result objects, every stdout line a JSON object."""
        self.assertEqual(res.bad_lines, [], "stdout lines that are not JSON objects\n" +
                         res.describe())
        self.assertEqual(res.errors, [], "unexpected error objects\n" + res.describe())
        self.assertEqual(res.rc, 0, "exit status\n" + res.describe())
        if count is not None:
            self.assertEqual(len(res.results), count, "number of results\n" + res.describe())
        return res.results

    def assertFails(self, res, code=None, rc=1, contains=None):
        """One error object ends the output, with CODE; exit RC; a line on stderr."""
        self.assertEqual(res.bad_lines, [], "stdout lines that are not JSON objects\n" +
                         res.describe())
        self.assertEqual(res.rc, rc, "exit status\n" + res.describe())
        self.assertTrue(res.objects and "error" in res.objects[-1],
                        "the last stdout line is not an error object\n" + res.describe())
        self.assertEqual(len(res.errors), 1, "exactly one error object\n" + res.describe())
        err = res.errors[0]
        for key in ("command", "code", "message"):
            self.assertIn(key, err, "error object lacks %r\n%s" % (key, res.describe()))
        self.assertIn(err["code"], ERROR_CODES, res.describe())
        if code is not None:
            codes = {code} if isinstance(code, str) else set(code)
            self.assertIn(err["code"], codes, "error code\n" + res.describe())
        self.assertTrue(isinstance(err["message"], str) and err["message"].strip(),
                        "empty error message\n" + res.describe())
        self.assertTrue(res.stderr.strip(), "nothing on stderr\n" + res.describe())
        if contains is not None:
            for needle in ([contains] if isinstance(contains, str) else contains):
                self.assertIn(needle, err["message"], "error message\n" + res.describe())
        return err


def flagset(flags):
    """The flags of a list/flag result as a set, without the session flag recent."""
    return {f for f in flags if f.lower() != "recent"}


def doveadm_flags(flags):
    """Maps doveadm's flags (\\Seen, $label) to the contract's names (seen, $label)."""
    out = set()
    for f in flags:
        if f == "\\Recent":
            continue
        out.add(f[1:].lower() if f.startswith("\\") else f)
    return out


if __name__ == "__main__":
    print(tern_bin())
    sys.exit(0)
