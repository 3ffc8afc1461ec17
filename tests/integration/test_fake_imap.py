#!/usr/bin/python3
"""Adversarial IMAP tests: tern against the scripted fake server.

Layer: tests/integration. Each test starts tests/peers/fakeimap.py on a free
127.0.0.1 port with a script, runs the headless client once
(tern -F CONFIG -e 'CMD', stdin closed, so it can never prompt) and asserts:

  - the exit status (1 for a failure) and the JSON error object on stdout
    ({"error":{"command","code","message"}}) with the expected code;
  - a human line on stderr, no sanitizer report, no password anywhere;
  - what tern sent and did not send, from the server's log of every byte it
    received: no LOGIN/AUTHENTICATE and no credentials before (or without) TLS,
    no SELECT/FETCH/LIST after the failure point;
  - bounded time (< 10 s each) and, for the huge inputs, bounded memory (peak
    RSS of the tern process < 64 MB, measured by GNU time).

Cases, by TESTMATRIX row:
  T1  STARTTLS absent, answered NO, BAD or with a continuation; garbage greeting
  T2  PREAUTH greeting on an imap:// (STARTTLS-required) account
  T3  bytes injected after the STARTTLS go-ahead (capability, forged tagged OK)
  T4  untagged data (LIST, EXISTS, ALERT, CAPABILITY) before the STARTTLS reply
  T5  wrong host, expired, not yet valid, self-signed, unknown CA, wrong pin,
      bad certificate behind STARTTLS; the correct pin works
  T6  LOGIN REFERRAL to another server is not followed
  T7  tagged reply with an unknown tag, a tag not yet sent, a duplicate completion
  I1  literal of 4 GiB, 2^63, 2^64, absurd, negative, non-numeric sizes
  I2  BODYSTRUCTURE nested 100,000 deep; unbalanced parentheses
  I3  a 10 MB line without CRLF; NUL in a response
  I4  unknown untagged responses and garbled response codes are ignored
  I5  "* BYE" in the middle of a FETCH
  I6  literal shorter than announced then close; RST mid-FETCH
  F3  server stalls (before the greeting, during the handshake, mid-command)
      -> "timeout" within the configured timeout; connection refused -> "io"
  H1  NO on LOGIN -> "auth"; LOGINDISABLED on cleartext; tls = off cleartext
      works only when configured, with LOGIN

The exact command sequence tern sends is deliberately not asserted: the fake
answers CAPABILITY, ID, ENABLE, NAMESPACE, NOOP, LOGOUT, LIST, STATUS, SELECT,
SEARCH, FETCH wherever they come, and the scripts only place the fault.

Environment: TERN_BIN (default $TERN_BUILD_DIR/tern, then <repo>/tern); the
tests are skipped when it does not exist. TERN_TEST_MAX_RSS_MB (default 64)
moves the memory bound, e.g. for sanitizer builds; TERN_TEST_KEEP=1 keeps the
per-test directories (config, client.bin, transcript.txt, stdout, stderr);
TERN_TEST_VERBOSE=1 prints exit status, error code, wall time and peak RSS of
every run.
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "peers"))

import certs as certs_mod  # noqa: E402
from fakeimap import (Auth, Bye, Close, DeepNesting, Expect, FakeIMAP, HugeLine,  # noqa: E402
                      HugeLiteral, Line, Mark, Reset, Send, ShortLiteral, Stall, StartTLS,
                      Tagged, shift_tag)

TERN_BIN = os.environ.get("TERN_BIN") or os.path.join(
    os.environ.get("TERN_BUILD_DIR") or REPO, "tern")
MAX_RSS_KB = int(os.environ.get("TERN_TEST_MAX_RSS_MB", "64")) * 1024
KEEP = os.environ.get("TERN_TEST_KEEP") == "1"
VERBOSE = os.environ.get("TERN_TEST_VERBOSE") == "1"

GNU_TIME = "/usr/bin/time"  # Debian package "time"
TIME_LIMIT = 10.0  # every run must end within this many seconds
KILL_AFTER = 30.0  # a run still alive then is killed (and the test fails)

USER = "tester"
PASSWORD = "Pw-5ecret-9f3c"

# The password as it could travel: plain, and in SASL PLAIN / LOGIN encodings.
SECRETS = [PASSWORD.encode(),
           base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD.encode()),
           base64.b64encode(USER.encode() + b"\0" + USER.encode() + b"\0" + PASSWORD.encode()),
           base64.b64encode(PASSWORD.encode())]

AUTH_LINE = re.compile(rb"(?im)^\S+\s+(LOGIN|AUTHENTICATE)\b")
SANITIZER = re.compile(r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|"
                       r"runtime error:|Segmentation fault|core dumped")
ERROR_CODES = {"usage", "config", "notfound", "refused", "auth", "tls", "proto", "io",
               "timeout", "unsupported"}

# Commands that may travel in cleartext on an imap:// (STARTTLS) account.
PRETLS_OK = {"CAPABILITY", "STARTTLS", "LOGOUT", "NOOP"}
# Commands that touch mail or folders: never after a failure.
MAIL_COMMANDS = {"SELECT", "EXAMINE", "LIST", "LSUB", "STATUS", "FETCH", "UID FETCH", "SEARCH",
                 "UID SEARCH", "STORE", "UID STORE", "APPEND", "COPY", "UID COPY", "MOVE",
                 "UID MOVE", "EXPUNGE", "UID EXPUNGE", "CREATE", "DELETE", "RENAME",
                 "SUBSCRIBE", "UNSUBSCRIBE", "IDLE"}

LIST_CMD = r"^(LIST|LSUB)\b"
FETCH_CMD = r"^(UID )?FETCH\b"
LIST_LINES = ['* LIST (\\HasNoChildren) "/" "INBOX"', '* LIST (\\HasNoChildren) "/" "Sent"',
              '* LIST (\\HasNoChildren) "/" "Archive"']


class Result:
    """One finished tern run."""

    def __init__(self, argv, status, stdout, stderr, elapsed, maxrss_kb):
        self.argv, self.status = argv, status
        self.stdout, self.stderr = stdout, stderr
        self.elapsed, self.maxrss_kb = elapsed, maxrss_kb
        self.objects, self.bad_lines = [], []
        for line in stdout.decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            try:
                self.objects.append(json.loads(line))
            except ValueError:
                self.bad_lines.append(line)
        errors = [o for o in self.objects if isinstance(o, dict) and "error" in o]
        self.error = errors[-1]["error"] if errors else None

    def results(self):
        return [o for o in self.objects if not (isinstance(o, dict) and "error" in o)]

    def folder_names(self):
        return [o.get("name") for o in self.results() if isinstance(o, dict)]

    def describe(self):
        return ("\n--- tern %s\nexit %s after %.2f s, peak RSS %d KB\n--- stdout:\n%s\n"
                "--- stderr:\n%s" % (" ".join(self.argv[1:]), self.status, self.elapsed,
                                     self.maxrss_kb,
                                     self.stdout[:3000].decode("utf-8", "replace"),
                                     self.stderr[:3000].decode("utf-8", "replace")))


class FakeImapTest(unittest.TestCase):
    """tern against tests/peers/fakeimap.py, one fault per test."""

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        if not (os.path.isfile(TERN_BIN) and os.access(TERN_BIN, os.X_OK)):
            raise unittest.SkipTest("tern not built at %s (set TERN_BIN)" % TERN_BIN)
        cls.classdir = tempfile.mkdtemp(prefix="tern-fakeimap-")
        cls.certs = certs_mod.make_certs(os.path.join(cls.classdir, "certs"))

    @classmethod
    def tearDownClass(cls):
        if not KEEP:
            shutil.rmtree(cls.classdir, ignore_errors=True)

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix=self._testMethodName + "-", dir=self.classdir)
        self.servers = []
        self.last = None

    def tearDown(self):
        for srv in self.servers:
            srv.stop()
        # A failed test leaves its transcript in the report.
        outcome = getattr(self, "_outcome", None)
        failed = outcome is not None and not outcome.success
        if failed or KEEP:
            sys.stderr.write("\n[%s] kept %s\n" % (self._testMethodName, self.dir))
        if failed:
            for srv in self.servers:
                sys.stderr.write("--- fake server transcript:\n%s\n" % srv.transcript()[-6000:])

    # ----- fixtures ------------------------------------------------------

    def serve(self, script=(), **kw):
        kw.setdefault("certs", self.certs)
        kw.setdefault("user", USER)
        kw.setdefault("password", PASSWORD)
        kw.setdefault("log_dir", os.path.join(self.dir, "server%d" % len(self.servers)))
        srv = FakeIMAP(script, **kw)
        srv.start()
        self.servers.append(srv)
        return srv

    def imaps(self, script=(), cert="server", **kw):
        """A server speaking implicit TLS with CERT."""
        return self.serve(script, tls=cert, **kw)

    def config(self, port, scheme="imaps", tls="verify", ca=True, timeout=5):
        path = os.path.join(self.dir, "config")
        lines = ["[account fake]",
                 "imap = %s://%s@127.0.0.1:%d" % (scheme, USER, port),
                 "password = %s" % PASSWORD,
                 "tls = %s" % tls,
                 "timeout = %d" % timeout,
                 "cache_dir = %s" % os.path.join(self.dir, "cache")]
        if ca:
            lines.append("tls_ca_file = %s" % self.certs.ca_cert)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def tern(self, config, *commands):
        """Runs tern -F CONFIG -e CMD...; returns a Result with wall time and peak RSS.

        The peak RSS comes from GNU time (-f %M), which forks tern from its own
        small process: Linux carries a process's high-water RSS across fork and
        exec, so wait4() on a child of this (large) Python process would report
        Python's RSS, not tern's. Without /usr/bin/time, wait4() gives an upper
        bound."""
        argv = [TERN_BIN, "-F", config]
        for c in commands:
            argv += ["-e", c]
        home = os.path.join(self.dir, "home")
        os.makedirs(home, exist_ok=True)
        env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                   XDG_DATA_HOME=os.path.join(home, ".local", "share"),
                   XDG_CACHE_HOME=os.path.join(home, ".cache"), TERN_CONFIG=config)
        out_path = os.path.join(self.dir, "stdout")
        err_path = os.path.join(self.dir, "stderr")
        rss_path = os.path.join(self.dir, "rss")
        run = argv
        if os.access(GNU_TIME, os.X_OK):
            run = [GNU_TIME, "-f", "%M", "-o", rss_path] + argv
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(run, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=env, start_new_session=True)
            reaped = threading.Event()

            def kill():
                if not reaped.is_set():
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except OSError:
                        pass

            killer = threading.Timer(KILL_AFTER, kill)
            killer.start()
            try:
                _, wstatus, rusage = os.wait4(proc.pid, 0)
            finally:
                reaped.set()
                killer.cancel()
            elapsed = time.monotonic() - t0
        status = os.waitstatus_to_exitcode(wstatus)
        proc.returncode = status
        maxrss = rusage.ru_maxrss
        if run is not argv:
            status, maxrss = self._gnu_time_report(rss_path, status, maxrss)
        with open(out_path, "rb") as f:
            stdout = f.read()
        with open(err_path, "rb") as f:
            stderr = f.read()
        self.last = Result(argv, status, stdout, stderr, elapsed, maxrss)
        if VERBOSE:
            sys.stderr.write("\n[%s] exit %d, code %s, %.2f s, peak RSS %d KB\n" % (
                self._testMethodName, self.last.status,
                self.last.error["code"] if self.last.error else "-", elapsed, maxrss))
        return self.last

    @staticmethod
    def _gnu_time_report(path, status, maxrss):
        """(exit status, peak RSS in KB) of the command GNU time ran. A command
        killed by signal N gets status -N, as subprocess reports it."""
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = [l.strip() for l in f if l.strip()]
        except OSError:
            return status, maxrss
        for line in lines:
            m = re.match(r"Command terminated by signal (\d+)", line)
            if m:
                status = -int(m.group(1))
        if lines and lines[-1].isdigit():
            maxrss = int(lines[-1])
        return status, maxrss

    # ----- assertions ----------------------------------------------------

    def explain(self, res, srv=None):
        text = res.describe() if res is not None else ""
        if srv is not None:
            text += "\n--- server saw commands: %s" % (
                ["%s%s" % ("[tls] " if c.tls else "", c.text[:80]) for c in srv.commands()])
        return text

    def assert_clean_run(self, res, srv=None):
        """What holds for every run, success or failure."""
        why = self.explain(res, srv)
        self.assertLess(res.elapsed, TIME_LIMIT, "took too long" + why)
        self.assertNotEqual(res.status, -signal.SIGKILL, "killed after %d s" % KILL_AFTER + why)
        self.assertGreaterEqual(res.status, 0, "died of a signal" + why)
        err = res.stderr.decode("utf-8", "replace")
        self.assertIsNone(SANITIZER.search(err), "sanitizer report or crash" + why)
        self.assertEqual(res.bad_lines, [], "stdout lines that are not JSON" + why)
        for secret in SECRETS:
            self.assertNotIn(secret, res.stdout, "password on stdout" + why)
            self.assertNotIn(secret, res.stderr, "password on stderr" + why)

    def assert_ok(self, res, srv=None):
        self.assert_clean_run(res, srv)
        why = self.explain(res, srv)
        self.assertEqual(res.status, 0, "expected success" + why)
        self.assertIsNone(res.error, why)

    def assert_fails(self, res, codes, srv=None):
        """Exit 1, one JSON error with a code in CODES, a human line on stderr."""
        if isinstance(codes, str):
            codes = {codes}
        self.assert_clean_run(res, srv)
        why = self.explain(res, srv)
        self.assertEqual(res.status, 1, "expected exit status 1" + why)
        self.assertIsNotNone(res.error, "no {\"error\":...} object on stdout" + why)
        for key in ("command", "code", "message"):
            self.assertIn(key, res.error, why)
        self.assertIn(res.error["code"], ERROR_CODES, "code outside the contract" + why)
        self.assertIn(res.error["code"], codes, "wrong error code" + why)
        self.assertIsInstance(res.error["message"], str, why)
        self.assertGreater(len(res.error["message"].strip()), 10, "empty error message" + why)
        self.assertEqual(res.objects[-1], {"error": res.error}, "the error must be last" + why)
        human = [l for l in res.stderr.decode("utf-8", "replace").splitlines() if l.strip()]
        self.assertTrue(human, "no human line on stderr" + why)
        self.assertFalse(all(l.lstrip().startswith("{") for l in human),
                         "stderr holds only JSON, no human sentence" + why)

    def assert_small(self, res):
        self.assertLess(res.maxrss_kb, MAX_RSS_KB,
                        "peak RSS %d KB over %d KB" % (res.maxrss_kb, MAX_RSS_KB)
                        + self.explain(res))

    def assert_no_credentials(self, srv, tls=None):
        """No LOGIN/AUTHENTICATE line and no form of the password among the bytes
        the server received (TLS=False: before TLS only; None: anywhere)."""
        srv.wait_idle()
        data = srv.received(tls=tls)
        why = self.explain(self.last, srv)
        self.assertIsNone(AUTH_LINE.search(data), "LOGIN/AUTHENTICATE sent" + why)
        for secret in SECRETS:
            self.assertNotIn(secret, data, "credentials sent" + why)
        if tls is None:
            self.assertEqual(srv.auth_attempts, [], why)
        else:
            self.assertEqual([a for a in srv.auth_attempts if a.tls == tls], [], why)

    def assert_cleartext_only(self, srv, allowed=PRETLS_OK):
        """Every line received before TLS is a command named in ALLOWED."""
        srv.wait_idle()
        data = srv.received(tls=False)
        why = self.explain(self.last, srv)
        for line in data.split(b"\n"):
            line = line.rstrip(b"\r")
            if not line:
                continue
            words = line.decode("latin-1").split(" ")
            self.assertTrue(len(words) >= 2 and words[1].upper() in allowed,
                            "cleartext line %r not allowed before TLS%s" % (line[:100], why))

    def assert_nothing_after(self, srv, mark):
        """No mail or folder command after the script's mark MARK."""
        srv.wait_idle()
        self.assertIsNotNone(srv.mark_seq(mark), "the script never reached %s%s" % (
            mark, self.explain(self.last, srv)))
        after = [c.name for c in srv.commands_after(mark)]
        bad = [n for n in after if n in MAIL_COMMANDS or n in ("LOGIN", "AUTHENTICATE")]
        self.assertEqual(bad, [], "commands sent after %s%s" % (mark, self.explain(self.last, srv)))

    def assert_no_handshake_data(self, srv, handshake_fails=True):
        """No application byte reached the server. HANDSHAKE_FAILS: the client
        also aborted the handshake itself (a pin may be checked just after it)."""
        srv.wait_idle()
        why = self.explain(self.last, srv)
        self.assertEqual(srv.received(), b"", why)
        self.assertTrue(srv.handshakes, "no TLS handshake attempted" + why)
        if handshake_fails:
            self.assertFalse(any(h.ok for h in srv.handshakes), "a handshake succeeded" + why)

    def assert_fake_ok(self, srv):
        self.assertEqual(srv.errors, [], "the fake server itself failed")

    def folders_with(self, script, **kw):
        """Runs `folders` against an imaps server with SCRIPT."""
        srv = self.imaps(script, **kw)
        return srv, self.tern(self.config(srv.port), "folders")

    # ----- positive controls ---------------------------------------------

    def test_control_imaps_verify_works(self):
        srv, res = self.folders_with([])
        self.assert_ok(res, srv)
        self.assertEqual(sorted(res.folder_names()), ["Archive", "INBOX", "Sent"],
                         self.explain(res, srv))
        srv.wait_idle()
        self.assertTrue(srv.auth_attempts and all(a.tls for a in srv.auth_attempts))
        self.assertEqual(srv.auth_attempts[-1].password, PASSWORD)
        self.assert_fake_ok(srv)

    def test_control_starttls_verify_works(self):
        srv = self.serve()
        res = self.tern(self.config(srv.port, scheme="imap"), "folders")
        self.assert_ok(res, srv)
        self.assertEqual(sorted(res.folder_names()), ["Archive", "INBOX", "Sent"])
        self.assert_no_credentials(srv, tls=False)
        self.assert_cleartext_only(srv)
        self.assertTrue(srv.handshakes and srv.handshakes[0].ok)
        # RFC 3501 §6.2.1: capabilities learnt before TLS are discarded; the
        # client asks again inside TLS before it authenticates.
        inside = srv.commands(tls=True)
        names = [c.name for c in inside]
        self.assertIn("CAPABILITY", names, self.explain(res, srv))
        first_auth = min(i for i, n in enumerate(names) if n in ("LOGIN", "AUTHENTICATE"))
        self.assertLess(names.index("CAPABILITY"), first_auth, self.explain(res, srv))

    def test_control_list_inbox_works(self):
        """The default mailbox of the fake serves `list`; the FETCH cases rely on it."""
        srv = self.imaps()
        res = self.tern(self.config(srv.port), "list INBOX")
        self.assert_ok(res, srv)
        self.assertEqual([o.get("uid") for o in res.results()], [3, 2, 1],
                         self.explain(res, srv))
        self.assertEqual(res.results()[0].get("subject"), "Test message 3")
        self.assert_fake_ok(srv)

    def test_tls_off_cleartext_login_works_when_configured(self):
        srv = self.serve(caps="IMAP4rev1 ID NAMESPACE", caps_tls="IMAP4rev1 ID NAMESPACE")
        res = self.tern(self.config(srv.port, scheme="imap", tls="off", ca=False), "folders")
        self.assert_ok(res, srv)
        self.assertEqual(sorted(res.folder_names()), ["Archive", "INBOX", "Sent"])
        srv.wait_idle()
        self.assertEqual(srv.handshakes, [])
        self.assertEqual([(a.tls, a.mechanism, a.password) for a in srv.auth_attempts],
                         [(False, "LOGIN command", PASSWORD)])

    # ----- T1: STARTTLS stripping ----------------------------------------

    def starttls_account(self, srv):
        return self.config(srv.port, scheme="imap")

    def test_t1_starttls_not_offered(self):
        # AUTH=PLAIN in cleartext is the bait: tern must not take it.
        srv = self.serve(caps="IMAP4rev1 ID AUTH=PLAIN", caps_tls="IMAP4rev1 ID AUTH=PLAIN")
        res = self.tern(self.starttls_account(srv), "folders")
        self.assert_fails(res, "tls", srv)
        self.assertIn("STARTTLS", res.error["message"].upper(), self.explain(res, srv))
        self.assert_no_credentials(srv)
        self.assert_cleartext_only(srv, {"CAPABILITY", "LOGOUT", "NOOP"})
        self.assertEqual(srv.handshakes, [])

    def starttls_refused(self, reply, codes):
        srv = self.serve([Expect(r"^STARTTLS\b", reply=reply), Mark("refused")],
                         caps="IMAP4rev1 STARTTLS AUTH=PLAIN")
        res = self.tern(self.starttls_account(srv), "folders")
        self.assert_fails(res, codes, srv)
        self.assert_no_credentials(srv)
        self.assert_cleartext_only(srv)
        self.assert_nothing_after(srv, "refused")
        self.assertEqual(srv.handshakes, [])
        return res

    def test_t1_starttls_answered_no(self):
        res = self.starttls_refused("NO [UNAVAILABLE] TLS is resting", "tls")
        self.assertIn("TLS is resting", res.error["message"])

    def test_t1_starttls_answered_bad(self):
        self.starttls_refused("BAD unknown command", "tls")

    def test_t1_starttls_answered_continuation(self):
        srv = self.serve([Expect(r"^STARTTLS\b", untagged="+ go ahead"), Mark("cont"), Stall()],
                         caps="IMAP4rev1 STARTTLS AUTH=PLAIN")
        res = self.tern(self.starttls_account(srv), "folders")
        self.assert_fails(res, {"tls", "proto"}, srv)
        self.assert_no_credentials(srv)
        self.assert_nothing_after(srv, "cont")

    def test_t1_garbage_greeting(self):
        srv = self.imaps(greeting="HTTP/1.1 400 Bad Request")
        res = self.tern(self.config(srv.port), "folders")
        self.assert_fails(res, "proto", srv)
        self.assert_no_credentials(srv)

    # ----- T2: PREAUTH ---------------------------------------------------

    def test_t2_preauth_on_starttls_account(self):
        srv = self.serve(greeting="* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] Logged in as tester")
        res = self.tern(self.starttls_account(srv), "folders")
        self.assert_fails(res, "tls", srv)
        srv.wait_idle()
        # Nothing but, at most, a LOGOUT: no STARTTLS (invalid after PREAUTH),
        # no LIST, no APPEND, no credentials.
        self.assertTrue(set(srv.command_names()) <= {"LOGOUT"}, self.explain(res, srv))
        self.assert_cleartext_only(srv, {"LOGOUT"})
        self.assert_no_credentials(srv)
        self.assertEqual(srv.handshakes, [])

    # ----- T3/T4: injection around STARTTLS ------------------------------

    def assert_aborted_or_clean(self, srv, res):
        """After a tampered STARTTLS exchange: either a tls/proto failure with no
        credentials sent at all, or a success whose capabilities were asked
        again inside TLS and whose output holds nothing of the injection."""
        self.assert_no_credentials(srv, tls=False)
        self.assert_cleartext_only(srv)
        if res.status != 0:
            self.assert_fails(res, {"tls", "proto"}, srv)
            self.assert_no_credentials(srv)
            return
        self.assert_ok(res, srv)
        names = srv.command_names(tls=True)
        self.assertIn("CAPABILITY", names, self.explain(res, srv))
        auth = [i for i, n in enumerate(names) if n in ("LOGIN", "AUTHENTICATE")]
        self.assertTrue(auth and names.index("CAPABILITY") < auth[0], self.explain(res, srv))
        self.assertNotIn(b"Injected", res.stdout)
        self.assertNotIn(b"Evil", res.stdout)
        self.assertEqual(sorted(res.folder_names()), ["Archive", "INBOX", "Sent"])

    def test_t3_capability_injected_after_starttls_ok(self):
        inject = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN]\r\n"
        srv = self.serve([StartTLS(inject=inject)])
        res = self.tern(self.starttls_account(srv), "folders")
        self.assert_aborted_or_clean(srv, res)

    def test_t3_forged_tagged_ok_injected_after_starttls_ok(self):
        # Tagged OKs for the next tags tern will use (derived from the tag of its
        # STARTTLS), and a folder: parsed, they would complete commands tern has
        # not sent yet and put "Injected" in the output.
        def inject(tag):
            forged = "".join("%s OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] forged\r\n"
                             % shift_tag(tag, n) for n in (1, 2, 3, 4))
            return '* LIST () "/" "Injected"\r\n' + forged

        srv = self.serve([StartTLS(inject=inject)])
        res = self.tern(self.starttls_account(srv), "folders")
        self.assert_aborted_or_clean(srv, res)

    def test_t4_untagged_data_before_starttls_reply(self):
        before = (b'* LIST () "/" "Evil"\r\n* 5 EXISTS\r\n* OK [ALERT] Evil alert\r\n'
                  b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
        srv = self.serve([StartTLS(before=before)])
        res = self.tern(self.starttls_account(srv), "folders")
        self.assert_aborted_or_clean(srv, res)
        self.assertNotIn(b"Evil", res.stderr)

    # ----- T5: certificates ----------------------------------------------

    def cert_refused(self, cert, tls="verify", ca=True):
        srv = self.imaps(cert=cert)
        res = self.tern(self.config(srv.port, tls=tls, ca=ca), "folders")
        self.assert_fails(res, "tls", srv)
        self.assert_no_handshake_data(srv, handshake_fails=tls == "verify")
        self.assert_no_credentials(srv)
        return res

    def test_t5_wrong_host(self):
        self.cert_refused("wronghost")

    def test_t5_expired(self):
        self.cert_refused("expired")

    def test_t5_not_yet_valid(self):
        self.cert_refused("notyet")

    def test_t5_self_signed_without_pin(self):
        self.cert_refused("selfsigned")

    def test_t5_unknown_ca(self):
        # The server certificate is fine, but nothing trusts the test CA.
        self.cert_refused("server", ca=False)

    def test_t5_wrong_pin(self):
        self.cert_refused("selfsigned", ca=False,
                          tls="fingerprint:sha256:" + self.certs.fingerprints["server"])

    def test_t5_self_signed_with_correct_pin_works(self):
        srv = self.imaps([Expect(LIST_CMD, untagged=LIST_LINES, reply="OK LIST completed")],
                         cert="selfsigned")
        pin = "fingerprint:sha256:" + self.certs.fingerprints["selfsigned"]
        res = self.tern(self.config(srv.port, tls=pin, ca=False), "folders")
        self.assert_ok(res, srv)
        self.assertEqual(sorted(res.folder_names()), ["Archive", "INBOX", "Sent"])

    def test_t5_bad_certificate_behind_starttls(self):
        srv = self.serve(starttls_cert="expired")
        res = self.tern(self.starttls_account(srv), "folders")
        self.assert_fails(res, "tls", srv)
        self.assert_no_credentials(srv)
        self.assert_cleartext_only(srv)
        srv.wait_idle()
        self.assertEqual(srv.received(tls=True), b"")

    # ----- T6: referrals -------------------------------------------------

    def test_t6_login_referral_not_followed(self):
        other = self.imaps()
        srv = self.imaps([Auth(reply="NO [REFERRAL imap://%s@127.0.0.1:%d/] go there"
                               % (USER, other.port)), Mark("referral")])
        res = self.tern(self.config(srv.port), "folders")
        self.assert_fails(res, "auth", srv)
        self.assert_nothing_after(srv, "referral")
        other.wait_idle()
        self.assertEqual(other.connections, 0, "tern followed the referral")

    # ----- T7: tags ------------------------------------------------------

    def test_t7_unknown_tag(self):
        srv, res = self.folders_with([Expect(LIST_CMD, untagged=LIST_LINES), Mark("bad tag"),
                                      Line("ZZZ9 OK LIST completed")])
        self.assert_fails(res, "proto", srv)
        self.assert_nothing_after(srv, "bad tag")

    def test_t7_tag_not_yet_sent(self):
        srv, res = self.folders_with([Expect(LIST_CMD, untagged=LIST_LINES), Mark("future"),
                                      Tagged("OK LIST completed", offset=1)])
        self.assert_fails(res, "proto", srv)
        self.assert_nothing_after(srv, "future")

    def test_t7_duplicate_tagged_completion(self):
        srv, res = self.folders_with([Auth(), Mark("dup"), Tagged("OK LOGIN completed again")])
        self.assert_fails(res, "proto", srv)
        srv.wait_idle()
        self.assertIsNotNone(srv.mark_seq("dup"))

    # ----- I1: literal sizes ---------------------------------------------

    def test_i1_literal_of_4_gib(self):
        srv, res = self.folders_with([Expect(LIST_CMD),
                                      HugeLiteral(size=4 << 30, prefix=b'* LIST () "/" ')])
        self.assert_fails(res, "proto", srv)
        self.assert_small(res)
        self.assert_nothing_after(srv, "HugeLiteral")

    def test_i1_absurd_literal_sizes(self):
        sizes = [b"9223372036854775808", b"18446744073709551616",
                 b"99999999999999999999999999999999", b"-1", b"abc", b"", b"1e9", b" 5"]
        for size in sizes:
            with self.subTest(literal=size):
                srv, res = self.folders_with([
                    Expect(LIST_CMD), Mark("literal"),
                    Send(b'* LIST () "/" {' + size + b'}\r\n' + b"x" * 4096), Stall()])
                self.assert_fails(res, "proto", srv)
                self.assert_small(res)
                self.assert_nothing_after(srv, "literal")

    # ----- I2: structure -------------------------------------------------

    def test_i2_bodystructure_nested_100000_deep(self):
        srv, res = self.folders_with([Expect(LIST_CMD), DeepNesting(depth=100000)])
        self.assert_fails(res, "proto", srv)
        self.assert_small(res)
        self.assert_nothing_after(srv, "DeepNesting")

    def test_i2_unbalanced_parentheses(self):
        srv, res = self.folders_with([Expect(LIST_CMD), Mark("unbalanced"),
                                      Line('* LIST ((\\HasNoChildren "/" "INBOX"'),
                                      Tagged("OK LIST completed")])
        self.assert_fails(res, "proto", srv)
        self.assert_nothing_after(srv, "unbalanced")

    # ----- I3: lines -----------------------------------------------------

    def test_i3_10_mb_line(self):
        srv, res = self.folders_with([Expect(LIST_CMD),
                                      HugeLine(size=10 << 20, prefix=b'* LIST () "/" "')])
        self.assert_fails(res, "proto", srv)
        self.assert_small(res)
        self.assert_nothing_after(srv, "HugeLine")

    def test_i3_nul_in_response(self):
        srv, res = self.folders_with([Expect(LIST_CMD), Mark("nul"),
                                      Send(b'* LIST () "/" "IN\x00BOX"\r\n'),
                                      Tagged("OK LIST completed")])
        self.assert_fails(res, "proto", srv)
        self.assert_nothing_after(srv, "nul")

    def test_garbage_response(self):
        srv, res = self.folders_with([Expect(LIST_CMD), Mark("garbage"),
                                      Send(b"\x01\x02 ))) this is not IMAP (((\r\n"),
                                      Tagged("OK LIST completed")])
        self.assert_fails(res, "proto", srv)
        self.assert_nothing_after(srv, "garbage")

    # ----- I4: unknown data ----------------------------------------------

    def test_i4_unknown_untagged_and_garbled_codes_ignored(self):
        noise = ["* XFOO bar baz", "* OK [UIDNEXT abc] x", "* OK [XUNKNOWN-CODE 1 2 (3)] y",
                 "* 7 XWEIRD (a b)", "* OK [UIDVALIDITY] no number", "* OK [ALERT",
                 "* OK [] empty code", "* XEMPTY"]
        srv, res = self.folders_with([Expect(LIST_CMD, untagged=noise + LIST_LINES,
                                             reply="OK [XCODE] LIST completed")])
        self.assert_ok(res, srv)
        self.assertEqual(sorted(res.folder_names()), ["Archive", "INBOX", "Sent"],
                         self.explain(res, srv))

    def test_i4_no_and_bad_without_text(self):
        srv, res = self.folders_with([Expect(LIST_CMD, untagged=["* NO", "* BAD"] + LIST_LINES,
                                             reply="OK LIST completed")])
        # Ignoring them and failing with "proto" are both acceptable.
        if res.status == 0:
            self.assert_ok(res, srv)
            self.assertEqual(sorted(res.folder_names()), ["Archive", "INBOX", "Sent"])
        else:
            self.assert_fails(res, "proto", srv)

    # ----- I5/I6: BYE and drops mid-FETCH --------------------------------

    def fetch_fault(self, steps):
        srv = self.imaps([Expect(FETCH_CMD)] + steps)
        return srv, self.tern(self.config(srv.port), "list INBOX")

    def test_i5_bye_mid_fetch(self):
        srv, res = self.fetch_fault([Line("* 1 FETCH (UID 1 FLAGS (\\Seen))"),
                                     Bye("Server shutting down"), Close()])
        self.assert_fails(res, {"io", "proto", "refused"}, srv)
        self.assert_nothing_after(srv, "Bye")

    def test_i6_literal_shorter_than_announced_then_close(self):
        srv, res = self.fetch_fault([ShortLiteral(announce=4096, send=100,
                                                  prefix=b"* 1 FETCH (UID 1 BODY[] ")])
        self.assert_fails(res, {"io", "proto"}, srv)
        self.assert_nothing_after(srv, "ShortLiteral")

    def test_i6_reset_mid_fetch(self):
        srv, res = self.fetch_fault([Send(b"* 1 FETCH (UID 1 FLAGS (\\Seen) RFC822.SIZE 4"),
                                     Reset()])
        self.assert_fails(res, {"io", "proto"}, srv)
        self.assert_nothing_after(srv, "Reset")

    # ----- F3: stalls and refused connections ------------------------------

    def stalled(self, srv, scheme="imaps"):
        res = self.tern(self.config(srv.port, scheme=scheme, timeout=2), "folders")
        self.assert_fails(res, "timeout", srv)
        self.assertGreater(res.elapsed, 1.5, "gave up before the timeout" + self.explain(res))
        self.assertLess(res.elapsed, 5.0, "timeout = 2 not honoured" + self.explain(res))
        return res

    def test_f3_stall_before_greeting(self):
        srv = self.imaps([Stall()], greeting=False)
        self.stalled(srv)
        self.assert_no_credentials(srv)

    def test_f3_stall_during_tls_handshake(self):
        # A plain socket that never answers the ClientHello.
        srv = self.serve([Stall()], greeting=False)
        self.stalled(srv)

    def test_f3_stall_mid_command(self):
        srv = self.imaps([Expect(LIST_CMD), Stall()])
        self.stalled(srv)
        self.assert_nothing_after(srv, "Stall")

    def test_f3_connection_refused(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # bound, never listening: the port refuses connections
        res = self.tern(self.config(port), "folders")
        self.assert_fails(res, "io")
        self.assertLess(res.elapsed, 3.0, self.explain(res))

    # ----- H1: authentication ----------------------------------------------

    def test_h1_login_refused(self):
        srv = self.imaps(auth_reply="NO [AUTHENTICATIONFAILED] Authentication failed.")
        res = self.tern(self.config(srv.port), "folders")
        self.assert_fails(res, "auth", srv)
        self.assertIn("authentication failed", res.error["message"].lower(),
                      "the server's text belongs in the message" + self.explain(res, srv))
        srv.wait_idle()
        self.assertTrue(srv.auth_attempts)
        self.assertEqual([n for n in srv.command_names() if n in MAIL_COMMANDS], [],
                         self.explain(res, srv))

    def test_h1_logindisabled_on_cleartext(self):
        srv = self.serve(caps="IMAP4rev1 LOGINDISABLED", caps_tls="IMAP4rev1 LOGINDISABLED")
        res = self.tern(self.config(srv.port, scheme="imap", tls="off", ca=False), "folders")
        self.assert_fails(res, {"unsupported", "auth"}, srv)
        self.assert_no_credentials(srv)
        self.assertEqual([n for n in srv.command_names() if n in MAIL_COMMANDS], [])


if __name__ == "__main__":
    unittest.main()
