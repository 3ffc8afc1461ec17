"""POP3 download against a real Dovecot: modes, bytes, TLS, and crash safety.

Layer: tests/integration. One private Dovecot (tests/lib/dovecot.py) for the
module; every test has its own Dovecot user, so nothing one test downloads or
deletes is seen by another. Expectations come from what the test seeded and
from Dovecot itself (doveadm), never from tern's earlier output.

The contract (DESIGN.md, issue "POP3 download and SMTP submission"):
`tern -F CONFIG -e pop` downloads into the local Maildir folder
cache_dir/mail/<pop3_folder> (default Inbox) and prints
{"downloaded":N,"kept":N,"deleted":N}; pop3_keep = yes leaves mail on the
server and tracks it by UIDL; with it, pop3_keep_days = N deletes what was
downloaded more than N days ago (the clock comes from TERN_TEST_NOW);
`pop --keep` leaves everything for one run. Nothing is deleted on the server
before it is stored (TESTMATRIX F1, F2): checked after
a kill by the TERN_TEST_KILL_AT hook at every journal step of a 20-message
download, after SIGKILLs at random moments, on a full disk (ENOSPC on a small
tmpfs) and on a file size limit (EFBIG).

Until tern has the `pop` command (it answers `unsupported`), every test here
is skipped with that reason. TERN_TEST_SEED fixes the random kill times.
"""

import os
import random
import resource
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dovecot  # noqa: E402
import popsmtp  # noqa: E402
import tern  # noqa: E402
from popsmtp import killed_by_hook, last_with, maildir_files, match_messages  # noqa: E402

DC = None
WS = None
SKIP = None
USERS = ["pop%d" % i for i in range(1, 25)]
_free_users = list(USERS)

# Upper bound on journal steps of one 20-message download; a run that never
# finishes below it is a failure, not an endless loop.
MAX_STEPS = 400
DAY = 86400


def _setup():
    global DC, WS, SKIP
    if not os.access(tern.tern_bin(), os.X_OK):
        SKIP = "tern not built at %s (set TERN_BIN)" % tern.tern_bin()
        return
    DC = dovecot.Dovecot(users={u: u + "-pw" for u in ["probe"] + USERS})
    DC.start()
    WS = tern.Workspace(prefix="tern-pop3-")
    keys = pop_account(WS, "probe")
    res = WS.run(WS.write_config({"probe": keys}), "pop", timeout=60)
    SKIP = popsmtp.unsupported_reason(res, "pop")


def setUpModule():
    try:
        _setup()
    except BaseException:
        # A failed setup gets no tearDownModule: stop what was started here.
        tearDownModule()
        raise


def tearDownModule():
    if DC:
        DC.cleanup()
    if WS:
        WS.cleanup()


def pop_account(ws, user, transport="pop3s", ca=True, **extra):
    """The keys of a POP-only account for USER on the module's Dovecot."""
    port = DC.ports["pop3s" if transport == "pop3s" else "pop3"]
    keys = {
        "from": "%s <%s@example.org>" % (user, user),
        "pop3": "%s://%s@127.0.0.1:%d" % (transport, user, port),
        "password": DC.password(user),
    }
    if ca:
        keys["tls_ca_file"] = DC.ca_file
    ws._n += 1
    keys["cache_dir"] = ws.path("data", "cache-%d-%s" % (ws._n, user))
    keys["timeout"] = "20"
    keys.update(extra)
    return {k: v for k, v in keys.items() if v is not None}


