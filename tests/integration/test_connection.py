"""How tern talks to a real Dovecot: compression, host names and IPv6, the
protocol trace, and the second connection that lists large folders.

Layer: tests/integration. One Dovecot for the module, with the zlib plugin
(COMPRESS=DEFLATE) enabled.
"""

import os
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dovecot  # noqa: E402
import tern  # noqa: E402

DC = WS = None
BULK = 10500  # above the size from which list uses a second connection


def setUpModule():
    global DC, WS
    DC = dovecot.Dovecot(users={"alice": "alice-pw", "bob": "bob-pw"})
    DC.start()
    tern.seed_demo(DC, "alice")
    gm = tern.gen_mail()
    DC.add_messages("bob", "INBOX", [(m.data, m.flags, m.keywords, m.internaldate)
                                     for m in gm.bulk(BULK)])
    WS = tern.Workspace(prefix="tern-conn-")


def tearDownModule():
    if DC:
        DC.cleanup()
    if WS:
        WS.cleanup()


def trace_lines(res, prefix):
    return [l for l in res.stderr.splitlines() if l.startswith(prefix)]


class CompressTest(tern.TernCase):
    def test_compress_yes_is_used_and_changes_nothing(self):
        plain = self.assertOk(WS.run(WS.write_config({"a": WS.account(DC)}), "list INBOX"))
        cfg = WS.write_config({"a": WS.account(DC, compress="yes")})
        res = WS.run(cfg, "list INBOX", env={"TERN_TRACE": "1"})
        packed = self.assertOk(res)
        sent = trace_lines(res, "C: ")
        self.assertTrue(any(l.endswith("COMPRESS DEFLATE") for l in sent), res.describe())
        self.assertEqual(packed, plain)

    def test_compress_off_by_default(self):
        res = WS.run(WS.write_config({"a": WS.account(DC)}), "folders", env={"TERN_TRACE": "1"})
        self.assertOk(res)
        self.assertFalse(any("COMPRESS" in l for l in trace_lines(res, "C: ")), res.describe())

    def test_bad_compress_value_is_a_config_error(self):
        cfg = WS.write_config({"a": WS.account(DC, compress="maybe")})
        self.assertFails(WS.run(cfg, "folders"), code="config", rc=2, contains="compress")


class TraceTest(tern.TernCase):
    def test_trace_never_shows_the_password(self):
        res = WS.run(WS.write_config({"a": WS.account(DC)}), "folders", env={"TERN_TRACE": "1"})
        self.assertOk(res)
        self.assertIn("<secret>", res.stderr)
        self.assertNotIn("alice-pw", res.stderr)
        self.assertTrue(trace_lines(res, "S: "), "no server lines in the trace")


class Forwarder:
    """Accepts on [::1] and pipes bytes to Dovecot's IPv4 port."""

    def __init__(self, target_port):
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.bind(("::1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.target = target_port
        self.used = False
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.used = True
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class AddressTest(tern.TernCase):
    def test_host_name_localhost(self):
        cfg = WS.write_config({"a": WS.account(DC, host="localhost")})
        self.assertIn("INBOX", [f["name"] for f in self.assertOk(WS.run(cfg, "folders"))])

    @unittest.skipUnless(have_ipv6_loopback(), "no IPv6 loopback on this machine")
    def test_ipv6_literal(self):
        fwd = Forwarder(DC.ports["imaps"])
        try:
            acct = WS.account(DC)
            acct["imap"] = "imaps://alice@[::1]:%d" % fwd.port
            res = WS.run(WS.write_config({"a": acct}), "folders")
            self.assertIn("INBOX", [f["name"] for f in self.assertOk(res)])
            self.assertTrue(fwd.used, "tern did not connect over IPv6")
        finally:
            fwd.close()


HOSTILE = (b"From: Mallory <mallory@example.org>\r\n"
           b"To: Alice <alice@example.org>\r\n"
           b"Subject: names\r\n"
           b"Message-ID: <hostile-names@example.org>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
           b"--b\r\nContent-Type: text/plain\r\n"
           b"Content-Disposition: attachment; filename=\"../../evil.sh\"\r\n\r\nrm -rf /\r\n"
           b"--b\r\nContent-Type: text/plain\r\n"
           b"Content-Disposition: attachment; filename=\"/etc/passwd\"\r\n\r\nroot\r\n"
           b"--b\r\nContent-Type: text/plain\r\n"
           b"Content-Disposition: attachment; filename=\".\x1b[2Jhidden\"\r\n\r\nx\r\n"
           b"--b--\r\n")


class SaveNamesTest(tern.TernCase):
    """TESTMATRIX M9: a part saved into a directory stays inside it."""

    @classmethod
    def setUpClass(cls):
        DC.add_message("alice", "Archive", HOSTILE)

    def test_hostile_names_stay_inside_the_directory(self):
        cfg = WS.write_config({"a": WS.account(DC)})
        rows = self.assertOk(WS.run(cfg, "search Archive subject:names"))
        uid = rows[0]["uid"]
        show = self.assertOk(WS.run(cfg, "show Archive %d" % uid), count=1)[0]
        target = WS.path("out", "m9")
        os.makedirs(target, exist_ok=True)
        saved = []
        for part in show["parts"]:
            if not part["filename"]:
                continue
            res = WS.run(cfg, "save Archive %d %s %s" % (uid, part["id"], target))
            path = self.assertOk(res, count=1)[0]["saved"]
            self.assertEqual(os.path.dirname(path), target, res.describe())
            name = os.path.basename(path)
            self.assertFalse(name.startswith("."), name)
            self.assertTrue(all(0x20 <= ord(c) != 0x7f for c in name), repr(name))
            saved.append(name)
        self.assertEqual(len(saved), 3)
        self.assertEqual(sorted(os.listdir(target)), sorted(saved))


class ParallelListTest(tern.TernCase):
    def test_large_folder_uses_two_connections_and_lists_everything_once(self):
        cfg = WS.write_config({"b": WS.account(DC, "bob")})
        res = WS.run(cfg, "list INBOX", env={"TERN_TRACE": "1"}, timeout=120)
        rows = self.assertOk(res, count=BULK)
        uids = [r["uid"] for r in rows]
        self.assertEqual(uids, sorted(uids, reverse=True))
        self.assertEqual(len(set(uids)), BULK)
        logins = [l for l in trace_lines(res, "C: ") if " AUTHENTICATE " in l]
        self.assertEqual(len(logins), 2, "expected a second connection\n" + res.describe())
        examines = [l for l in trace_lines(res, "C: ") if " EXAMINE " in l]
        logouts = [l for l in trace_lines(res, "C: ") if l.endswith(" LOGOUT")]
        # Every connection that got the folder open also logs out.
        self.assertEqual(len(logouts), len(examines), res.describe())
        # The same rows as a listing in small pieces over one connection.
        limited = self.assertOk(WS.run(cfg, "list INBOX --limit 9000"))
        self.assertEqual(limited, rows[:9000])

    def test_small_folder_uses_one_connection(self):
        cfg = WS.write_config({"a": WS.account(DC)})
        res = WS.run(cfg, "list INBOX", env={"TERN_TRACE": "1"})
        self.assertOk(res)
        logins = [l for l in trace_lines(res, "C: ") if " AUTHENTICATE " in l]
        self.assertEqual(len(logins), 1, res.describe())


if __name__ == "__main__":
    unittest.main()
