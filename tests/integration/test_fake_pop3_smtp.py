"""Adversarial POP3 and SMTP tests: tern against the scripted fake servers.

Layer: tests/integration. Each test starts tests/peers/fakepop3.py or
fakesmtp.py on a free 127.0.0.1 port with a script, runs the headless client
(`pop`, `send`, `compose`, `outbox`, `flush`; stdin closed) and asserts on
the exit status, the JSON error object, what the server received (never a
credential before TLS, never a DELE for a message not stored, never a DATA
for a message the server had already refused), what tern stored (the local
POP3 folder byte for byte, nothing partial outside tmp/), what stays in the
outbox, and time and memory bounds (peak RSS < 64 MB under a 10 MB line).

Cases, by TESTMATRIX row:
  T1  STLS/STARTTLS missing or refused on pop3:// and smtp://; a server that
      refuses EHLO; garbage and negative greetings
  T3  bytes after the STLS/STARTTLS go-ahead
  P1  UIDLs empty, over 70 characters, non-printable, with "/" or "..",
      shared by two different messages; a server without UIDL
  P2  dot-stuffing, the terminator split across segments (byte by byte),
      a message without a final CRLF, LIST sizes that lie
  I3  a 10 MB line (POP3 greeting, UIDL listing; SMTP EHLO reply)
  I6  drop mid-RETR, then a run that completes; no QUIT reply
  S1  421 at the greeting, EHLO, AUTH, MAIL, RCPT and DATA; a multi-line
      reply that never ends
  S2  451 and 554 after DATA; a drop after "." with no reply (at most one
      resend); a drop mid-DATA; partial and total RCPT failures
  S3  bare LF and CR, lines starting with ".", no final newline: CRLF and
      dot-stuffing on the wire; Bcc removed, envelope from the headers;
      Date and Message-ID added; SIZE refused before DATA; 8BITMIME, SMTPUTF8
  F1  a file size limit while queueing: nothing sent, nothing queued
  F2  TERN_TEST_KILL_AT at every step of a send, SIGKILL at random moments of
      a flush: every message delivered, at most one extra copy per kill
  H1  AUTH refused; the mechanisms (PLAIN, LOGIN, XOAUTH2, OAUTHBEARER)

Skipped while tern answers `unsupported` to `pop` (the POP3 class) or to
`send` (the SMTP class). TERN_TEST_MAX_RSS_MB (default 64) moves the memory
bound; TERN_TEST_KEEP=1 keeps the per-test directories.
"""

import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "peers"))

import certs as certs_mod  # noqa: E402
import dovecot  # noqa: E402
import fakepop3  # noqa: E402
import fakesmtp  # noqa: E402
import popsmtp  # noqa: E402
import tern  # noqa: E402
from fakepop3 import FakePOP3, PopMessage, Quit, Retr, Stls  # noqa: E402
from fakesmtp import Data, FakeSMTP, Fail, StartTLS  # noqa: E402
from popsmtp import killed_by_hook, last_with, maildir_files, match_messages  # noqa: E402
from tern import quote  # noqa: E402

USER = "tester"
PASSWORD = "Pw-5ecret-9f3c"
TOKEN = "ya29.fake-oauth-token"
MAX_RSS_KB = int(os.environ.get("TERN_TEST_MAX_RSS_MB", "64")) * 1024
KEEP = os.environ.get("TERN_TEST_KEEP") == "1"
GNU_TIME = "/usr/bin/time"
TIME_LIMIT = 10.0
CREDENTIAL_MARKS = (b"PASS ", b"AUTH ", b"USER ")

CERTS = None
TMP = None
SKIP_POP = SKIP_SMTP = None


def setUpModule():
    global CERTS, TMP, SKIP_POP, SKIP_SMTP
    if not os.access(tern.tern_bin(), os.X_OK):
        SKIP_POP = SKIP_SMTP = "tern not built at %s (set TERN_BIN)" % tern.tern_bin()
        return
    TMP = tempfile.mkdtemp(prefix="tern-fake-pop3-smtp-")
    CERTS = certs_mod.make_certs(os.path.join(TMP, "certs"))
    ws = tern.Workspace(prefix="tern-fake-probe-")
    try:
        closed = dovecot.free_ports(1)[0]
        cfg = ws.write_config({"p": {"pop3": "pop3s://x@127.0.0.1:%d" % closed,
                                     "smtp": "smtps://x@127.0.0.1:%d" % closed,
                                     "from": "x@example.org", "password": "x",
                                     "cache_dir": ws.path("data", "probe"), "timeout": "5"}})
        SKIP_POP = popsmtp.unsupported_reason(ws.run(cfg, "pop"), "pop")
        SKIP_SMTP = popsmtp.unsupported_reason(ws.run(cfg, "send /nonexistent.eml"), "send")
    finally:
        ws.cleanup()


def tearDownModule():
    if TMP and not KEEP:
        shutil.rmtree(TMP, ignore_errors=True)


def pop_message(i, body_lines=(), tag="f"):
    lines = ["From: Alice <alice@example.org>", "To: Tester <tester@example.org>",
             "Subject: fake %s %d" % (tag, i), "Message-ID: <fake-%s-%d@pop.example>" % (tag, i),
             ""] + list(body_lines or ["Body %d." % i])
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


