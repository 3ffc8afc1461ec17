#!/usr/bin/python3
"""Self-test of the fake IMAP server (tests/peers/fakeimap.py) and of the test
certificates (tests/lib/certs.py), driven by Python's own imaplib and ssl.

Layer: tests/integration. It needs no tern binary: it proves the peer the
adversarial tests (test_fake_imap.py) rely on does what its script says, so a
failure there is tern's and not the fake's.
"""

import base64
import imaplib
import os
import socket
import ssl
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "peers"))

import certs as certs_mod  # noqa: E402
from fakeimap import (GiB, MiB, Auth, Bye, DeepNesting, Expect, FakeIMAP,  # noqa: E402
                      HugeLine, HugeLiteral, Line, Reset, ShortLiteral, Stall, StartTLS,
                      Tagged)

USER = "tester"
PASSWORD = "Pw-5ecret-9f3c"


def client_ctx(cafile=None):
    ctx = ssl.create_default_context(cafile=cafile)
    return ctx


_pending = {}


def recv_until(sock, needle, limit=1 << 20, timeout=5.0):
    """Reads until NEEDLE appears (or LIMIT bytes, EOF, TIMEOUT); returns the bytes
    up to and including NEEDLE and keeps the rest for the next call."""
    sock.settimeout(timeout)
    data = _pending.pop(id(sock), b"")
    while needle not in data and len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    i = data.find(needle)
    if i >= 0 and i + len(needle) < len(data):
        _pending[id(sock)] = data[i + len(needle):]
        data = data[:i + len(needle)]
    return data


class FakeIMAPPeerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="fakeimap-self-")
        cls.certs = certs_mod.make_certs(os.path.join(cls.tmp.name, "certs"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def server(self, script=(), **kw):
        kw.setdefault("certs", self.certs)
        kw.setdefault("user", USER)
        kw.setdefault("password", PASSWORD)
        srv = FakeIMAP(script, log_dir=tempfile.mkdtemp(dir=self.tmp.name), **kw)
        srv.start()
        self.addCleanup(srv.stop)
        return srv

    def test_certificates(self):
        c = self.certs
        self.assertEqual(c.fingerprint, certs_mod.fingerprint(c.server_cert))
        self.assertEqual(len(c.fingerprint), 64)
        self.assertNotEqual(c.fingerprints["selfsigned"], c.fingerprint)
        for name in ("server", "expired", "notyet", "wronghost", "selfsigned"):
            self.assertTrue(os.path.exists(c.pair(name)[0]), name)
            self.assertTrue(os.path.exists(c.pair(name)[1]), name)

    def test_imaps_session_with_imaplib(self):
        srv = self.server(tls="server")
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.port, ssl_context=client_ctx(self.certs.ca_cert))
        self.assertIn("AUTH=PLAIN", m.capabilities)
        m.login(USER, PASSWORD)
        typ, data = m.list()
        self.assertEqual(typ, "OK")
        self.assertEqual(len(data), 3)
        self.assertIn(b'"INBOX"', data[0])
        typ, data = m.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"3"]))
        typ, data = m.uid("SEARCH", None, "UNSEEN")
        self.assertEqual(data, [b"2 3"])
        typ, data = m.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE ENVELOPE "
                          "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
        self.assertEqual(typ, "OK")
        self.assertEqual(len([d for d in data if isinstance(d, tuple)]), 3)
        self.assertIn(b"Subject: Test message 1", data[0][1])
        self.assertNotIn(b"Date:", data[0][1])
        typ, data = m.fetch("2", "(BODY[])")
        self.assertTrue(data[0][1].endswith(b"Body of message 2.\r\n"))
        typ, data = m.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)")
        self.assertIn(b"MESSAGES 3 UNSEEN 2 UIDNEXT 4", data[0])
        m.logout()
        self.assertTrue(srv.wait_idle())
        self.assertEqual(srv.received(tls=False), b"")
        self.assertIn(b"LOGIN", srv.received(tls=True))
        self.assertEqual(srv.auth_attempts[0].password, PASSWORD)
        self.assertTrue(srv.auth_attempts[0].tls)
        self.assertEqual(srv.errors, [])
        self.assertEqual(srv.unexpected, [])

    def test_wrong_password_is_refused(self):
        srv = self.server(tls="server")
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.port, ssl_context=client_ctx(self.certs.ca_cert))
        with self.assertRaises(imaplib.IMAP4.error):
            m.login(USER, "wrong")
        m.logout()

    def test_authenticate_plain_with_continuation(self):
        srv = self.server(tls="server")
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.port, ssl_context=client_ctx(self.certs.ca_cert))
        typ, _ = m.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (USER, PASSWORD)).encode())
        self.assertEqual(typ, "OK")
        m.logout()
        srv.wait_idle()
        self.assertEqual(srv.auth_attempts[0].mechanism, "AUTHENTICATE PLAIN")
        self.assertEqual(srv.auth_attempts[0].user, USER)

    def test_login_with_literal_and_starttls(self):
        srv = self.server()
        m = imaplib.IMAP4("127.0.0.1", srv.port)
        self.assertIn("LOGINDISABLED", m.capabilities)
        m.starttls(ssl_context=client_ctx(self.certs.ca_cert))
        self.assertNotIn("LOGINDISABLED", m.capabilities)
        m.literal = PASSWORD.encode()
        typ, _ = m._simple_command("LOGIN", USER)
        self.assertEqual(typ, "OK")
        m.logout()
        srv.wait_idle()
        self.assertEqual(srv.auth_attempts[0].password, PASSWORD)
        self.assertEqual(srv.handshakes[0].ok, True)
        self.assertNotIn(b"LOGIN", srv.received(tls=False))
        self.assertIn(b"STARTTLS", srv.received(tls=False))

    def test_expected_certificates_fail_verification(self):
        for name in ("expired", "notyet", "wronghost", "selfsigned"):
            with self.subTest(cert=name):
                srv = self.server(tls=name)
                with self.assertRaises(ssl.SSLCertVerificationError):
                    imaplib.IMAP4_SSL("127.0.0.1", srv.port,
                                      ssl_context=client_ctx(self.certs.ca_cert))
                srv.wait_idle()
                self.assertFalse(srv.handshakes[0].ok)

    def test_injection_after_starttls_goes_in_the_same_segment(self):
        inject = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n"
        srv = self.server([StartTLS(inject=inject)])
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        recv_until(s, b"\r\n")
        s.sendall(b"a1 STARTTLS\r\n")
        data = recv_until(s, b"injected\r\n")
        self.assertEqual(data, b"a1 OK Begin TLS negotiation now\r\n" + inject)
        tls = client_ctx(self.certs.ca_cert).wrap_socket(s, server_hostname="localhost")
        tls.sendall(b"a2 CAPABILITY\r\n")
        self.assertIn(b"a2 OK", recv_until(tls, b"a2 OK"))
        tls.close()

    def test_tagged_offset_and_expect(self):
        srv = self.server([Auth(), Expect(r"^NOOP"), Tagged("OK next", offset=1),
                           Tagged("OK dup")], tls="server")
        s = client_ctx(self.certs.ca_cert).wrap_socket(
            socket.create_connection(("127.0.0.1", srv.port)), server_hostname="localhost")
        self.addCleanup(s.close)
        recv_until(s, b"\r\n")
        s.sendall(b"A0009 LOGIN tester \"%s\"\r\n" % PASSWORD.encode())
        self.assertIn(b"A0009 OK", recv_until(s, b"Logged in\r\n"))
        s.sendall(b"A0010 NOOP\r\n")
        data = recv_until(s, b"OK dup\r\n")
        self.assertEqual(data, b"A0011 OK next\r\nA0010 OK dup\r\n")

    def test_huge_line_is_streamed_without_crlf(self):
        srv = self.server([HugeLine(size=3 * MiB)], tls="server")
        s = client_ctx(self.certs.ca_cert).wrap_socket(
            socket.create_connection(("127.0.0.1", srv.port)), server_hostname="localhost")
        self.addCleanup(s.close)
        recv_until(s, b"ready\r\n")
        data = recv_until(s, b"\n", limit=3 * MiB, timeout=10)
        self.assertEqual(len(data), 3 * MiB)
        self.assertNotIn(b"\n", data)
        self.assertTrue(data.startswith(b"* OK xxx"))

    def test_huge_literal_announced(self):
        srv = self.server([HugeLiteral(stream=1 * MiB)])
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        recv_until(s, b"ready\r\n")
        data = recv_until(s, b"zzzz", timeout=5)
        self.assertTrue(data.startswith(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % (4 * GiB)), data)
        s.close()
        self.assertTrue(srv.wait_idle())
        self.assertIsNotNone(srv.mark_seq("HugeLiteral"))

    def test_short_literal_then_close(self):
        srv = self.server([ShortLiteral(announce=500, send=10)])
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        recv_until(s, b"ready\r\n")
        data = recv_until(s, b"never", timeout=5)
        self.assertEqual(data, b"* 1 FETCH (UID 1 BODY[] {500}\r\n" + b"y" * 10)

    def test_deep_nesting(self):
        srv = self.server([DeepNesting(depth=1000)])
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        recv_until(s, b"ready\r\n")
        data = recv_until(s, b"\r\n")
        self.assertTrue(data.startswith(b"* 1 FETCH (UID 1 BODYSTRUCTURE " + b"(" * 1001))
        self.assertEqual(data.count(b"("), data.count(b")"))
        self.assertEqual(data.count(b"MIXED"), 1000)

    def test_bye_and_reset(self):
        srv = self.server([Expect(r"^NOOP", untagged="* 1 FETCH (FLAGS ())"), Bye(), Reset()],
                          greeting="* PREAUTH ready")
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        self.assertEqual(recv_until(s, b"\r\n"), b"* PREAUTH ready\r\n")
        s.sendall(b"x1 NOOP\r\n")
        time.sleep(0.3)
        data = b""
        with self.assertRaises(ConnectionResetError):
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        srv.wait_idle()
        self.assertEqual(srv.command_names(), ["NOOP"])
        self.assertEqual(srv.commands_after("Bye"), [])

    def test_stall_and_stop(self):
        srv = self.server([Stall()], greeting=False)
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        s.sendall(b"a LOGIN x y\r\n")
        self.assertEqual(recv_until(s, b"\n", timeout=0.5), b"")
        t0 = time.monotonic()
        srv.stop()
        self.assertLess(time.monotonic() - t0, 2)
        self.assertEqual(srv.received(), b"a LOGIN x y\r\n")
        self.assertEqual(srv.commands(), [])

    def test_unknown_commands_are_recorded(self):
        srv = self.server([Line("* XWEIRD stuff")], tls="server")
        s = client_ctx(self.certs.ca_cert).wrap_socket(
            socket.create_connection(("127.0.0.1", srv.port)), server_hostname="localhost")
        self.assertIn(b"XWEIRD", recv_until(s, b"XWEIRD stuff\r\n"))
        s.sendall(b"u1 SELECT INBOX\r\n")
        self.assertEqual(recv_until(s, b"\r\n"), b"u1 NO [UNAVAILABLE] not authenticated\r\n")
        s.close()
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.port, ssl_context=client_ctx(self.certs.ca_cert))
        m.login(USER, PASSWORD)
        with self.assertRaisesRegex(imaplib.IMAP4.error, "BAD"):
            m.xatom("XFROB")
        m.logout()
        srv.wait_idle()
        self.assertEqual([c.name for c in srv.unexpected], ["SELECT", "XFROB"])

    def test_sasl_plain_initial_response_and_log_file(self):
        srv = self.server(tls="server")
        s = client_ctx(self.certs.ca_cert).wrap_socket(
            socket.create_connection(("127.0.0.1", srv.port)), server_hostname="localhost")
        recv_until(s, b"\r\n")
        ir = base64.b64encode(b"\0tester\0" + PASSWORD.encode())
        s.sendall(b"t1 AUTHENTICATE PLAIN " + ir + b"\r\n")
        self.assertIn(b"t1 OK", recv_until(s, b"t1 OK"))
        s.sendall(b"t2 LOGOUT\r\n")
        recv_until(s, b"t2 OK")
        s.close()
        srv.wait_idle()
        srv.stop()
        with open(os.path.join(srv.log_dir, "client.bin"), "rb") as f:
            self.assertEqual(f.read(), b"t1 AUTHENTICATE PLAIN " + ir + b"\r\nt2 LOGOUT\r\n")
        self.assertIn("t2 LOGOUT", srv.transcript())


if __name__ == "__main__":
    unittest.main()
