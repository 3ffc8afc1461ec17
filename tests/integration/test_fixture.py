"""Self-test of the Dovecot fixture and the mail generator (no tern needed).

Layer: tests/integration. Proves the test peer works before tern's tests rely
on it: TLS with the generated CA, LOGIN, LIST with SPECIAL-USE and UTF-8 names,
SELECT counts, STARTTLS, POP3 and POP3S, seeding with flags and keywords, the
bad certificates, the shell interface, and stopping by pid.
"""

import imaplib
import os
import poplib
import shlex
import socket
import ssl
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dovecot  # noqa: E402
import tern  # noqa: E402

DC = None
INDEX = None


def setUpModule():
    global DC, INDEX
    DC = dovecot.Dovecot()
    DC.start()
    INDEX = tern.seed_demo(DC, "alice")
    DC.add_message("bob", "INBOX", b"Subject: for bob\r\nMessage-ID: <b1@x>\r\n\r\nhi\r\n")


def tearDownModule():
    if DC:
        DC.cleanup()


def _mutf7(name):
    """IMAP modified UTF-7 (RFC 3501 §5.1.3), enough for the tests' names."""
    out, buf = [], []

    def flush():
        if buf:
            import base64
            b = base64.b64encode("".join(buf).encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b.replace("/", ",") + "-")
            buf.clear()

    for c in name:
        if 0x20 <= ord(c) <= 0x7e:
            flush()
            out.append("&-" if c == "&" else c)
        else:
            buf.append(c)
    flush()
    return "".join(out)


def _demo_counts():
    counts = {}
    for m in tern.gen_mail().demo_set():
        counts[m.folder] = counts.get(m.folder, 0) + 1
    return counts