class FakeCase(tern.TernCase):
    def setUp(self):
        reason = SKIP_POP if self.protocol == "pop" else SKIP_SMTP
        if reason:
            self.skipTest(reason)
        self.dir = tempfile.mkdtemp(prefix=self._testMethodName[:40] + "-", dir=TMP)
        self.ws = tern.Workspace(prefix="ws-")
        self.servers = []

    def tearDown(self):
        for srv in self.servers:
            srv.stop()
        outcome = getattr(self, "_outcome", None)
        failed = outcome is not None and not outcome.success
        if failed:
            for srv in self.servers:
                sys.stderr.write("--- %s transcript:\n%s\n" % (srv.name, srv.transcript()[-5000:]))
        if not KEEP and not failed:
            self.ws.cleanup()
        for srv in self.servers:
            self.assertEqual(srv.errors, [], "faults of the fake server itself")

    def serve(self, cls, script=(), **kw):
        kw.setdefault("certs", CERTS)
        kw.setdefault("user", USER)
        kw.setdefault("password", PASSWORD)
        kw.setdefault("log_dir", os.path.join(self.dir, "server%d" % len(self.servers)))
        srv = cls(script, **kw)
        srv.start()
        self.servers.append(srv)
        return srv

    def config(self, keys):
        return self.ws.write_config({"fake": keys})

    def run_tern(self, cfg, *commands, env=None, timeout=30, preexec_fn=None):
        res = popsmtp.run(self.ws, cfg, list(commands), env=env, timeout=timeout,
                          preexec_fn=preexec_fn)
        self.assertGreaterEqual(res.rc, 0, "tern died of a signal\n" + res.describe())
        for secret in (PASSWORD.encode(), TOKEN.encode()):
            self.assertNotIn(secret, res.stdout, "a credential on stdout\n" + res.describe())
            self.assertNotIn(secret.decode(), res.stderr, "a credential on stderr\n" +
                             res.describe())
        return res

    def run_measured(self, cfg, *commands):
        """Runs tern under GNU time; returns (Result, peak RSS in KB)."""
        if not os.access(GNU_TIME, os.X_OK):
            self.skipTest("%s missing (Debian package time)" % GNU_TIME)
        report = os.path.join(self.dir, "time.out")
        argv = [GNU_TIME, "-f", "%M", "-o", report, tern.tern_bin(), "-F", cfg]
        for c in commands:
            argv += ["-e", c]
        t0 = time.monotonic()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=self.ws.env(), cwd=self.ws.path("home"),
                              timeout=60)
        res = tern.Result(argv, proc.returncode, proc.stdout, proc.stderr,
                          time.monotonic() - t0)
        with open(report) as f:
            lines = [l.strip() for l in f if l.strip()]
        rss = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        return res, rss

    def assertFailsWithin(self, res, codes, limit=TIME_LIMIT):
        self.assertLess(res.elapsed, limit, "took too long\n" + res.describe())
        return self.assertFails(res, codes)


# ---------------------------------------------------------------------------
# POP3
# ---------------------------------------------------------------------------


