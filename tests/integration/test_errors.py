"""Headless failures: auth, password_command, missing things, config and usage errors.

Layer: tests/integration (TESTMATRIX H1, F3). Each failure must be one error
object on stdout with the right code, a human line on stderr, and exit 1 for a
failed command or 2 for a usage or config error; a batch stops at the first
failure; headless never prompts, even when it lacks a password.
"""

import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dovecot  # noqa: E402
import tern  # noqa: E402

DC = WS = None


def setUpModule():
    global DC, WS
    DC = dovecot.Dovecot()
    DC.start()
    DC.add_messages("alice", "INBOX", [(m.data, m.flags, (), m.internaldate)
                                       for m in tern.gen_mail().bulk(3, "INBOX")])
    WS = tern.Workspace(prefix="tern-errors-")


def tearDownModule():
    if DC:
        DC.cleanup()
    if WS:
        WS.cleanup()


def good_config(**kw):
    return WS.write_config({"main": WS.account(DC, "alice", **kw)})


class SilentServer:
    """Accepts connections on 127.0.0.1 and never says a word."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                continue

    def close(self):
        self.stop = True
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


class AuthTest(tern.TernCase):
    def test_wrong_password(self):
        res = WS.run(good_config(password="wrong-secret-4711"), "folders")
        self.assertFails(res, "auth")
        self.assertNotIn(b"wrong-secret-4711", res.stdout)
        self.assertNotIn("wrong-secret-4711", res.stderr)

    def test_unknown_user(self):
        acct = WS.account(DC, "alice")
        acct["imap"] = "imaps://mallory@127.0.0.1:%d" % DC.ports["imaps"]
        self.assertFails(WS.run(WS.write_config({"m": acct}), "folders"), "auth")

    def test_password_command(self):
        cfg = good_config(password=None, password_command="echo alice-pw")
        self.assertOk(WS.run(cfg, "folders"))

    def test_password_command_failing(self):
        cfg = good_config(password=None, password_command="sh -c 'exit 7'")
        err = self.assertFails(WS.run(cfg, "folders"))
        self.assertIn("7", err["message"])

    def test_no_password_never_prompts(self):
        # Neither password nor password_command, stdin closed: fail, do not wait.
        cfg = good_config(password=None)
        res = WS.run(cfg, "folders", timeout=30)
        self.assertIn(res.rc, (1, 2), res.describe())
        self.assertFails(res, ("auth", "config"), rc=res.rc)


    def test_no_prompt_even_on_a_terminal(self):
        # Headless with a terminal on stdin still must not ask for a password.
        import pty
        master, slave = pty.openpty()
        try:
            res = WS.run(good_config(password=None), "folders", stdin=slave, timeout=30)
        finally:
            os.close(slave)
            os.close(master)
        self.assertIn(res.rc, (1, 2), res.describe())
        self.assertFails(res, ("auth", "config"), rc=res.rc)


class MissingTest(tern.TernCase):
    def test_missing_folder(self):
        for cmd in ('list "No Such Folder"', 'show Nowhere 1', 'expunge Nowhere',
                    'flag Nowhere 1 +seen', 'delete Nowhere 1', 'move Nowhere 1 INBOX'):
            with self.subTest(cmd=cmd):
                err = self.assertFails(WS.run(good_config(), cmd), "notfound")
                self.assertTrue(err["command"].startswith(cmd.split()[0]), err)

    def test_missing_message(self):
        self.assertFails(WS.run(good_config(), "show INBOX 4242"), "notfound")


class BatchTest(tern.TernCase):
    def test_batch_stops_at_first_failure(self):
        res = WS.run(good_config(), batch="list INBOX --limit 1\nlist Nowhere\nfolders\n")
        self.assertFails(res, "notfound")
        self.assertEqual(len(res.objects), 2, res.describe())
        self.assertEqual(res.objects[0]["uid"], 3)
        self.assertTrue(res.errors[0]["command"].startswith("list"), res.describe())

    def test_inline_commands_stop_at_first_failure(self):
        res = WS.run(good_config(), "list INBOX --limit 1", "list Nowhere", "folders")
        self.assertFails(res, "notfound")
        self.assertEqual(len(res.objects), 2, res.describe())

    def test_batch_file(self):
        path = WS.path("batch.txt")
        with open(path, "w") as f:
            f.write("list INBOX --limit 2\n\nlist INBOX --limit 1\n")
        res = WS.run(good_config(), batch_file=path)
        self.assertEqual([o["uid"] for o in self.assertOk(res)], [3, 2, 3])

    def test_empty_batch_from_closed_stdin(self):
        res = WS.run(good_config(), args=["--batch"], timeout=30)
        self.assertOk(res, count=0)

    def test_all_stdout_is_json(self):
        res = WS.run(good_config(), "folders", "list INBOX", "show INBOX 1")
        self.assertOk(res)
        self.assertTrue(res.stdout.endswith(b"\n"))


class ConfigTest(tern.TernCase):
    def run_raw(self, text, *commands):
        return WS.run(WS.write_config(None, raw=text), *(commands or ("folders",)))

    def base(self):
        acct = WS.account(DC, "alice")
        return "[account main]\n" + "".join("%s = %s\n" % kv for kv in acct.items())

    def test_unknown_key_names_key_and_line(self):
        text = self.base() + "colour = blue\n"
        line = text.count("\n")
        err = self.assertFails(self.run_raw(text), "config", rc=2, contains="colour")
        self.assertIn(str(line), err["message"])

    def test_missing_config_file(self):
        res = WS.run(WS.path("config", "does-not-exist"), "folders")
        self.assertFails(res, "config", rc=2)

    def test_bad_values(self):
        for key, value in (("tls", "sometimes"), ("imap", "http://alice@127.0.0.1:1"),
                           ("imap", "imaps://"), ("timeout", "soon"), ("offline", "maybe"),
                           ("tls", "fingerprint:md5:abcd"), ("tls", "fingerprint:sha256:xyz")):
            with self.subTest(key=key, value=value):
                acct = WS.account(DC, "alice")
                acct[key] = value
                res = WS.run(WS.write_config({"main": acct}), "folders")
                self.assertFails(res, "config", rc=2)

    def test_no_account(self):
        self.assertFails(self.run_raw("# nothing here\n"), "config", rc=2)

    def test_garbage_line(self):
        self.assertFails(self.run_raw(self.base() + "this is not ini\n"), "config", rc=2)

    def test_second_account_selected(self):
        first = WS.account(DC, "alice", password="wrong-password")
        second = WS.account(DC, "alice")
        cfg = WS.write_config([("first", first), ("second", second)])
        self.assertFails(WS.run(cfg, "folders"), "auth")
        self.assertOk(WS.run(cfg, "folders", account="second"))


class UsageTest(tern.TernCase):
    def test_unknown_command(self):
        self.assertFails(WS.run(good_config(), "frobnicate INBOX"), "usage", rc=2)

    def test_missing_arguments(self):
        for cmd in ("list", "show INBOX", "save INBOX 1", "move INBOX 1", "flag INBOX"):
            with self.subTest(cmd=cmd):
                self.assertFails(WS.run(good_config(), cmd), "usage", rc=2)

    def test_bad_uid_set(self):
        for cmd in ("show INBOX abc", "flag INBOX 1:x +seen", "list INBOX --limit -3"):
            with self.subTest(cmd=cmd):
                self.assertFails(WS.run(good_config(), cmd), "usage", rc=2)

    def test_unknown_option(self):
        res = WS.run(good_config(), args=["--no-such-option"])
        self.assertEqual(res.rc, 2, res.describe())
        self.assertTrue(res.stderr.strip(), res.describe())

    def test_version_and_help(self):
        for arg in ("--version", "--help"):
            with self.subTest(arg=arg):
                res = WS.run(None, args=[arg])
                self.assertEqual(res.rc, 0, res.describe())
                self.assertTrue(res.stdout.strip(), res.describe())


class NetworkTest(tern.TernCase):
    def test_connection_refused(self):
        port = dovecot.free_ports(1)[0]
        acct = WS.account(DC, "alice")
        acct["imap"] = "imaps://alice@127.0.0.1:%d" % port
        self.assertFails(WS.run(WS.write_config({"x": acct}), "folders"), "io")

    def test_silent_server_times_out(self):
        silent = SilentServer()
        try:
            for transport in ("imap", "imaps"):
                with self.subTest(transport=transport):
                    acct = WS.account(DC, "alice", transport=transport)
                    acct["imap"] = "%s://alice@127.0.0.1:%d" % (transport, silent.port)
                    acct["timeout"] = "2"
                    start = time.monotonic()
                    res = WS.run(WS.write_config({"x": acct}), "folders", timeout=60)
                    self.assertFails(res, "timeout")
                    self.assertLess(time.monotonic() - start, 30,
                                    "the 2 s timeout took too long")
        finally:
            silent.close()


if __name__ == "__main__":
    unittest.main()