def make_message(tag, i, pad=0):
    """One CRLF message with a unique Message-ID, lines that need dot-stuffing,
    8-bit UTF-8, and PAD more bytes of body."""
    lines = [
        "From: Sender %d <sender%d@example.net>" % (i, i),
        "To: Receiver <receiver@example.org>",
        "Subject: POP test %s %d" % (tag, i),
        "Date: Mon, 01 Jan 2024 %02d:%02d:00 +0000" % (i // 60 % 24, i % 60),
        "Message-ID: <%s-%d@pop.tern.example>" % (tag, i),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        "Hello %d," % i,
        ".",
        "..",
        ".a line that starts with a dot",
        "From the start of a line",
        "Grüße, ✓ %s" % tag,
        "",
    ]
    n = 0
    while pad > 0:
        line = ("%06d " % n) + "abcdefghijklmnopqrstuvwxyz0123456789" * 2
        lines.append(line)
        pad -= len(line) + 2
        n += 1
    lines.append("end.")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


class Pop3Case(tern.TernCase):
    def setUp(self):
        if SKIP:
            self.skipTest(SKIP)
        if not _free_users:
            self.fail("the module ran out of Dovecot users; add more to USERS")
        self.user = _free_users.pop(0)
        self.ws = WS

    # ----- fixtures ------------------------------------------------------

    def seed(self, msgs, user=None):
        DC.add_messages(user or self.user, "INBOX", [(m, (), (), None) for m in msgs])

    def reset_server(self, user=None):
        user = user or self.user
        DC.doveadm("expunge", "-u", user, "mailbox", "INBOX", "all")

    def server_count(self, user=None):
        return DC.status(user or self.user, "INBOX", "messages")["messages"]

    def server_mids(self, user=None):
        out = set()
        for m in DC.fetch(user or self.user, "INBOX", "hdr.message-id"):
            out.add(m.get("hdr.message-id", "").strip())
        return out

    def config(self, keys):
        return self.ws.write_config({"pop": keys})

    def local_path(self, keys, folder="Inbox"):
        return os.path.join(keys["cache_dir"], "mail", folder)

    def local(self, keys, folder="Inbox"):
        return list(maildir_files(self.local_path(keys, folder)).values())

    def pop(self, cfg, *args, env=None):
        return self.ws.run(cfg, " ".join(("pop",) + args), env=env, timeout=120)

    def counts(self, res):
        """The {"downloaded","kept","deleted"} object of a successful run."""
        self.assertOk(res)
        obj = last_with(res, "downloaded")
        self.assertIsNotNone(obj, "no {\"downloaded\",...} object\n" + res.describe())
        for key in ("downloaded", "kept", "deleted"):
            self.assertIsInstance(obj.get(key), int, "%s\n%s" % (key, res.describe()))
        return obj

    # ----- assertions ----------------------------------------------------

    @staticmethod
    def _mid(data):
        for line in data.split(b"\n"):
            if line.lower().startswith(b"message-id:"):
                return line.split(b":", 1)[1].strip().decode()
        return None

    def assertStored(self, keys, msgs, folder="Inbox", why=""):
        """The local folder holds exactly MSGS, each once, byte for byte."""
        stored = self.local(keys, folder)
        unmatched, missing, dups = match_messages(stored, msgs)
        self.assertEqual(unmatched, [], "stored files that are no seeded message (partial or "
                         "corrupt) %s" % why)
        self.assertEqual([self._mid(m) for m in missing], [], "messages not stored %s" % why)
        self.assertEqual([self._mid(m) for m in dups], [], "messages stored twice %s" % why)
        self.assertEqual(len(stored), len(msgs), why)
        forms = {s == m for s in stored for m in msgs if popsmtp.same_message(s, m)}
        self.assertEqual(len(forms), 1 if stored else 0,
                         "the folder mixes CRLF and LF forms %s" % why)

    def assertNoLoss(self, keys, msgs, why=""):
        """Every seeded message is on the server or stored locally (complete), and no
        file outside tmp/ is a partial message."""
        stored = self.local(keys)
        unmatched, missing, _ = match_messages(stored, msgs)
        self.assertEqual(unmatched, [], "a partial or corrupt file outside tmp/ %s" % why)
        on_server = self.server_mids()
        lost = [self._mid(m) for m in missing if self._mid(m) not in on_server]
        self.assertEqual(lost, [], "messages neither on the server nor stored %s" % why)


class DownloadTest(Pop3Case):
    def test_delete_mode_stores_exact_bytes_and_empties_the_server(self):
        msgs = [make_message("del", i) for i in range(1, 5)] + [make_message("del", 5, 300000)]
        self.seed(msgs)
        keys = pop_account(self.ws, self.user)
        cfg = self.config(keys)
        c = self.counts(self.pop(cfg))
        self.assertEqual((c["downloaded"], c["deleted"], c["kept"]), (5, 5, 0), c)
        self.assertStored(keys, msgs)
        self.assertEqual(self.server_count(), 0)
        self.assertEqual(popsmtp.tmp_files(self.local_path(keys)), [], "tmp/ left behind")
        c = self.counts(self.pop(cfg))
        self.assertEqual((c["downloaded"], c["deleted"]), (0, 0), c)
        self.assertStored(keys, msgs)

    def test_keep_mode_tracks_uidls_across_runs(self):
        first = [make_message("keep", i) for i in range(1, 4)]
        self.seed(first)
        keys = pop_account(self.ws, self.user, pop3_keep="yes")
        cfg = self.config(keys)
        c = self.counts(self.pop(cfg))
        self.assertEqual((c["downloaded"], c["deleted"], c["kept"]), (3, 0, 3), c)
        self.assertEqual(self.server_count(), 3)
        c = self.counts(self.pop(cfg))
        self.assertEqual((c["downloaded"], c["deleted"]), (0, 0), c)
        self.assertStored(keys, first)
        more = [make_message("keep", i) for i in range(4, 6)]
        self.seed(more)
        c = self.counts(self.pop(cfg))
        self.assertEqual((c["downloaded"], c["deleted"]), (2, 0), c)
        self.assertStored(keys, first + more)
        self.assertEqual(self.server_count(), 5)

    def test_keep_option_overrides_delete_mode_for_one_run(self):
        msgs = [make_message("opt", i) for i in range(1, 4)]
        self.seed(msgs)
        keys = pop_account(self.ws, self.user)
        cfg = self.config(keys)
        c = self.counts(self.pop(cfg, "--keep"))
        self.assertEqual((c["downloaded"], c["deleted"]), (3, 0), c)
        self.assertEqual(self.server_count(), 3)
        # The next run in delete mode deletes what is already stored, without
        # downloading it again.
        c = self.counts(self.pop(cfg))
        self.assertEqual((c["downloaded"], c["deleted"]), (0, 3), c)
        self.assertEqual(self.server_count(), 0)
        self.assertStored(keys, msgs)

    def test_keep_days_deletes_what_was_downloaded_more_than_n_days_ago(self):
        t0 = int(time.time())
        old = [make_message("days", i) for i in range(1, 4)]
        self.seed(old)
        keys = pop_account(self.ws, self.user, pop3_keep="yes", pop3_keep_days="2")
        cfg = self.config(keys)
        c = self.counts(self.pop(cfg, env={"TERN_TEST_NOW": str(t0)}))
        self.assertEqual((c["downloaded"], c["deleted"]), (3, 0), c)
        new = [make_message("days", i) for i in range(4, 6)]
        self.seed(new)
        c = self.counts(self.pop(cfg, env={"TERN_TEST_NOW": str(t0 + DAY)}))
        self.assertEqual((c["downloaded"], c["deleted"]), (2, 0), c)
        self.assertEqual(self.server_count(), 5)
        # 2.5 days after the first download: those three are due, the others not.
        c = self.counts(self.pop(cfg, env={"TERN_TEST_NOW": str(t0 + 5 * DAY // 2)}))
        self.assertEqual((c["downloaded"], c["deleted"]), (0, 3), c)
        self.assertEqual(self.server_mids(), {"<days-4@pop.tern.example>",
                                              "<days-5@pop.tern.example>"})
        c = self.counts(self.pop(cfg, env={"TERN_TEST_NOW": str(t0 + 4 * DAY)}))
        self.assertEqual((c["downloaded"], c["deleted"]), (0, 2), c)
        self.assertEqual(self.server_count(), 0)
        self.assertStored(keys, old + new)

    def test_pop3_folder_names_the_local_folder(self):
        msgs = [make_message("folder", 1)]
        self.seed(msgs)
        keys = pop_account(self.ws, self.user, pop3_folder="Downloads")
        self.counts(self.pop(self.config(keys)))
        self.assertStored(keys, msgs, folder="Downloads")
        self.assertEqual(self.local(keys, "Inbox"), [])

    def test_list_and_show_read_the_local_folder(self):
        msgs = [make_message("read", i) for i in range(1, 4)]
        self.seed(msgs)
        keys = pop_account(self.ws, self.user)
        cfg = self.config(keys)
        self.counts(self.pop(cfg))
        listed = self.assertOk(self.ws.run(cfg, "list Inbox"))
        self.assertEqual(sorted(o["subject"] for o in listed),
                         ["POP test read 1", "POP test read 2", "POP test read 3"])
        self.assertEqual(sorted(o["message_id"] for o in listed),
                         ["read-%d@pop.tern.example" % i for i in (1, 2, 3)])
        stored = {self._mid(m): len(m) for m in self.local(keys)}
        for o in listed:
            self.assertEqual(o["size"], stored["<%s>" % o["message_id"]],
                             "size is that of the stored bytes: %s" % o)
        one = [o for o in listed if o["subject"] == "POP test read 2"][0]
        shown = self.assertOk(self.ws.run(cfg, "show Inbox %s" % one["uid"]), count=1)[0]
        self.assertIn("Grüße, ✓ read", shown["text"])
        self.assertIn(".a line that starts with a dot", shown["text"])
        self.assertEqual(shown["headers"]["subject"], "POP test read 2")

    def test_server_without_messages(self):
        keys = pop_account(self.ws, self.user)
        c = self.counts(self.pop(self.config(keys)))
        self.assertEqual((c["downloaded"], c["kept"], c["deleted"]), (0, 0, 0), c)


class TlsAndAuthTest(Pop3Case):
    def test_stls_on_the_plain_port(self):
        msgs = [make_message("stls", 1)]
        self.seed(msgs)
        keys = pop_account(self.ws, self.user, transport="pop3")
        c = self.counts(self.pop(self.config(keys)))
        self.assertEqual(c["downloaded"], 1)
        self.assertStored(keys, msgs)
        logins = DC.logins(self.user, "pop3")
        self.assertTrue(logins and "TLS" in logins[-1], logins)

    def test_fingerprint_pin(self):
        msgs = [make_message("pin", 1)]
        self.seed(msgs)
        keys = pop_account(self.ws, self.user, ca=False,
                           tls="fingerprint:sha256:" + DC.fingerprint())
        self.counts(self.pop(self.config(keys)))
        self.assertStored(keys, msgs)

    def test_wrong_pin_touches_nothing(self):
        self.seed([make_message("badpin", 1)])
        keys = pop_account(self.ws, self.user, ca=False, tls="fingerprint:sha256:" + "ab" * 32)
        self.assertFails(self.pop(self.config(keys)), "tls")
        self.assertEqual(self.local(keys), [])
        self.assertEqual(self.server_count(), 1)
        self.assertEqual(DC.logins(self.user, "pop3"), [])

    def test_unknown_ca_is_refused(self):
        self.seed([make_message("ca", 1)])
        keys = pop_account(self.ws, self.user, ca=False)
        self.assertFails(self.pop(self.config(keys)), "tls")
        self.assertEqual(self.server_count(), 1)

    def test_wrong_password(self):
        self.seed([make_message("pw", 1)])
        keys = pop_account(self.ws, self.user, password="not-the-password")
        res = self.pop(self.config(keys))
        self.assertFails(res, "auth")
        self.assertNotIn(b"not-the-password", res.stdout)
        self.assertNotIn("not-the-password", res.stderr)
        self.assertEqual(self.local(keys), [])
        self.assertEqual(self.server_count(), 1)


class CrashTest(Pop3Case):
    def _kill_at_every_step(self, count, keep):
        msgs = [make_message("step", i) for i in range(1, count + 1)]
        kills = 0
        mode = {"pop3_keep": "yes"} if keep else {}
        for n in range(1, MAX_STEPS + 1):
            self.reset_server()
            self.seed(msgs)
            keys = pop_account(self.ws, self.user, **mode)
            cfg = self.config(keys)
            res = popsmtp.run(self.ws, cfg, ["pop"], env={"TERN_TEST_KILL_AT": str(n)})
            if res.rc == 0:
                self.counts(res)
                self.assertStored(keys, msgs, why="(a run with fewer than %d steps)" % n)
                break
            why = "after the kill at journal step %d\n%s" % (n, res.describe())
            self.assertTrue(killed_by_hook(res), "expected the TERN_TEST_KILL_AT kill " + why)
            kills += 1
            self.assertNoLoss(keys, msgs, why)
            # The next run completes the download: nothing lost, nothing twice.
            c = self.counts(self.pop(cfg))
            self.assertStored(keys, msgs, why="after resuming from step %d" % n)
            self.assertEqual(self.server_count(), count if keep else 0,
                             "server after resuming from step %d" % n)
            # And the one after that has nothing left to do.
            c = self.counts(self.pop(cfg))
            self.assertEqual((c["downloaded"], c["deleted"]), (0, 0),
                             "a third run after the kill at step %d: %s" % (n, c))
            self.assertStored(keys, msgs, why="after a third run (step %d)" % n)
        else:
            self.fail("a %d-message download took more than %d journal steps" % (count,
                                                                                 MAX_STEPS))
        self.assertGreaterEqual(kills, 2, "TERN_TEST_KILL_AT fired %d times for a %d-message "
                                "download: is the hook implemented?" % (kills, count))

    def test_kill_at_every_journal_step_delete_mode(self):
        self._kill_at_every_step(20, keep=False)

    def test_kill_at_every_journal_step_keep_mode(self):
        self._kill_at_every_step(8, keep=True)

    def test_sigkill_at_random_times(self):
        seed = int(os.environ.get("TERN_TEST_SEED") or 20240105)
        rng = random.Random(seed)
        msgs = [make_message("rand", i, pad=60000) for i in range(1, 21)]
        self.seed(msgs)
        # How long a whole download takes here: a keep-mode run into a scratch cache.
        probe = pop_account(self.ws, self.user, pop3_keep="yes")
        t0 = time.monotonic()
        self.counts(self.pop(self.config(probe)))
        full = time.monotonic() - t0
        keys = pop_account(self.ws, self.user)
        cfg = self.config(keys)
        killed = 0
        for i in range(6):
            delay = rng.uniform(0.0, full * 1.1)
            rc, out, err, was_killed = popsmtp.run_killed(self.ws, cfg, ["pop"], delay)
            why = "(seed %d, kill %d after %.3f s of a %.3f s download; exit %s)\n%s" % (
                seed, i, delay, full, rc, err[-2000:])
            for mark in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
                self.assertNotIn(mark, err, why)
            self.assertIn(rc, (0, -signal.SIGKILL), why)
            killed += was_killed
            self.assertNoLoss(keys, msgs, why)
        c = self.counts(self.pop(cfg))
        self.assertStored(keys, msgs, why="after %d random kills (seed %d)" % (killed, seed))
        self.assertEqual(self.server_count(), 0)
        c = self.counts(self.pop(cfg))
        self.assertEqual(c["downloaded"], 0, c)


class DiskTest(Pop3Case):
    def _mount_tmpfs(self, path, size):
        os.makedirs(path, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size,
                               "tmpfs", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            self.skipTest("cannot mount a small tmpfs here: %s" %
                          proc.stderr.decode("utf-8", "replace").strip())
        self.addCleanup(subprocess.run, ["umount", "-l", path], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)

    def test_full_disk_deletes_nothing_not_stored(self):
        small = self.ws.path("small-%s" % self.user)
        self._mount_tmpfs(small, "1m")
        msgs = [make_message("full", i, pad=250000) for i in range(1, 7)]
        self.seed(msgs)
        keys = pop_account(self.ws, self.user, cache_dir=os.path.join(small, "cache"))
        cfg = self.config(keys)
        res = self.pop(cfg)
        self.assertFails(res, "io")
        self.assertNoLoss(keys, msgs, res.describe())
        self.assertGreater(self.server_count(), 0, "1.5 MB cannot fit in 1 MB\n" +
                           res.describe())
        subprocess.run(["mount", "-o", "remount,size=64m", small], check=True)
        self.counts(self.pop(cfg))
        self.assertStored(keys, msgs, why="after space was freed")
        self.assertEqual(self.server_count(), 0)

    def test_file_size_limit(self):
        msgs = [make_message("fsize", 1), make_message("fsize", 2, pad=400000),
                make_message("fsize", 3)]
        self.seed(msgs)
        keys = pop_account(self.ws, self.user)
        cfg = self.config(keys)
        limit = 256 * 1024

        def limits():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        res = popsmtp.run(self.ws, cfg, ["pop"], preexec_fn=limits)
        self.assertFails(res, "io")
        self.assertNoLoss(keys, msgs, res.describe())
        self.assertIn("<fsize-2@pop.tern.example>", self.server_mids(),
                      "the message that could not be written was deleted\n" + res.describe())
        self.counts(self.pop(cfg))
        self.assertStored(keys, msgs, why="without the limit")
        self.assertEqual(self.server_count(), 0)


if __name__ == "__main__":
    unittest.main()