class FakePop3Test(FakeCase):
    protocol = "pop"

    def account(self, srv, scheme="pop3s", **extra):
        keys = {"pop3": "%s://%s@127.0.0.1:%d" % (scheme, USER, srv.port),
                "password": PASSWORD, "tls_ca_file": CERTS.ca_cert,
                "cache_dir": os.path.join(self.ws.dir, "cache"), "timeout": "5"}
        keys.update(extra)
        return {k: v for k, v in keys.items() if v is not None}

    def local(self, keys, folder="Inbox"):
        return list(maildir_files(os.path.join(keys["cache_dir"], "mail", folder)).values())

    def counts(self, res):
        self.assertOk(res)
        obj = last_with(res, "downloaded")
        self.assertIsNotNone(obj, res.describe())
        return obj

    def assertStoredExactly(self, keys, msgs, why=""):
        stored = self.local(keys)
        unmatched, missing, dups = match_messages(stored, msgs)
        self.assertEqual((len(unmatched), len(missing), len(dups)), (0, 0, 0),
                         "stored %d, expected %d: unmatched %r missing %r twice %r %s" % (
                             len(stored), len(msgs), [u[:80] for u in unmatched],
                             [m[:80] for m in missing], [d[:80] for d in dups], why))

    def assertNoCredentialsInCleartext(self, srv):
        plain = srv.received(tls=False)
        for mark in CREDENTIAL_MARKS:
            self.assertNotIn(mark, plain, "%r before TLS" % mark)
        self.assertNotIn(PASSWORD.encode(), srv.received())

    # ----- TLS -----------------------------------------------------------

    def test_stls_missing_on_pop3_url(self):
        srv = self.serve(FakePOP3, caps=["USER", "UIDL", "TOP"])
        keys = self.account(srv, "pop3")
        self.assertFailsWithin(self.run_tern(self.config(keys), "pop"), "tls")
        self.assertNoCredentialsInCleartext(srv)
        self.assertEqual(srv.auth_attempts, [])
        self.assertEqual(self.local(keys), [])

    def test_stls_refused(self):
        srv = self.serve(FakePOP3, [Stls(reply="-ERR TLS not available right now")])
        keys = self.account(srv, "pop3")
        self.assertFailsWithin(self.run_tern(self.config(keys), "pop"), "tls")
        self.assertNoCredentialsInCleartext(srv)
        self.assertEqual(srv.auth_attempts, [])

    def test_bytes_after_the_stls_go_ahead(self):
        srv = self.serve(FakePOP3, [Stls(inject=b"+OK [SYS/TEMP] injected\r\n")])
        keys = self.account(srv, "pop3")
        self.assertFailsWithin(self.run_tern(self.config(keys), "pop"), ("tls", "proto"))
        self.assertNoCredentialsInCleartext(srv)
        self.assertEqual(srv.auth_attempts, [])
        self.assertEqual(srv.retrieved, [])

    def test_garbage_or_negative_greeting(self):
        for i, greeting in enumerate(("HTTP/1.1 400 Bad Request", "-ERR go away")):
            with self.subTest(greeting=greeting):
                srv = self.serve(FakePOP3, tls="server", greeting=greeting)
                keys = self.account(srv, cache_dir=os.path.join(self.ws.dir, "g%d" % i))
                self.assertFailsWithin(self.run_tern(self.config(keys), "pop"),
                                       ("proto", "refused"))
                self.assertEqual(srv.auth_attempts, [])

    def test_stls_then_login_inside_tls(self):
        srv = self.serve(FakePOP3)
        keys = self.account(srv, "pop3")
        c = self.counts(self.run_tern(self.config(keys), "pop"))
        self.assertEqual(c["downloaded"], 3)
        self.assertNoCredentialsInCleartext(srv)
        self.assertTrue(srv.auth_attempts and all(a.tls for a in srv.auth_attempts))
        self.assertEqual(srv.auth_attempts[-1].password, PASSWORD)
        # RFC 2595 §4: the capabilities are asked again inside TLS.
        self.assertIn("CAPA", srv.command_names(tls=True))

    # ----- authentication ------------------------------------------------

    def test_pass_refused(self):
        srv = self.serve(FakePOP3, tls="server", auth_reply="-ERR [AUTH] Authentication failed.")
        keys = self.account(srv)
        self.assertFailsWithin(self.run_tern(self.config(keys), "pop"), "auth")
        self.assertEqual(srv.retrieved, [])
        self.assertNotIn("DELE", srv.command_names())

    def test_user_pass_without_sasl(self):
        srv = self.serve(FakePOP3, tls="server", caps_tls=["USER", "UIDL", "TOP"])
        keys = self.account(srv)
        self.counts(self.run_tern(self.config(keys), "pop"))
        self.assertEqual([a.mechanism for a in srv.auth_attempts], ["USER/PASS"])

    def test_xoauth2_and_oauthbearer(self):
        for mech, name in (("xoauth2", "AUTH XOAUTH2"), ("oauthbearer", "AUTH OAUTHBEARER")):
            with self.subTest(mech=mech):
                srv = self.serve(FakePOP3, tls="server", password=TOKEN)
                keys = self.account(srv, auth=mech, password=TOKEN,
                                    cache_dir=os.path.join(self.ws.dir, "cache-" + mech))
                self.counts(self.run_tern(self.config(keys), "pop"))
                self.assertEqual([a[2:] for a in srv.auth_attempts], [(name, USER, TOKEN)])

    # ----- framing (P2) ------------------------------------------------------

    def test_dot_stuffing_and_terminator_split_byte_by_byte(self):
        bodies = [[".", "..", "...", ".x", "x.", " .", "end"],
                  ["line", ".", ""], ["", ".."], ["ends with a dot."]]
        msgs = [PopMessage(pop_message(i, b), uidl=b"split-%d" % i, chunk=1, pause=0.0005)
                for i, b in enumerate(bodies, 1)]
        msgs.append(PopMessage(pop_message(9, ["three at a time"] * 20), uidl=b"split-9", chunk=3,
                               pause=0.0005))
        srv = self.serve(FakePOP3, tls="server", messages=msgs)
        keys = self.account(srv)
        self.counts(self.run_tern(self.config(keys), "pop", timeout=60))
        self.assertStoredExactly(keys, [m.data for m in msgs])
        self.assertEqual(srv.mailbox, [])

    def test_message_without_final_crlf(self):
        data = b"Subject: no newline\r\nMessage-ID: <nonl@pop.example>\r\n\r\nlast line"
        srv = self.serve(FakePOP3, tls="server", messages=[PopMessage(data, uidl=b"nonl")])
        keys = self.account(srv)
        self.counts(self.run_tern(self.config(keys), "pop"))
        # On the wire the server ends the last line before the terminator (RFC 1939
        # §3); that CRLF is the message's.
        self.assertStoredExactly(keys, [data + b"\r\n"])

    def test_terminator_not_at_a_line_start_is_no_terminator(self):
        data = b"Subject: never ends\r\n\r\nbody"
        msg = PopMessage(data, uidl=b"noterm", wire=data + b".\r\n")
        srv = self.serve(FakePOP3, tls="server", messages=[msg])
        keys = self.account(srv, timeout="2")
        res = self.run_tern(self.config(keys), "pop")
        self.assertFailsWithin(res, ("timeout", "proto", "io"))
        self.assertEqual(self.local(keys), [])
        self.assertEqual(len(srv.mailbox), 1)
        self.assertNotIn("DELE", srv.command_names())

    def test_list_sizes_that_lie(self):
        msgs = [PopMessage(pop_message(1, ["x" * 70] * 70), uidl=b"lie-small", list_size=10),
                PopMessage(pop_message(2), uidl=b"lie-big", list_size=10 ** 9),
                PopMessage(pop_message(3), uidl=b"lie-zero", list_size=0)]
        srv = self.serve(FakePOP3, tls="server", messages=msgs)
        keys = self.account(srv)
        cfg = self.config(keys)
        self.counts(self.run_tern(cfg, "pop"))
        self.assertStoredExactly(keys, [m.data for m in msgs])
        listed = self.assertOk(self.run_tern(cfg, "list Inbox"))
        stored = {}
        for blob in self.local(keys):
            mid = re.search(rb"Message-ID: <([^>]+)>", blob).group(1).decode()
            stored[mid] = len(blob)
        self.assertEqual({o["message_id"]: o["size"] for o in listed}, stored)

    def test_drop_mid_retr_then_the_next_run_completes(self):
        msgs = [PopMessage(pop_message(i, ["line %d" % n for n in range(200)]), uidl=b"drop-%d" % i)
                for i in range(1, 4)]
        srv = self.serve(FakePOP3, tls="server", messages=msgs,
                         per_conn={1: [Retr(which=2, drop_after=500)]})
        keys = self.account(srv)
        cfg = self.config(keys)
        res = self.run_tern(cfg, "pop")
        self.assertFailsWithin(res, ("io", "proto"))
        self.assertEqual(srv.deleted, [], "deleted on a connection that failed")
        self.assertNotIn("DELE", srv.command_names(conn=1))
        stored = self.local(keys)
        unmatched, _, _ = match_messages(stored, [m.data for m in msgs])
        self.assertEqual(unmatched, [], "a partial message outside tmp/")
        self.counts(self.run_tern(cfg, "pop"))
        self.assertStoredExactly(keys, [m.data for m in msgs])
        self.assertEqual(srv.mailbox, [])

    def test_no_reply_to_quit_is_repaired_by_the_next_run(self):
        srv = self.serve(FakePOP3, tls="server", per_conn={1: [Quit(apply=False, reply=None)]})
        msgs = [m.data for m in srv.mailbox]
        keys = self.account(srv)
        cfg = self.config(keys)
        self.run_tern(cfg, "pop")
        self.assertStoredExactly(keys, msgs)
        self.assertEqual(len(srv.mailbox), 3)
        c = self.counts(self.run_tern(cfg, "pop"))
        self.assertEqual((c["downloaded"], c["deleted"]), (0, 3), c)
        self.assertEqual(srv.mailbox, [])
        self.assertStoredExactly(keys, msgs)

    # ----- UIDLs (P1) ------------------------------------------------------

    def test_hostile_and_duplicate_uidls(self):
        uidls = [b"", b"u" * 71, b"../../../../tmp/tern-evil", b"a/b", b"\x01\x1b[31mred",
                 b"dup", b"dup", b"ok-1"]
        msgs = [PopMessage(pop_message(i, tag="uidl"), uidl=u) for i, u in enumerate(uidls, 1)]
        srv = self.serve(FakePOP3, tls="server", messages=msgs)
        keys = self.account(srv, pop3_keep="yes")
        cfg = self.config(keys)
        before = set(os.listdir("/tmp"))
        self.counts(self.run_tern(cfg, "pop"))
        self.assertStoredExactly(keys, [m.data for m in msgs])
        c = self.counts(self.run_tern(cfg, "pop"))
        self.assertEqual(c["downloaded"], 0, "the second run downloaded again: %s" % c)
        self.assertStoredExactly(keys, [m.data for m in msgs], "after a second run")
        self.assertNotIn("tern-evil", set(os.listdir("/tmp")) - before)
        for root, dirs, files in os.walk(self.ws.dir):
            for name in dirs + files:
                self.assertNotIn("tern-evil", name)
                self.assertNotIn("\x1b", name)
                self.assertNotEqual(name, "b", os.path.join(root, name))

    def test_server_without_uidl_uses_a_content_hash_and_says_so(self):
        srv = self.serve(FakePOP3, tls="server", uidl=False)
        msgs = [m.data for m in srv.mailbox]
        keys = self.account(srv, pop3_keep="yes")
        cfg = self.config(keys)
        res = self.run_tern(cfg, "pop")
        self.counts(res)
        self.assertRegex(res.stdout.decode("utf-8", "replace") + res.stderr,
                         r"(?i)uidl", "no word that UIDL is missing\n" + res.describe())
        self.run_tern(cfg, "pop")
        self.assertStoredExactly(keys, msgs, "after two runs without UIDL")
        self.assertEqual(len(srv.mailbox), 3)

    def test_server_without_capa(self):
        srv = self.serve(FakePOP3, tls="server", capa=False)
        keys = self.account(srv)
        self.counts(self.run_tern(self.config(keys), "pop"))
        self.assertStoredExactly(keys, [m.data for m in srv.deleted])

    # ----- pipelining --------------------------------------------------------

    def test_pipelining_only_when_offered(self):
        many = [PopMessage(pop_message(i, tag="pipe"), uidl=b"pipe-%d" % i) for i in range(1, 9)]
        srv = self.serve(FakePOP3, tls="server", messages=many)
        keys = self.account(srv, cache_dir=os.path.join(self.ws.dir, "c1"))
        self.counts(self.run_tern(self.config(keys), "pop"))
        piped = [c.name for c in srv.commands() if c.pipelined]
        self.assertTrue(piped, "nothing pipelined although PIPELINING was offered")
        caps = [c for c in fakepop3.DEFAULT_CAPS_TLS if c != "PIPELINING"]
        again = [PopMessage(m.data, uidl=m.uidl) for m in many]
        srv2 = self.serve(FakePOP3, tls="server", messages=again, caps_tls=caps)
        keys2 = self.account(srv2, cache_dir=os.path.join(self.ws.dir, "c2"))
        self.counts(self.run_tern(self.config(keys2), "pop"))
        self.assertEqual([c.text for c in srv2.commands() if c.pipelined], [],
                         "commands sent before the previous reply without PIPELINING")
        self.assertStoredExactly(keys2, [m.data for m in again])

    # ----- hostile lines (I3) --------------------------------------------------

    def test_ten_megabyte_greeting(self):
        srv = self.serve(FakePOP3, [fakepop3.HugeLine(prefix=b"+OK ")], tls="server",
                         greeting=False)
        keys = self.account(srv)
        res, rss = self.run_measured(self.config(keys), "pop")
        self.assertFailsWithin(res, "proto")
        self.assertLess(rss, MAX_RSS_KB, "peak RSS %d KB" % rss)
        self.assertEqual(srv.auth_attempts, [])

    def test_ten_megabyte_uidl_line(self):
        srv = self.serve(FakePOP3, [fakepop3.Expect(r"^UIDL", reply="+OK"),
                                    fakepop3.HugeLine(prefix=b"1 ")], tls="server")
        keys = self.account(srv)
        res, rss = self.run_measured(self.config(keys), "pop")
        self.assertFailsWithin(res, "proto")
        self.assertLess(rss, MAX_RSS_KB, "peak RSS %d KB" % rss)
        self.assertNotIn("DELE", srv.command_names())
        self.assertEqual(len(srv.mailbox), 3)