class FixtureTest(unittest.TestCase):
    def ctx(self):
        return ssl.create_default_context(cafile=DC.ca_file)

    def test_imaps_login_list_select(self):
        im = imaplib.IMAP4_SSL(DC.host, DC.ports["imaps"], ssl_context=self.ctx())
        try:
            im.login("alice", "alice-pw")
            typ, data = im.list()
            self.assertEqual(typ, "OK")
            listing = b"\n".join(data).decode()
            for name, use in dovecot.SPECIAL_FOLDERS.items():
                self.assertRegex(listing, r"\(.*\%s.*\) \"/\" %s" % (use, name))
            self.assertIn(_mutf7("Projekte/Überblick"), listing)
            self.assertIn(_mutf7("Отправленные"), listing)
            counts = _demo_counts()
            typ, data = im.select("INBOX", readonly=True)
            self.assertEqual((typ, int(data[0])), ("OK", counts["INBOX"]))
            typ, data = im.select('"%s"' % _mutf7("Отправленные"), readonly=True)
            self.assertEqual((typ, int(data[0])), ("OK", counts["Отправленные"]))
        finally:
            im.logout()

    def test_capabilities(self):
        im = imaplib.IMAP4_SSL(DC.host, DC.ports["imaps"], ssl_context=self.ctx())
        try:
            im.login("alice", "alice-pw")
            typ, data = im.capability()
            caps = set(data[0].decode().upper().split())
            for cap in ("CONDSTORE", "QRESYNC", "MOVE", "UIDPLUS", "SPECIAL-USE", "ESEARCH",
                        "IDLE", "LITERAL+", "COMPRESS=DEFLATE"):
                self.assertIn(cap, caps)
        finally:
            im.logout()

    def test_starttls_port(self):
        im = imaplib.IMAP4(DC.host, DC.ports["imap"])
        try:
            self.assertIn("STARTTLS", im.capabilities)
            im.starttls(ssl_context=self.ctx())
            im.login("bob", "bob-pw")
            typ, data = im.select("INBOX", readonly=True)
            self.assertEqual(int(data[0]), 1)
        finally:
            im.logout()
        self.assertIn("TLS", DC.logins("bob", "imap")[-1])

    def test_wrong_password_refused(self):
        im = imaplib.IMAP4_SSL(DC.host, DC.ports["imaps"], ssl_context=self.ctx())
        try:
            with self.assertRaises(imaplib.IMAP4.error):
                im.login("alice", "not-the-password")
        finally:
            im.shutdown()

    def test_untrusted_without_ca(self):
        ctx = ssl.create_default_context()
        with self.assertRaises(ssl.SSLCertVerificationError):
            imaplib.IMAP4_SSL(DC.host, DC.ports["imaps"], ssl_context=ctx)

    def test_pop3s_and_pop3_stls(self):
        p = poplib.POP3_SSL(DC.host, DC.ports["pop3s"], context=self.ctx())
        try:
            p.user("alice")
            p.pass_("alice-pw")
            self.assertEqual(p.stat()[0], _demo_counts()["INBOX"])
        finally:
            p.quit()
        p = poplib.POP3(DC.host, DC.ports["pop3"])
        try:
            p.stls(context=self.ctx())
            p.user("bob")
            p.pass_("bob-pw")
            count, _ = p.stat()
            self.assertEqual(count, 1)
            lines = p.retr(1)[1]
            self.assertIn(b"Subject: for bob", lines)
        finally:
            p.quit()

    def test_seeded_flags_and_bytes(self):
        folder, uid, mail = INDEX["keywords"]
        self.assertEqual(tern.doveadm_flags(DC.flags("alice", folder, uid)),
                         {"seen", "flagged", "$label1", "$Important"})
        folder, uid, mail = INDEX["attachment"]
        im = imaplib.IMAP4_SSL(DC.host, DC.ports["imaps"], ssl_context=self.ctx())
        try:
            im.login("alice", "alice-pw")
            im.select("INBOX", readonly=True)
            typ, data = im.uid("FETCH", str(uid), "(BODY.PEEK[] RFC822.SIZE)")
            self.assertEqual(typ, "OK")
            self.assertEqual(data[0][1], mail.data)
            self.assertIn(b"RFC822.SIZE %d" % len(mail.data), data[0][0])
        finally:
            im.logout()

    def test_uids_follow_insertion_order(self):
        uids = [INDEX["thread-deploy-%d" % i][1] for i in (1, 2, 3)]
        self.assertEqual(uids, sorted(uids))
        self.assertEqual(uids[2], _demo_counts()["INBOX"])

    def test_search_helper(self):
        self.assertEqual(DC.search("alice", "INBOX", "from zed"), [INDEX["search-zebra"][1]])
        self.assertEqual(DC.search("alice", "INBOX", "larger 1048576"), [INDEX["large"][1]])

    def test_internaldate(self):
        folder, uid, mail = INDEX["no-date"]
        out = DC.fetch("alice", folder, "uid date.received", "uid %d" % uid)
        self.assertTrue(out[0]["date.received"].startswith("2024-02-03"), out)

    def test_add_user_while_running(self):
        DC.add_user("dave", "dave-pw")
        im = imaplib.IMAP4_SSL(DC.host, DC.ports["imaps"], ssl_context=self.ctx())
        try:
            im.login("dave", "dave-pw")
        finally:
            im.logout()


class CertificateTest(unittest.TestCase):
    def test_bad_certificates(self):
        for cert, reason in (("expired", "expired"), ("notyet", "not yet valid"),
                             ("wronghost", "mismatch")):
            with self.subTest(cert=cert):
                with dovecot.Dovecot(cert=cert) as bad:
                    ctx = ssl.create_default_context(cafile=bad.ca_file)
                    with self.assertRaises(ssl.SSLCertVerificationError) as cm:
                        imaplib.IMAP4_SSL("127.0.0.1", bad.ports["imaps"], ssl_context=ctx)
                    self.assertIn(reason, str(cm.exception))
                    pid = bad.pid()
                self.assertFalse(dovecot._pid_alive(pid), "still running after stop")

    def test_fingerprint(self):
        with open(DC.cert_file()) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        with socket.create_connection((DC.host, DC.ports["imaps"])) as raw:
            ctx = ssl.create_default_context(cafile=DC.ca_file)
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                served = s.getpeercert(binary_form=True)
        self.assertEqual(served, der)
        import hashlib
        self.assertEqual(DC.fingerprint(), hashlib.sha256(der).hexdigest())


