"""Self-test of the private Postfix (tests/lib/mta.py) and the Dovecot's LMTP,
driven by Python's smtplib (no tern needed).

Layer: tests/integration. Proves the real-MTA peer of test_smtp.py works:
STARTTLS submission and implicit TLS with the test CA, AUTH checked by the
Dovecot (refused before TLS and with a wrong password), delivery by LMTP into
the recipient's INBOX byte for byte (dot lines included), 550 for an unknown
recipient, relay refused, no port 25, the deliver=False sink mode, and a stop
by pid that leaves no process behind. Skipped where Postfix cannot run (the
reason is printed).
"""

import os
import smtplib
import socket
import ssl
import sys
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dovecot  # noqa: E402
import mta as mta_mod  # noqa: E402

DC = MTA = None
SKIP = None


def _setup():
    global DC, MTA, SKIP
    ok, why = mta_mod.available()
    if not ok:
        SKIP = why
        return
    DC = dovecot.Dovecot(users={"alice": "alice-pw", "bob": "bob-pw"}, lmtp=True)
    MTA = mta_mod.MTA(DC)
    MTA.start()


def setUpModule():
    try:
        _setup()
    except BaseException:
        # A failed setup gets no tearDownModule: stop what was started here.
        tearDownModule()
        raise


def tearDownModule():
    if MTA:
        MTA.cleanup()
    if DC:
        DC.cleanup()


def msg(mid, body=b"hello\r\n"):
    return (b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: fixture\r\n"
            b"Message-ID: <%s>\r\n\r\n" % mid.encode() + body)


class MtaFixtureTest(unittest.TestCase):
    def setUp(self):
        if SKIP:
            self.skipTest(SKIP)
        self.ctx = ssl.create_default_context(cafile=MTA.ca_file)

    def submission(self):
        s = smtplib.SMTP("127.0.0.1", MTA.ports["submission"], timeout=10)
        s.starttls(context=self.ctx)
        return s

    def test_starttls_submission_delivers_byte_for_byte(self):
        mid = "fx-%s@test" % uuid.uuid4().hex[:8]
        body = b"line\r\n.\r\n..two\r\n.leading\r\nend\r\n"
        s = self.submission()
        s.login("alice", "alice-pw")
        self.assertEqual(s.sendmail("alice@example.org", ["bob@example.org"], msg(mid, body)), {})
        s.quit()
        uid = MTA.wait_delivered("bob", message_id=mid)
        path = DC.folder_path("bob", "INBOX")
        found = []
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(path, sub)):
                with open(os.path.join(path, sub, name), "rb") as f:
                    data = f.read()
                if mid.encode() in data:
                    found.append(data)
        self.assertEqual(len(found), 1)
        self.assertTrue(found[0].endswith(body.replace(b"\r\n", b"\n")), found[0])
        self.assertIn(b"Received: from", found[0])
        self.assertGreater(uid, 0)

    def test_smtps_implicit_tls(self):
        mid = "fx-%s@test" % uuid.uuid4().hex[:8]
        s = smtplib.SMTP_SSL("127.0.0.1", MTA.ports["smtps"], context=self.ctx, timeout=10)
        code, text = s.ehlo()
        self.assertIn(b"AUTH PLAIN LOGIN", text)
        s.login("bob", "bob-pw")
        s.sendmail("bob@example.org", ["alice@example.org"], msg(mid))
        s.quit()
        MTA.wait_delivered("alice", message_id=mid)

    def test_no_auth_before_tls_and_wrong_password(self):
        s = smtplib.SMTP("127.0.0.1", MTA.ports["submission"], timeout=10)
        code, text = s.ehlo()
        self.assertIn(b"STARTTLS", text)
        self.assertNotIn(b"AUTH", text)
        self.assertEqual(s.mail("alice@example.org")[0], 530)  # encryption required
        s.close()
        s = self.submission()
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            s.login("alice", "wrong")
        s.close()

    def test_unknown_recipient_and_relay_refused(self):
        s = self.submission()
        s.login("alice", "alice-pw")
        refused = s.sendmail("alice@example.org", ["bob@example.org", "nobody@example.org"],
                             msg("fx-partial@test"))
        self.assertEqual(list(refused), ["nobody@example.org"])
        self.assertEqual(refused["nobody@example.org"][0], 550)
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            s.sendmail("alice@example.org", ["someone@example.net"], msg("fx-relay@test"))
        s.quit()

    def test_unauthenticated_mail_is_refused(self):
        s = self.submission()
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            s.sendmail("alice@example.org", ["bob@example.org"], msg("fx-noauth@test"))
        s.quit()

    def test_only_its_own_ports(self):
        for port in MTA.ports.values():
            self.assertNotEqual(port, 25)
        with open(os.path.join(MTA.conf_dir, "master.cf")) as f:
            services = [l.split()[:2] for l in f if l.strip() and not l[0].isspace()]
        inet = [name for name, kind in services if kind == "inet"]
        self.assertEqual(sorted(inet), sorted("127.0.0.1:%d" % p for p in MTA.ports.values()))
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", 25), timeout=1).close()
        self.assertTrue(MTA.is_running())
        self.assertEqual(MTA.queue(), [])

    def test_sink_mode_and_stop_by_pid(self):
        root = os.path.join(DC.root, "..", "sink-%s" % uuid.uuid4().hex[:6])
        sink = mta_mod.MTA(DC, root=os.path.abspath(root), deliver=False)
        sink._own_root = True
        self.addCleanup(sink.cleanup)
        sink.start()
        s = smtplib.SMTP("127.0.0.1", sink.ports["submission"], timeout=10)
        s.starttls(context=self.ctx)
        s.login("alice", "alice-pw")
        self.assertEqual(s.sendmail("alice@example.org", ["x@example.net", "nobody@example.org"],
                                    msg("fx-sink@test")), {})
        s.quit()
        pid = sink.pid()
        sink.stop()
        self.assertFalse(dovecot._pid_alive(pid))
        for port in sink.ports.values():
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()


if __name__ == "__main__":
    unittest.main()
