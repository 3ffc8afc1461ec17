"""TLS against real Dovecots: implicit TLS, STARTTLS, trust anchors, bad certs, pins.

Layer: tests/integration (TESTMATRIX T5, H1). Four Dovecots: one with a good
certificate, one with an expired certificate, one with a certificate that is
not valid yet, and one whose certificate names another host, each signed by
its own test CA. A certificate problem must be error code "tls" with exit 1,
never a prompt (stdin is closed), and no credentials may reach the server.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dovecot  # noqa: E402
import tern  # noqa: E402

GOOD = EXPIRED = NOTYET = WRONGHOST = WS = None


def setUpModule():
    global GOOD, EXPIRED, NOTYET, WRONGHOST, WS
    GOOD = dovecot.Dovecot(users={"alice": "alice-pw", "carol": "carol-pw",
                                  "dave": "dave-pw"})
    GOOD.start()
    GOOD.add_message("alice", "INBOX", tern.gen_mail().named("utf8").data)
    EXPIRED = dovecot.Dovecot(cert="expired")
    EXPIRED.start()
    NOTYET = dovecot.Dovecot(cert="notyet")
    NOTYET.start()
    WRONGHOST = dovecot.Dovecot(cert="wronghost")
    WRONGHOST.start()
    WS = tern.Workspace(prefix="tern-tls-")


def tearDownModule():
    for dc in (GOOD, EXPIRED, NOTYET, WRONGHOST):
        if dc:
            dc.cleanup()
    if WS:
        WS.cleanup()


def config(dc, user="alice", **kw):
    return WS.write_config({"t": WS.account(dc, user, **kw)})


class TlsTest(tern.TernCase):
    def folders_ok(self, cfg):
        results = self.assertOk(WS.run(cfg, "folders"))
        self.assertIn("INBOX", [f["name"] for f in results])

    def test_imaps_with_ca_file(self):
        self.folders_ok(config(GOOD))

    def test_starttls_with_ca_file(self):
        self.folders_ok(config(GOOD, "carol", transport="imap"))
        logins = GOOD.logins("carol", "imap")
        self.assertTrue(logins, "no login by carol in the server log")
        self.assertTrue(all(", TLS," in line for line in logins),
                        "carol logged in without TLS: %s" % logins)

    def test_host_name_verification(self):
        self.folders_ok(config(GOOD, host="localhost"))

    def test_no_ca_file_is_refused(self):
        for transport in ("imaps", "imap"):
            with self.subTest(transport=transport):
                self.assertFails(WS.run(config(GOOD, "dave", transport=transport, ca=False),
                                        "folders"), "tls")
        self.assertEqual(GOOD.logins("dave"), [], "credentials were sent")

    def test_expired_certificate(self):
        for transport in ("imaps", "imap"):
            with self.subTest(transport=transport):
                self.assertFails(WS.run(config(EXPIRED, transport=transport), "folders"),
                                 "tls")
        self.assertEqual(EXPIRED.logins("alice"), [])

    def test_not_yet_valid_certificate(self):
        self.assertFails(WS.run(config(NOTYET), "folders"), "tls")
        self.assertEqual(NOTYET.logins("alice"), [])

    def test_wrong_host_certificate(self):
        for transport in ("imaps", "imap"):
            with self.subTest(transport=transport):
                self.assertFails(WS.run(config(WRONGHOST, transport=transport), "folders"),
                                 "tls")
        self.assertEqual(WRONGHOST.logins("alice"), [])

    def test_fingerprint_pin(self):
        pin = "fingerprint:sha256:" + GOOD.fingerprint()
        self.folders_ok(config(GOOD, ca=False, tls=pin))
        self.folders_ok(config(GOOD, ca=False, tls=pin, transport="imap"))

    def test_wrong_pin(self):
        wrong = "fingerprint:sha256:" + WRONGHOST.fingerprint()
        self.assertFails(WS.run(config(GOOD, "dave", ca=False, tls=wrong), "folders"), "tls")
        self.assertFails(WS.run(config(GOOD, "dave", tls=wrong), "folders"), "tls")
        self.assertEqual(GOOD.logins("dave"), [], "credentials were sent")

    def test_implicit_tls_port_with_plain_expectation(self):
        # imap:// (STARTTLS) pointed at the implicit-TLS port cannot succeed.
        acct = WS.account(GOOD, "dave", transport="imap")
        acct["imap"] = "imap://dave@127.0.0.1:%d" % GOOD.ports["imaps"]
        acct["timeout"] = "3"
        res = WS.run(WS.write_config({"t": acct}), "folders", timeout=60)
        self.assertFails(res, ("tls", "proto", "timeout", "io"))
        self.assertEqual(GOOD.logins("dave"), [])


if __name__ == "__main__":
    unittest.main()