class PreStartTest(unittest.TestCase):
    def test_seed_before_start(self):
        dc = dovecot.Dovecot()
        try:
            dc.setup()
            self.assertFalse(dc.is_running())
            bulk = list(tern.gen_mail().bulk(20, "Vorher/Überblick"))
            dc.add_messages("alice", "Vorher/Überblick",
                            [(m.data, ("seen",), ("$early",), m.internaldate) for m in bulk])
            dc.add_message("alice", "INBOX", bulk[0].data)
            dc.start()
            self.assertEqual(dc.status("alice", "Vorher/Überblick", "messages unseen"),
                             {"messages": 20, "unseen": 0})
            self.assertIn("Vorher/Überblick", dc.folders("alice", subscribed=True))
            fetched = dc.fetch("alice", "Vorher/Überblick", "uid hdr.message-id flags")
            self.assertEqual([f["hdr.message-id"] for f in fetched],
                             ["<%s>" % m.message_id for m in bulk])
            self.assertEqual(tern.doveadm_flags(fetched[0]["flags"].split()), {"seen", "$early"})
            self.assertEqual(dc.status("alice", "INBOX")["messages"], 1)
        finally:
            dc.cleanup()


class CommandLineTest(unittest.TestCase):
    def test_start_env_seed_stop(self):
        script = os.path.join(tern.REPO, "tests", "lib", "dovecot.py")
        gen = os.path.join(tern.REPO, "contrib", "demo", "gen-mail.py")
        with tempfile.TemporaryDirectory() as d:
            os.chmod(d, 0o755)
            root = os.path.join(d, "dc")
            out = subprocess.run([sys.executable, script, "start", root], check=True,
                                 stdout=subprocess.PIPE, timeout=60).stdout.decode()
            env = dict(line.split("=", 1) for line in out.splitlines())
            env = {k: shlex.split(v)[0] if v else "" for k, v in env.items()}
            try:
                for key in ("IMAPS_PORT", "IMAP_PORT", "POP3_PORT", "POP3S_PORT",
                            "DOVECOT_CA_FILE", "DOVECOT_PID", "ALICE_PASSWORD"):
                    self.assertTrue(env.get(key), key)
                gendir = os.path.join(d, "gen")
                subprocess.run([sys.executable, gen, "--count", "25", "--folder", "Bulk",
                                "--out", gendir], check=True, timeout=60,
                               stderr=subprocess.DEVNULL)
                subprocess.run([sys.executable, script, "seed", root, "alice", gendir],
                               check=True, timeout=60, stderr=subprocess.DEVNULL)
                ctx = ssl.create_default_context(cafile=env["DOVECOT_CA_FILE"])
                im = imaplib.IMAP4_SSL("127.0.0.1", int(env["IMAPS_PORT"]), ssl_context=ctx)
                im.login("alice", env["ALICE_PASSWORD"])
                typ, data = im.select("Bulk", readonly=True)
                self.assertEqual(int(data[0]), 25)
                im.logout()
                self.assertEqual(subprocess.call([sys.executable, script, "status", root]), 0)
            finally:
                subprocess.run([sys.executable, script, "stop", root], timeout=60)
            self.assertFalse(dovecot._pid_alive(int(env["DOVECOT_PID"])))
            self.assertNotEqual(subprocess.call([sys.executable, script, "status", root]), 0)


class GeneratorTest(unittest.TestCase):
    def test_deterministic(self):
        gm = tern.gen_mail()
        a = [(m.folder, m.name, m.data) for m in gm.demo_set()]
        b = [(m.folder, m.name, m.data) for m in gm.demo_set()]
        self.assertEqual(a, b)
        self.assertNotEqual(a, [(m.folder, m.name, m.data) for m in gm.demo_set(seed=7)])
        self.assertGreaterEqual(len(a), 250)
        self.assertEqual(set(m.folder for m in gm.demo_set()), set(gm.FOLDERS))

    def test_crlf_only(self):
        import re
        for m in tern.gen_mail().demo_set():
            self.assertIsNone(re.search(rb"(?<!\r)\n|\r(?!\n)", m.data), m.name)

    def test_bulk(self):
        gm = tern.gen_mail()
        ms = list(gm.bulk(100, "Bench"))
        self.assertEqual(len(ms), 100)
        self.assertEqual(len({m.message_id for m in ms}), 100)
        self.assertEqual([m.data for m in ms], [m.data for m in gm.bulk(100, "Bench")])

    def test_large_message(self):
        large = tern.gen_mail().named("large")
        self.assertTrue(1_900_000 < len(large.data) < 2_300_000, len(large.data))


if __name__ == "__main__":
    unittest.main()