# ---------------------------------------------------------------------------
# SMTP
# ---------------------------------------------------------------------------


def smtp_file(mid=None, to="Bob <bob@example.org>", body="Hello Bob.\r\n", extra=(),
              date=True, eol=b"\r\n"):
    head = [b"From: Tester <tester@example.org>", b"To: " + to.encode("utf-8"),
            b"Subject: fake smtp"]
    if date:
        head.append(b"Date: Mon, 01 Jan 2024 10:00:00 +0000")
    if mid:
        head.append(b"Message-ID: <%s>" % mid.encode())
    head += [e.encode("utf-8") for e in extra]
    data = body.encode("utf-8") if isinstance(body, str) else body
    return eol.join(head) + eol + eol + data


class FakeSmtpTest(FakeCase):
    protocol = "smtp"

    def account(self, srv=None, scheme="smtps", port=None, **extra):
        if port is None:
            port = srv.port
        keys = {"from": "Tester <tester@example.org>",
                "smtp": "%s://%s@127.0.0.1:%d" % (scheme, USER, port),
                "password": PASSWORD, "tls_ca_file": CERTS.ca_cert,
                "cache_dir": os.path.join(self.ws.dir, "cache"), "timeout": "5"}
        keys.update(extra)
        return {k: v for k, v in keys.items() if v is not None}

    def write(self, data):
        path = os.path.join(self.dir, "msg-%d.eml" % len(os.listdir(self.dir)))
        with open(path, "wb") as f:
            f.write(data)
        return path

    def send(self, cfg, data, **kw):
        return self.run_tern(cfg, "send %s" % quote(self.write(data)), **kw)

    def outbox(self, cfg):
        return self.assertOk(self.run_tern(cfg, "outbox"))

    def assertQueuedThenFailed(self, res, codes=("refused", "io", "proto", "tls", "timeout",
                                                 "auth")):
        """The message was queued, then the send failed (exit 1)."""
        self.assertTrue([o for o in res.results if o.get("queued")],
                        "not queued first\n" + res.describe())
        self.assertEqual([o for o in res.results if o.get("sent")], [], res.describe())
        return self.assertFailsWithin(res, codes)

    def assertNothingTransmitted(self, srv):
        names = srv.command_names()
        self.assertNotIn("MAIL", names)
        self.assertNotIn("DATA", names)
        self.assertEqual(srv.messages, [])

    def delivered(self, srvs, mid):
        """How many 2xx-acknowledged copies of MID the servers SRVS took."""
        needle = ("<%s>" % mid).encode()
        return sum(1 for s in srvs for tx in s.messages
                   if needle in tx.data and tx.reply and tx.reply.startswith("2"))

    # ----- TLS (T1, T3) ------------------------------------------------------

    def test_starttls_missing(self):
        srv = self.serve(FakeSMTP, ehlo=["PIPELINING", "8BITMIME", "AUTH PLAIN LOGIN"],
                         require_auth=False)
        cfg = self.config(self.account(srv, "smtp"))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("t1@x")), "tls")
        self.assertNothingTransmitted(srv)
        self.assertEqual(srv.auth_attempts, [])
        self.assertEqual([b["message_id"] for b in self.outbox(cfg)], ["t1@x"])

    def test_starttls_refused(self):
        srv = self.serve(FakeSMTP, [StartTLS(reply="454 4.7.0 TLS not available")])
        cfg = self.config(self.account(srv, "smtp"))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("t2@x")), "tls")
        self.assertNothingTransmitted(srv)
        self.assertEqual(srv.auth_attempts, [])

    def test_bytes_after_the_starttls_go_ahead(self):
        srv = self.serve(FakeSMTP, [StartTLS(inject=b"250-injected\r\n250 AUTH PLAIN\r\n")])
        cfg = self.config(self.account(srv, "smtp"))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("t3@x")), ("tls", "proto"))
        self.assertNothingTransmitted(srv)
        self.assertEqual(srv.auth_attempts, [])
        self.assertNotIn(b"AUTH", srv.received(tls=False))

    def test_non_esmtp_server_on_a_starttls_url(self):
        # EHLO refused: HELO would work, but without EHLO there is no STARTTLS.
        srv = self.serve(FakeSMTP, [Fail("EHLO", "502 5.5.2 Error: command not recognized",
                                         close=False)], require_auth=False)
        cfg = self.config(self.account(srv, "smtp"))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("helo@x")), ("tls", "proto"))
        self.assertNothingTransmitted(srv)
        self.assertEqual(srv.auth_attempts, [])

    def test_garbage_greeting(self):
        srv = self.serve(FakeSMTP, tls="server", greeting="HTTP/1.1 400 Bad Request")
        cfg = self.config(self.account(srv))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("garbage@x")), ("proto", "refused"))
        self.assertNothingTransmitted(srv)

    def test_starttls_then_auth_inside(self):
        srv = self.serve(FakeSMTP)
        cfg = self.config(self.account(srv, "smtp"))
        res = self.send(cfg, smtp_file("t4@x"))
        self.assertOk(res)
        self.assertNotIn(b"AUTH", srv.received(tls=False))
        self.assertTrue(srv.auth_attempts and srv.auth_attempts[0].tls)
        # RFC 3207 §4.2: EHLO again inside TLS.
        self.assertIn("EHLO", srv.command_names(tls=True))
        self.assertEqual(len(srv.messages), 1)
        self.assertTrue(srv.messages[0].tls)

    # ----- replies (S1, S2) --------------------------------------------------

    def test_421_at_every_step(self):
        cases = [("greeting", [], "421 4.3.2 fakesmtp going down now"),
                 ("EHLO", [Fail("EHLO", "421 4.3.2 fakesmtp going down at EHLO")], None),
                 ("AUTH", [Fail("AUTH", "421 4.3.2 fakesmtp going down at AUTH")], None),
                 ("MAIL", [Fail("MAIL", "421 4.3.2 fakesmtp going down at MAIL")], None),
                 ("RCPT", [Fail("RCPT", "421 4.3.2 fakesmtp going down at RCPT")], None),
                 ("DATA", [Fail("DATA", "421 4.3.2 fakesmtp going down at DATA")], None),
                 ("end of DATA", [Data(reply="421 4.3.2 fakesmtp going down after DATA",
                                       close=True)], None)]
        for i, (step, script, greeting) in enumerate(cases):
            with self.subTest(step=step):
                srv = self.serve(FakeSMTP, script, tls="server",
                                 greeting=greeting if greeting else None)
                keys = self.account(srv, cache_dir=os.path.join(self.ws.dir, "c421-%d" % i))
                cfg = self.config(keys)
                self.assertQueuedThenFailed(self.send(cfg, smtp_file("s421-%d@x" % i)))
                box = self.outbox(cfg)
                self.assertEqual([b["state"] for b in box], ["queued"], box)
                self.assertIn("421", box[0]["last_error"], box)
                after = [c.name for c in srv.commands_after("Fail")] if script and \
                    isinstance(script[0], Fail) else []
                self.assertEqual([n for n in after if n != "QUIT"], [],
                                 "commands after the 421")

    def test_451_after_data_stays_queued(self):
        srv = self.serve(FakeSMTP, tls="server", data_replies={0: "451 4.3.0 try again later"})
        cfg = self.config(self.account(srv))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("s451@x")))
        box = self.outbox(cfg)
        self.assertEqual([b["state"] for b in box], ["queued"], box)
        self.assertIn("451", box[0]["last_error"])
        self.assertGreaterEqual(box[0]["attempts"], 1)
        # A flush after the backoff sends it again; the server now takes it.
        self.assertOk(self.run_tern(cfg, "flush", env=popsmtp.later()))
        self.assertEqual(self.delivered([srv], "s451@x"), 1)
        self.assertEqual(self.outbox(cfg), [])

    def test_554_after_data_fails_and_is_not_retried(self):
        srv = self.serve(FakeSMTP, tls="server",
                         data_replies={0: "554 5.7.1 rejected: looks like spam to fakesmtp"})
        cfg = self.config(self.account(srv))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("s554@x")), "refused")
        box = self.outbox(cfg)
        self.assertEqual([b["state"] for b in box], ["failed"], box)
        self.assertIn("looks like spam to fakesmtp", box[0]["last_error"])
        self.run_tern(cfg, "flush", env=popsmtp.later())
        self.assertEqual(srv.data_count, 1, "a failed message was sent again")
        self.assertEqual([b["state"] for b in self.outbox(cfg)], ["failed"])

    def test_drop_after_the_dot_without_reply_then_one_resend(self):
        srv = self.serve(FakeSMTP, tls="server", per_conn={1: [Data(reply=None, close=True)]})
        cfg = self.config(self.account(srv))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("nodotreply@x")),
                                    ("io", "proto", "refused", "timeout"))
        self.assertEqual([b["state"] for b in self.outbox(cfg)], ["queued"])
        self.assertEqual(len(srv.messages), 1)
        self.assertOk(self.run_tern(cfg, "flush", env=popsmtp.later()))
        self.assertEqual(len(srv.messages), 2, "sent again exactly once")
        self.assertEqual(self.outbox(cfg), [])

    def test_drop_mid_data(self):
        big = "x" * 76 + "\r\n"
        srv = self.serve(FakeSMTP, [Data(drop_after=1000)], tls="server")
        cfg = self.config(self.account(srv))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("middata@x", body=big * 2000)),
                                    ("io", "proto", "refused"))
        self.assertEqual(srv.messages, [])
        self.assertEqual([b["state"] for b in self.outbox(cfg)], ["queued"])

    def test_multiline_reply_that_never_ends(self):
        srv = self.serve(FakeSMTP, [fakesmtp.Expect(r"^EHLO"),
                                    fakesmtp.Send(b"250-fakesmtp\r\n250-PIPELINING\r\n"),
                                    fakesmtp.Stall()], tls="server")
        cfg = self.config(self.account(srv, timeout="2"))
        res = self.send(cfg, smtp_file("neverends@x"))
        self.assertQueuedThenFailed(res, ("timeout", "io", "proto"))
        self.assertNothingTransmitted(srv)

    def test_ten_megabyte_reply_line(self):
        srv = self.serve(FakeSMTP, [fakesmtp.Expect(r"^EHLO"),
                                    fakesmtp.HugeLine(prefix=b"250-")], tls="server")
        cfg = self.config(self.account(srv))
        self.write(smtp_file("huge@x"))
        res, rss = self.run_measured(cfg, "send %s" % quote(self.write(smtp_file("huge@x"))))
        self.assertFailsWithin(res, "proto")
        self.assertLess(rss, MAX_RSS_KB, "peak RSS %d KB" % rss)
        self.assertNothingTransmitted(srv)

    def test_partial_recipient_failures_are_reported_per_recipient(self):
        srv = self.serve(FakeSMTP, tls="server",
                         rcpt_replies={"gone@example.org": "550 5.1.1 <gone@example.org> unknown",
                                       "busy@example.org": "452 4.2.2 mailbox busy"})
        cfg = self.config(self.account(srv))
        to = "bob@example.org, gone@example.org, busy@example.org"
        res = self.send(cfg, smtp_file("partial@x", to=to))
        out = res.stdout.decode("utf-8", "replace")
        for needle in ("gone@example.org", "550", "busy@example.org", "452"):
            self.assertIn(needle, out, res.describe())
        self.assertEqual(len(srv.messages), 1)
        self.assertEqual(srv.messages[0].rcpts, ["bob@example.org"])
        self.assertEqual(sorted(srv.messages[0].rejected), ["busy@example.org",
                                                            "gone@example.org"])

    def test_every_recipient_refused_sends_no_data(self):
        srv = self.serve(FakeSMTP, tls="server",
                         rcpt_replies={"gone@example.org": "550 5.1.1 unknown user"})
        cfg = self.config(self.account(srv))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("allgone@x", to="gone@example.org")),
                                    "refused")
        self.assertEqual(srv.messages, [])
        box = self.outbox(cfg)
        self.assertEqual([b["state"] for b in box], ["failed"], box)

    def test_auth_refused(self):
        srv = self.serve(FakeSMTP, tls="server",
                         auth_reply="535 5.7.8 Authentication credentials invalid")
        cfg = self.config(self.account(srv))
        self.assertQueuedThenFailed(self.send(cfg, smtp_file("authno@x")), "auth")
        self.assertNothingTransmitted(srv)

    def test_auth_mechanisms(self):
        cases = [("login only", {"ehlo_tls": ["AUTH LOGIN"]}, {}, "AUTH LOGIN", PASSWORD),
                 ("plain", {}, {"auth": "plain"}, "AUTH PLAIN", PASSWORD),
                 ("xoauth2", {"password": TOKEN}, {"auth": "xoauth2", "password": TOKEN},
                  "AUTH XOAUTH2", TOKEN),
                 ("oauthbearer", {"password": TOKEN}, {"auth": "oauthbearer", "password": TOKEN},
                  "AUTH OAUTHBEARER", TOKEN)]
        for i, (name, srv_kw, keys_kw, mech, secret) in enumerate(cases):
            with self.subTest(mech=name):
                srv = self.serve(FakeSMTP, tls="server", **srv_kw)
                keys = self.account(srv, cache_dir=os.path.join(self.ws.dir, "auth%d" % i),
                                    **keys_kw)
                self.assertOk(self.send(self.config(keys), smtp_file("auth%d@x" % i)))
                self.assertEqual([a[2:] for a in srv.auth_attempts], [(mech, USER, secret)])

    # ----- what goes on the wire (S3) -----------------------------------------

    def test_crlf_and_dot_stuffing_on_the_wire(self):
        body = (b"bare LF\n.\n..\n.x\nbare CR\rnext\r\nCRLF line\r\n. \r\n"
                b"From the start\nlast line without newline")
        data = smtp_file("wire@x", body=body, eol=b"\n")
        srv = self.serve(FakeSMTP, tls="server")
        cfg = self.config(self.account(srv))
        self.assertOk(self.send(cfg, data))
        raw = srv.messages[0].raw
        self.assertNotRegex(raw, rb"[^\r]\n", "a bare LF on the wire")
        self.assertNotRegex(raw, rb"\r[^\n]", "a bare CR on the wire")
        self.assertTrue(raw.endswith(b"\r\n"))
        lines = raw.split(b"\r\n")
        self.assertIn(b"..", lines)
        self.assertIn(b"...", lines)
        self.assertIn(b"..x", lines)
        self.assertIn(b".. ", lines)
        self.assertNotIn(b".", lines, "an unstuffed lone dot")
        text = srv.messages[0].data
        for line in (b"bare LF", b"From the start", b"last line without newline", b"next"):
            self.assertIn(b"\r\n" + line + b"\r\n", text)

    def test_bcc_removed_and_envelope_from_headers(self):
        data = smtp_file("bcc@x", to="Bob <bob@example.org>",
                         extra=["Cc: carol@example.org, Dan <dan@example.org>",
                                "Bcc: Secret <secret@example.org>, hidden@example.org"])
        srv = self.serve(FakeSMTP, tls="server")
        cfg = self.config(self.account(srv))
        self.assertOk(self.send(cfg, data))
        tx = srv.messages[0]
        self.assertEqual(tx.mail_from, "tester@example.org")
        self.assertEqual(sorted(tx.rcpts), ["bob@example.org", "carol@example.org",
                                            "dan@example.org", "hidden@example.org",
                                            "secret@example.org"])
        head = tx.data.split(b"\r\n\r\n", 1)[0]
        self.assertNotRegex(head, rb"(?im)^bcc:", "Bcc transmitted")
        self.assertNotIn(b"secret@example.org", head)
        self.assertNotIn(b"hidden@example.org", head)

    def test_date_and_message_id_added_when_missing(self):
        srv = self.serve(FakeSMTP, tls="server")
        cfg = self.config(self.account(srv))
        res = self.send(cfg, smtp_file(None, date=False))
        objs = self.assertOk(res)
        mid = [o for o in objs if o.get("queued")][0]["message_id"]
        head = srv.messages[0].data.split(b"\r\n\r\n", 1)[0]
        self.assertRegex(head, rb"(?im)^date: \S")
        self.assertIn(b"<%s>" % mid.encode(), head)
        self.assertRegex(head, rb"(?im)^message-id: <[^@>\s]+@[^>\s]+>")

    def test_size_refused_before_data(self):
        srv = self.serve(FakeSMTP, tls="server", size_limit=2000,
                         ehlo_tls=["PIPELINING", "SIZE 2000", "8BITMIME", "AUTH PLAIN LOGIN"])
        cfg = self.config(self.account(srv))
        res = self.send(cfg, smtp_file("size@x", body=("y" * 76 + "\r\n") * 100))
        self.assertQueuedThenFailed(res, ("refused", "unsupported"))
        self.assertNotIn("DATA", srv.command_names())
        self.assertEqual(srv.data_count, 0)

    def test_8bitmime_and_smtputf8(self):
        srv = self.serve(FakeSMTP, tls="server")
        cfg = self.config(self.account(srv))
        self.assertOk(self.send(cfg, smtp_file("8bit@x", body="Grüße ✓\r\n")))
        self.assertEqual(srv.messages[0].mail_params.get("BODY"), "8BITMIME")
        self.assertOk(self.send(cfg, smtp_file("utf8@x", to="Jürgen <jürgen@bücher.example>")))
        self.assertIn("SMTPUTF8", srv.messages[1].mail_params)
        self.assertEqual(srv.messages[1].rcpts, ["jürgen@bücher.example".encode().decode(
            "latin-1")])

    def test_dsn_when_configured(self):
        srv = self.serve(FakeSMTP, tls="server")
        plain = self.config(self.account(srv))
        self.assertOk(self.send(plain, smtp_file("nodsn@x")))
        self.assertNotIn("RET", srv.messages[0].mail_params)
        cfg = self.config(dict(self.account(srv), dsn_notify="failure,delay"))
        self.assertOk(self.send(cfg, smtp_file("dsn@x")))
        self.assertEqual(srv.messages[1].mail_params.get("RET"), "HDRS")
        rcpt = [c for c in srv.commands() if c.name == "RCPT"][-1]
        self.assertIn("NOTIFY=FAILURE,DELAY", rcpt.text.upper())

    def test_utf8_address_without_smtputf8_is_refused(self):
        srv = self.serve(FakeSMTP, tls="server",
                         ehlo_tls=["PIPELINING", "8BITMIME", "AUTH PLAIN LOGIN"])
        cfg = self.config(self.account(srv))
        res = self.send(cfg, smtp_file("noutf8@x", to="jürgen@bücher.example"))
        self.assertQueuedThenFailed(res, ("unsupported", "refused"))
        self.assertEqual(srv.messages, [])

    def test_pipelining_when_offered(self):
        srv = self.serve(FakeSMTP, tls="server")
        cfg = self.config(self.account(srv))
        self.assertOk(self.send(cfg, smtp_file("pipe@x", to="a@example.org, b@example.org")))
        mail = [c for c in srv.commands() if c.name == "MAIL"][0]
        self.assertTrue(mail.pipelined, "MAIL and RCPT were not sent together")
        srv2 = self.serve(FakeSMTP, tls="server",
                          ehlo_tls=["8BITMIME", "AUTH PLAIN LOGIN", "SIZE 1000000"])
        keys = self.account(srv2, cache_dir=os.path.join(self.ws.dir, "nopipe"))
        self.assertOk(self.send(self.config(keys), smtp_file("nopipe@x",
                                                             to="a@example.org, b@example.org")))
        self.assertEqual([c.text for c in srv2.commands() if c.pipelined], [])

    # ----- outbox and flush ----------------------------------------------------

    def test_flush_sends_the_queue_over_one_connection(self):
        closed = dovecot.free_ports(1)[0]
        srv = self.serve(FakeSMTP, tls="server")
        keys = self.account(srv)
        down = self.ws.write_config({"fake": dict(keys, smtp="smtps://%s@127.0.0.1:%d" % (
            USER, closed))})
        mids = ["q%d@x" % i for i in range(4)]
        for mid in mids:
            self.assertQueuedThenFailed(self.send(down, smtp_file(mid)))
        self.assertEqual(srv.connections, 0)
        box = self.outbox(down)
        self.assertEqual(sorted(b["message_id"] for b in box), mids)
        res = self.run_tern(self.config(keys), "flush", env=popsmtp.later())
        objs = self.assertOk(res)
        self.assertEqual(sorted(o["message_id"] for o in objs if o.get("sent")), mids)
        self.assertEqual(srv.connections, 1)
        self.assertEqual(sorted(m.data.split(b"Message-ID: <")[1].split(b">")[0].decode()
                                for m in srv.messages), mids)
        self.assertEqual(self.outbox(down), [])

    def test_compose_refuses_cr_lf_in_values(self):
        srv = self.serve(FakeSMTP, tls="server")
        cfg = self.config(self.account(srv))
        body = self.write(b"body\n")
        for to, subject in (("bob@example.org", "x\r\nBcc: evil@example.org"),
                            ("bob@example.org\nevil@example.org", "x"),
                            ("bob@example.org\r\n", "x")):
            with self.subTest(to=to, subject=subject):
                res = self.run_tern(cfg, "compose --to %s --subject %s --body-file %s" % (
                    quote(to), quote(subject), quote(body)))
                self.assertIn(res.rc, (1, 2), res.describe())
                self.assertTrue(res.errors)
        self.assertEqual(srv.connections, 0)
        self.assertEqual(self.outbox(cfg), [])

    def test_queue_write_failure_sends_nothing(self):
        srv = self.serve(FakeSMTP, tls="server")
        cfg = self.config(self.account(srv))
        data = smtp_file("fsize@x", body=("z" * 76 + "\r\n") * 8000)
        path = self.write(data)
        limit = 64 * 1024

        def limits():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        res = self.run_tern(cfg, "send %s" % quote(path), preexec_fn=limits)
        self.assertFailsWithin(res, "io")
        self.assertEqual([o for o in res.results if o.get("queued")], [], res.describe())
        self.assertEqual(srv.connections, 0, "sent although it could not be queued")
        self.assertEqual(self.outbox(cfg), [])

    # ----- crashes (F2) ----------------------------------------------------------

    def test_kill_at_every_step_of_a_send(self):
        kills = 0
        for n in range(1, 60):
            srv = self.serve(FakeSMTP, tls="server")
            keys = self.account(srv, cache_dir=os.path.join(self.ws.dir, "kill%d" % n))
            cfg = self.config(keys)
            mid = "kill%d@x" % n
            res = popsmtp.run(self.ws, cfg, ["send %s" % quote(self.write(smtp_file(mid)))],
                              env={"TERN_TEST_KILL_AT": str(n)})
            if res.rc == 0:
                self.assertEqual(self.delivered([srv], mid), 1)
                break
            self.assertTrue(killed_by_hook(res), "step %d\n%s" % (n, res.describe()))
            kills += 1
            self.assertOk(self.run_tern(cfg, "flush", env=popsmtp.later()))
            got = self.delivered([srv], mid)
            self.assertGreaterEqual(got, 1, "lost after a kill at step %d" % n)
            self.assertLessEqual(got, 2, "sent %d times after a kill at step %d" % (got, n))
            self.assertEqual(self.outbox(cfg), [], "step %d" % n)
            srv.stop()
        else:
            self.fail("a send took more than 60 steps")
        self.assertGreaterEqual(kills, 2, "TERN_TEST_KILL_AT fired %d times during a send: is "
                                "the hook implemented for the outbox?" % kills)

    def test_sigkill_at_random_moments_of_a_flush(self):
        seed = int(os.environ.get("TERN_TEST_SEED") or 20240105)
        rng = random.Random(seed)
        closed = dovecot.free_ports(1)[0]
        srv = self.serve(FakeSMTP, tls="server", data_delay=0.05)
        keys = self.account(srv)
        down = self.ws.write_config({"fake": dict(keys, smtp="smtps://%s@127.0.0.1:%d" % (
            USER, closed))})
        up = self.config(keys)
        mids = ["rk%d@x" % i for i in range(10)]
        for mid in mids:
            self.send(down, smtp_file(mid))
        kills = 0
        for i in range(5):
            rc, out, err, killed = popsmtp.run_killed(self.ws, up, ["flush"],
                                                      rng.uniform(0.05, 0.6),
                                                      env=popsmtp.later(i + 1))
            self.assertNotIn("AddressSanitizer", err)
            kills += killed
        self.assertOk(self.run_tern(up, "flush", env=popsmtp.later(10)))
        self.assertEqual(self.outbox(up), [])
        extra = 0
        for mid in mids:
            got = self.delivered([srv], mid)
            self.assertGreaterEqual(got, 1, "%s lost (seed %d)" % (mid, seed))
            extra += got - 1
        self.assertLessEqual(extra, kills, "more duplicates than kills (seed %d)" % seed)


if __name__ == "__main__":
    unittest.main()
