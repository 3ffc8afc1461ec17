#!/usr/bin/python3
"""Self-test of the fake POP3 and SMTP servers (tests/peers/fakepop3.py,
fakesmtp.py), driven by Python's own poplib, smtplib and raw sockets.

Layer: tests/integration. It needs no tern binary: it proves that the peers
the adversarial tests (test_fake_pop3_smtp.py) rely on do what their scripts
say, so that a failure there is tern's and not the fake's.
"""

import base64
import os
import poplib
import smtplib
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
import fakepop3  # noqa: E402
import fakesmtp  # noqa: E402
from fakepop3 import FakePOP3, PopMessage, Quit, Retr, Stls  # noqa: E402
from fakesmtp import Data, FakeSMTP, Fail, StartTLS  # noqa: E402

USER = "tester"
PASSWORD = "Pw-5ecret-9f3c"


def recv_until(sock, needle, limit=1 << 20, timeout=5.0):
    """Reads until NEEDLE appears (or LIMIT bytes, EOF, TIMEOUT)."""
    sock.settimeout(timeout)
    data = b""
    while needle not in data and len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return data


class PeerCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="fakepop3smtp-self-")
        cls.certs = certs_mod.make_certs(os.path.join(cls.tmp.name, "certs"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def ctx(self):
        return ssl.create_default_context(cafile=self.certs.ca_cert)

    def serve(self, cls, script=(), **kw):
        kw.setdefault("certs", self.certs)
        kw.setdefault("user", USER)
        kw.setdefault("password", PASSWORD)
        srv = cls(script, log_dir=tempfile.mkdtemp(dir=self.tmp.name), **kw)
        srv.start()
        self.addCleanup(srv.stop)
        return srv

    def tearDown(self):
        pass


class FakePOP3PeerTest(PeerCase):
    def test_pop3s_session_retr_dele_quit(self):
        msgs = [PopMessage(b"Subject: one\r\n\r\nline\r\n.leading dot\r\n..two\r\n", uidl=b"a1"),
                PopMessage(b"Subject: two\r\n\r\nbody\r\n", uidl=b"a2")]
        srv = self.serve(FakePOP3, tls="server", messages=msgs)
        p = poplib.POP3_SSL("127.0.0.1", srv.port, context=self.ctx())
        caps = p.capa()
        self.assertIn("UIDL", caps)
        self.assertIn("SASL", caps)
        self.assertNotIn("STLS", caps)
        p.user(USER)
        p.pass_(PASSWORD)
        self.assertEqual(p.stat(), (2, len(msgs[0].data) + len(msgs[1].data)))
        self.assertEqual(p.uidl()[1], [b"1 a1", b"2 a2"])
        resp, lines, octets = p.retr(1)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", msgs[0].data)
        p.dele(1)
        self.assertEqual(p.list()[1], [b"2 %d" % len(msgs[1].data)])
        p.quit()
        self.assertTrue(srv.wait_idle())
        self.assertEqual(srv.deleted, [msgs[0]])
        self.assertEqual(srv.mailbox, [msgs[1]])
        self.assertEqual(srv.auth_attempts[0].mechanism, "USER/PASS")
        self.assertEqual(srv.auth_attempts[0].password, PASSWORD)
        self.assertTrue(srv.auth_attempts[0].tls)
        self.assertEqual(srv.errors, [])
        self.assertEqual(srv.unexpected, [])

    def test_deletions_only_on_quit(self):
        srv = self.serve(FakePOP3, [Quit(apply=False)], tls="server")
        for attempt in range(2):
            p = poplib.POP3_SSL("127.0.0.1", srv.port, context=self.ctx())
            p.user(USER)
            p.pass_(PASSWORD)
            p.dele(1)
            if attempt == 0:
                p.quit()  # the script drops the deletion
            else:
                p.close()  # no QUIT at all
        srv.wait_idle()
        self.assertEqual(len(srv.mailbox), 3)
        self.assertEqual(srv.deleted, [])

    def test_stls_and_wrong_password(self):
        srv = self.serve(FakePOP3)
        p = poplib.POP3("127.0.0.1", srv.port)
        self.assertIn("STLS", p.capa())
        p.stls(context=self.ctx())
        self.assertNotIn("STLS", p.capa())
        p.user(USER)
        with self.assertRaises(poplib.error_proto):
            p.pass_("wrong")
        p.quit()
        srv.wait_idle()
        self.assertEqual(srv.handshakes[0].ok, True)
        self.assertNotIn(b"PASS", srv.received(tls=False))
        self.assertIn(b"STLS", srv.received(tls=False))
        self.assertEqual(srv.unexpected, [])

    def test_stls_refused_and_missing(self):
        srv = self.serve(FakePOP3, [Stls(reply="-ERR not now")])
        p = poplib.POP3("127.0.0.1", srv.port)
        with self.assertRaises(poplib.error_proto):
            p.stls(context=self.ctx())
        p.quit()
        srv2 = self.serve(FakePOP3, caps=["USER", "UIDL"])
        p = poplib.POP3("127.0.0.1", srv2.port)
        self.assertNotIn("STLS", p.capa())
        with self.assertRaises(poplib.error_proto):
            p._shortcmd("STLS")
        p.quit()

    def test_injection_after_stls_in_same_segment(self):
        inject = b"+OK injected\r\n"
        srv = self.serve(FakePOP3, [Stls(inject=inject)])
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        recv_until(s, b"\r\n")
        s.sendall(b"STLS\r\n")
        data = recv_until(s, b"injected\r\n")
        self.assertEqual(data, b"+OK Begin TLS negotiation\r\n" + inject)

    def test_sasl_plain_and_xoauth2(self):
        srv = self.serve(FakePOP3, tls="server")
        p = poplib.POP3_SSL("127.0.0.1", srv.port, context=self.ctx())
        ir = base64.b64encode(b"\0%s\0%s" % (USER.encode(), PASSWORD.encode())).decode()
        self.assertTrue(p._shortcmd("AUTH PLAIN " + ir).startswith(b"+OK"))
        p.quit()
        token = "ya29.token"
        srv2 = self.serve(FakePOP3, tls="server", password=token)
        p = poplib.POP3_SSL("127.0.0.1", srv2.port, context=self.ctx())
        xo = base64.b64encode(("user=%s\x01auth=Bearer %s\x01\x01" % (USER, token)).encode())
        self.assertTrue(p._shortcmd("AUTH XOAUTH2 " + xo.decode()).startswith(b"+OK"))
        p.quit()
        srv2.wait_idle()
        self.assertEqual(srv2.auth_attempts[0][2:], ("AUTH XOAUTH2", USER, token))

    def test_hostile_uidls_and_list_lies(self):
        msgs = [PopMessage(b"A\r\n", uidl=b""), PopMessage(b"B\r\n", uidl=b"x" * 100),
                PopMessage(b"C\r\n", uidl=b"../../etc/passwd"),
                PopMessage(b"D\r\n", uidl=b"\x01\x1b[31m"), PopMessage(b"E\r\n", uidl=b"dup"),
                PopMessage(b"F\r\n", uidl=b"dup", list_size=999999)]
        srv = self.serve(FakePOP3, tls="server", messages=msgs)
        p = poplib.POP3_SSL("127.0.0.1", srv.port, context=self.ctx())
        p.user(USER)
        p.pass_(PASSWORD)
        self.assertEqual(p.uidl()[1], [b"1 ", b"2 " + b"x" * 100, b"3 ../../etc/passwd",
                                       b"4 \x01\x1b[31m", b"5 dup", b"6 dup"])
        self.assertEqual(p.list()[1][5], b"6 999999")
        self.assertEqual(p.retr(6)[1], [b"F"])
        p.quit()

    def test_terminator_split_and_wire_override(self):
        data = b"Subject: split\r\n\r\n.\r\n..\r\nend.\r\n"
        msgs = [PopMessage(data, chunk=1, pause=0.001),
                PopMessage(b"x", wire=b"no final crlf\r\n.\r\n")]
        srv = self.serve(FakePOP3, messages=msgs, greeting="+OK hi")
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        recv_until(s, b"\r\n")
        s.sendall(b"USER %s\r\nPASS %s\r\n" % (USER.encode(), PASSWORD.encode()))
        recv_until(s, b"Logged in.\r\n")
        s.sendall(b"RETR 1\r\n")
        pieces = []
        s.settimeout(5)
        buf = b""
        while not buf.endswith(b"\r\n.\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            pieces.append(chunk)
            buf += chunk
        self.assertEqual(buf, b"+OK %d octets\r\n" % len(data) +
                         b"Subject: split\r\n\r\n..\r\n...\r\nend.\r\n.\r\n")
        self.assertGreater(len(pieces), 10, "the response should arrive in many pieces")
        s.sendall(b"RETR 2\r\n")
        self.assertEqual(recv_until(s, b"\r\n.\r\n"), b"+OK 1 octets\r\nno final crlf\r\n.\r\n")
        srv.stop()
        self.assertEqual(len(srv.retrieved), 2)
        self.assertTrue(srv.commands()[0].pipelined)  # USER and PASS came together
        self.assertFalse(srv.commands()[2].pipelined)

    def test_drop_mid_retr(self):
        srv = self.serve(FakePOP3, [Retr(drop_after=20)], tls="server")
        p = poplib.POP3_SSL("127.0.0.1", srv.port, context=self.ctx())
        p.user(USER)
        p.pass_(PASSWORD)
        with self.assertRaises((poplib.error_proto, OSError, EOFError)):
            p.retr(1)
        srv.wait_idle()
        self.assertIsNotNone(srv.mark_seq("RetrDrop"))
        self.assertEqual(srv.retrieved, [])
        # A second connection is served normally (per_conn would change that).
        p = poplib.POP3_SSL("127.0.0.1", srv.port, context=self.ctx())
        p.user(USER)
        p.pass_(PASSWORD)
        with self.assertRaises((poplib.error_proto, OSError, EOFError)):
            p.retr(2)

    def test_per_connection_scripts(self):
        srv = self.serve(FakePOP3, per_conn={1: [fakepop3.Close()]}, tls="server")
        with self.assertRaises((poplib.error_proto, OSError, EOFError)):
            p = poplib.POP3_SSL("127.0.0.1", srv.port, context=self.ctx())
            p.user(USER)
        p = poplib.POP3_SSL("127.0.0.1", srv.port, context=self.ctx())
        p.user(USER)
        p.pass_(PASSWORD)
        self.assertEqual(p.stat()[0], 3)
        p.quit()

    def test_huge_line(self):
        srv = self.serve(FakePOP3, [fakepop3.HugeLine(size=2 * fakepop3.MiB, prefix=b"+OK ")],
                         greeting=False)
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        data = recv_until(s, b"\n", limit=2 * fakepop3.MiB, timeout=10)
        self.assertEqual(len(data), 2 * fakepop3.MiB)
        self.assertTrue(data.startswith(b"+OK xxx"))
        self.assertNotIn(b"\n", data)

    def test_no_capa_no_uidl_and_top(self):
        srv = self.serve(FakePOP3, tls="server", capa=False, uidl=False)
        p = poplib.POP3_SSL("127.0.0.1", srv.port, context=self.ctx())
        with self.assertRaises(poplib.error_proto):
            p.capa()
        p.user(USER)
        p.pass_(PASSWORD)
        with self.assertRaises(poplib.error_proto):
            p.uidl()
        self.assertEqual(p.top(2, 0)[1][2], b"Subject: POP message 2")
        p.quit()
        srv.wait_idle()
        self.assertEqual([c.name for c in srv.unexpected], ["UIDL"])


class FakeSMTPPeerTest(PeerCase):
    MSG = (b"From: tester@example.org\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\n"
           b".dot first\r\nline\r\n")

    def test_starttls_auth_send(self):
        srv = self.serve(FakeSMTP)
        s = smtplib.SMTP("127.0.0.1", srv.port)
        code, text = s.ehlo()
        self.assertIn(b"STARTTLS", text)
        self.assertNotIn(b"AUTH", text)
        self.assertEqual(s.mail("a@x")[0], 530)  # no AUTH yet
        s.rset()
        s.starttls(context=self.ctx())
        code, text = s.ehlo()
        self.assertIn(b"AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER", text)
        s.login(USER, PASSWORD)
        refused = s.sendmail("tester@example.org", ["bob@example.org", "carol@example.org"],
                             self.MSG, mail_options=["BODY=8BITMIME"])
        self.assertEqual(refused, {})
        s.quit()
        srv.wait_idle()
        tx = srv.messages[0]
        self.assertEqual(tx.mail_from, "tester@example.org")
        self.assertEqual(tx.mail_params.get("BODY"), "8BITMIME")
        self.assertEqual(tx.rcpts, ["bob@example.org", "carol@example.org"])
        self.assertEqual(tx.data, self.MSG)
        self.assertIn(b"\r\n..dot first\r\n", tx.raw)
        self.assertTrue(tx.tls)
        self.assertNotIn(b"AUTH", srv.received(tls=False))
        self.assertEqual(srv.errors, [])

    def test_auth_login_and_bad_password(self):
        srv = self.serve(FakeSMTP, tls="server")
        s = smtplib.SMTP_SSL("127.0.0.1", srv.port, context=self.ctx())
        s.ehlo()
        s.user, s.password = USER, PASSWORD
        self.assertEqual(s.auth("LOGIN", s.auth_login, initial_response_ok=False)[0], 235)
        s.quit()
        s = smtplib.SMTP_SSL("127.0.0.1", srv.port, context=self.ctx())
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            s.login(USER, "wrong")
        s.close()
        srv.wait_idle()
        # smtplib tries PLAIN first, then LOGIN, when the password is wrong.
        self.assertEqual([a.mechanism for a in srv.auth_attempts],
                         ["AUTH LOGIN", "AUTH PLAIN", "AUTH LOGIN"])
        self.assertEqual(srv.auth_attempts[0].password, PASSWORD)
        self.assertEqual(srv.auth_attempts[1].password, "wrong")

    def test_partial_recipients_and_data_replies(self):
        srv = self.serve(FakeSMTP, tls="server",
                         rcpt_replies={"bad@example.org": "550 5.1.1 no such user"},
                         data_replies={1: "451 4.3.0 try again later"})
        s = smtplib.SMTP_SSL("127.0.0.1", srv.port, context=self.ctx())
        s.login(USER, PASSWORD)
        refused = s.sendmail("t@example.org", ["bob@example.org", "bad@example.org"], self.MSG)
        self.assertEqual(refused, {"bad@example.org": (550, b"5.1.1 no such user")})
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            s.sendmail("t@example.org", ["bob@example.org"], self.MSG)
        self.assertEqual(cm.exception.smtp_code, 451)
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            s.sendmail("t@example.org", ["bad@example.org"], self.MSG)
        s.quit()
        srv.wait_idle()
        self.assertEqual(len(srv.messages), 2)
        self.assertEqual(srv.messages[0].rejected, ["bad@example.org"])
        self.assertTrue(srv.messages[1].reply.startswith("451"))

    def test_size_limit(self):
        srv = self.serve(FakeSMTP, tls="server", size_limit=100)
        s = smtplib.SMTP_SSL("127.0.0.1", srv.port, context=self.ctx())
        s.login(USER, PASSWORD)
        self.assertEqual(s.mail("t@example.org", ["SIZE=5000"])[0], 552)
        s.quit()

    def test_fail_421_at_mail(self):
        srv = self.serve(FakeSMTP, [Fail("MAIL")], tls="server")
        s = smtplib.SMTP_SSL("127.0.0.1", srv.port, context=self.ctx())
        s.login(USER, PASSWORD)
        with self.assertRaises(smtplib.SMTPSenderRefused) as cm:
            s.sendmail("t@example.org", ["bob@example.org"], self.MSG)
        self.assertEqual(cm.exception.smtp_code, 421)
        srv.wait_idle()
        self.assertEqual(srv.commands_after("Fail"), [])

    def test_drop_after_dot_without_reply(self):
        srv = self.serve(FakeSMTP, [Data(reply=None, close=True)], tls="server")
        s = smtplib.SMTP_SSL("127.0.0.1", srv.port, context=self.ctx())
        s.login(USER, PASSWORD)
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            s.sendmail("t@example.org", ["bob@example.org"], self.MSG)
        srv.wait_idle()
        self.assertEqual(len(srv.messages), 1)
        self.assertIsNone(srv.messages[0].reply)
        self.assertEqual(srv.messages[0].data, self.MSG)

    def test_drop_mid_data(self):
        srv = self.serve(FakeSMTP, [Data(drop_after=10)], tls="server")
        s = smtplib.SMTP_SSL("127.0.0.1", srv.port, context=self.ctx())
        s.login(USER, PASSWORD)
        with self.assertRaises((smtplib.SMTPServerDisconnected, OSError)):
            s.sendmail("t@example.org", ["bob@example.org"], self.MSG * 100)
        srv.wait_idle()
        self.assertEqual(srv.messages, [])
        self.assertIsNotNone(srv.mark_seq("DataDrop"))

    def test_starttls_injection_and_refusal(self):
        inject = b"250 injected\r\n"
        srv = self.serve(FakeSMTP, [StartTLS(inject=inject)])
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        recv_until(s, b"\r\n")
        s.sendall(b"EHLO x\r\nSTARTTLS\r\n")
        data = recv_until(s, b"injected\r\n")
        self.assertTrue(data.endswith(b"220 2.0.0 Ready to start TLS\r\n" + inject), data)
        self.assertTrue(srv.commands()[1].name == "STARTTLS")
        self.assertTrue(srv.commands()[0].pipelined)
        srv2 = self.serve(FakeSMTP, [StartTLS(reply="454 4.7.0 TLS not available")])
        s = smtplib.SMTP("127.0.0.1", srv2.port)
        with self.assertRaises(smtplib.SMTPResponseException) as cm:
            s.starttls(context=self.ctx())
        self.assertEqual(cm.exception.smtp_code, 454)
        s.close()
        srv3 = self.serve(FakeSMTP, ehlo=["PIPELINING", "8BITMIME"])
        s = smtplib.SMTP("127.0.0.1", srv3.port)
        with self.assertRaises(smtplib.SMTPNotSupportedError):
            s.starttls(context=self.ctx())
        s.close()

    def test_huge_reply_line(self):
        srv = self.serve(FakeSMTP, [fakesmtp.Expect(r"^EHLO"),
                                    fakesmtp.HugeLine(size=3 * fakesmtp.MiB, prefix=b"250-")])
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        recv_until(s, b"\r\n")
        s.sendall(b"EHLO x\r\n")
        data = recv_until(s, b"\n", limit=3 * fakesmtp.MiB, timeout=10)
        self.assertEqual(len(data), 3 * fakesmtp.MiB)
        self.assertTrue(data.startswith(b"250-xxx"))

    def test_unknown_commands_are_recorded(self):
        srv = self.serve(FakeSMTP, tls="server")
        s = smtplib.SMTP_SSL("127.0.0.1", srv.port, context=self.ctx())
        self.assertEqual(s.docmd("XFROB")[0], 502)
        s.quit()
        srv.wait_idle()
        self.assertEqual([c.name for c in srv.unexpected], ["XFROB"])
        with open(os.path.join(srv.log_dir, "client.bin"), "rb") as f:
            self.assertIn(b"XFROB\r\n", f.read())
        self.assertIn("XFROB", srv.transcript())

    def test_stop_is_quick_with_a_stalled_client(self):
        srv = self.serve(FakeSMTP, [fakesmtp.Stall()], greeting=False)
        s = socket.create_connection(("127.0.0.1", srv.port))
        self.addCleanup(s.close)
        s.sendall(b"EHLO x\r\n")
        time.sleep(0.2)
        t0 = time.monotonic()
        srv.stop()
        self.assertLess(time.monotonic() - t0, 2)
        self.assertEqual(srv.received(), b"EHLO x\r\n")


if __name__ == "__main__":
    unittest.main()
