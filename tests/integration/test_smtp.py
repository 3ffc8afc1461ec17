"""SMTP submission against a real MTA: Postfix delivering into the test Dovecot.

Layer: tests/integration. One private Dovecot with LMTP (tests/lib/dovecot.py)
and one private Postfix (tests/lib/mta.py) for the module: tern submits to
Postfix on its STARTTLS submission port (smtp://) or its implicit-TLS port
(smtps://), AUTH is checked by the Dovecot, and Postfix delivers by LMTP into
the recipients' INBOXes, where each test finds the message by its Message-ID
and reads the delivered bytes from the Maildir. The Sent copy is looked for
in alice's IMAP Sent folder (with \\Seen), or in the local Sent folder of an
account without IMAP.

The contract (DESIGN.md, docs/DECISIONS.md): `send FILE` and `compose ...`
print {"queued":true,"message_id"} and then the outcome ({"sent":true,...},
or {"state":"queued"|"failed","last_error",...} and an error object); `outbox`
lists what is queued or failed with its last error; `flush` sends the queue
over one connection and leaves failed messages alone. Bcc reaches its
recipient but never appears in a transmitted copy; lines starting with "."
and bare LF survive the trip; CR or LF in a value given on the command line
is an error that sends nothing.

Skipped when Postfix cannot run here (not installed, not root: the reason is
printed) or while tern answers `unsupported` to these commands.
"""

import email
import email.policy
import os
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dovecot  # noqa: E402
import mta as mta_mod  # noqa: E402
import popsmtp  # noqa: E402
import tern  # noqa: E402
from tern import quote  # noqa: E402

DC = MTA = WS = None
SKIP = None
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}


def _setup():
    global DC, MTA, WS, SKIP
    if not os.access(tern.tern_bin(), os.X_OK):
        SKIP = "tern not built at %s (set TERN_BIN)" % tern.tern_bin()
        return
    ok, why = mta_mod.available()
    if not ok:
        SKIP = "no private MTA: %s" % why
        return
    DC = dovecot.Dovecot(users=USERS, lmtp=True)
    DC.start()
    MTA = mta_mod.MTA(DC)
    MTA.start()
    WS = tern.Workspace(prefix="tern-smtp-")
    cfg = WS.write_config({"mta": smtp_account(WS)})
    for word, cmd in (("outbox", "outbox"), ("send", "send /nonexistent/message.eml")):
        SKIP = popsmtp.unsupported_reason(WS.run(cfg, cmd, timeout=60), word)
        if SKIP:
            return


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
    if WS:
        WS.cleanup()


def smtp_account(ws, transport="smtp", imap=True, port=None, cache_dir=None, **extra):
    """The keys of alice's account: submission to the MTA, IMAP for the Sent copy."""
    if port is None:
        port = MTA.ports["submission" if transport == "smtp" else "smtps"]
    keys = {
        "from": "Alice Example <alice@example.org>",
        "smtp": "%s://alice@127.0.0.1:%d" % (transport, port),
    }
    if imap:
        keys["imap"] = "imaps://alice@127.0.0.1:%d" % DC.ports["imaps"]
        keys["sent_folder"] = "Sent"
    keys["password"] = DC.password("alice")
    keys["tls_ca_file"] = DC.ca_file
    ws._n += 1
    keys["cache_dir"] = cache_dir or ws.path("data", "cache-%d-alice" % ws._n)
    keys["timeout"] = "20"
    keys.update(extra)
    return {k: v for k, v in keys.items() if v is not None}


def new_mid(tag):
    return "%s.%s@smtp.tern.test" % (tag, uuid.uuid4().hex[:12])


def message(mid, to="Bob <bob@example.org>", subject="Hello", body="Hi Bob,\n\nbye.\n",
            eol="\r\n", extra=()):
    head = ["From: Alice Example <alice@example.org>", "To: %s" % to,
            "Subject: %s" % subject, "Date: Mon, 01 Jan 2024 10:00:00 +0000",
            "Message-ID: <%s>" % mid, "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    head += list(extra)
    text = eol.join(head) + eol + eol + body.replace("\n", eol)
    return text.encode("utf-8")


def lf(data):
    return data.replace(b"\r\n", b"\n")


class SmtpCase(tern.TernCase):
    def setUp(self):
        if SKIP:
            self.skipTest(SKIP)
        self.ws = WS

    def config(self, keys, name="mta"):
        return self.ws.write_config({name: keys})

    def write(self, data, name=None):
        path = self.ws.path("out", name or "msg-%s.eml" % uuid.uuid4().hex[:8])
        with open(path, "wb") as f:
            f.write(data)
        return path

    def copy_of(self, user, mid, folder="INBOX", timeout=20):
        """The delivered bytes of MID in USER's FOLDER (waits for Postfix)."""
        MTA.wait_delivered(user, folder, message_id=mid, timeout=timeout)
        path = DC.folder_path(user, folder)
        needle = ("<%s>" % mid).encode()
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(path, sub)):
                with open(os.path.join(path, sub, name), "rb") as f:
                    data = f.read()
                if needle in data.split(b"\n\n", 1)[0]:
                    return data
        self.fail("delivered %s to %s/%s but no file holds it" % (mid, user, folder))

    def outbox(self, cfg):
        return self.assertOk(self.ws.run(cfg, "outbox"))

    def assertSent(self, res, mid):
        """queued, then sent, both naming MID; exit 0."""
        objs = self.assertOk(res)
        queued = [o for o in objs if o.get("queued") is True]
        sent = [o for o in objs if o.get("sent") is True]
        self.assertEqual([o.get("message_id") for o in queued], [mid], res.describe())
        self.assertEqual([o.get("message_id") for o in sent], [mid], res.describe())
        self.assertLess(objs.index(queued[0]), objs.index(sent[0]), res.describe())
        return sent[0]

    def assertSentCopy(self, mid):
        uid = None
        deadline = time.monotonic() + 5
        while uid is None and time.monotonic() < deadline:
            uid = DC.uid_of("alice", "Sent", mid)
            if uid is None:
                time.sleep(0.1)
        self.assertIsNotNone(uid, "no copy of %s in alice's Sent" % mid)
        self.assertIn("\\Seen", DC.flags("alice", "Sent", uid))

    def mta_log_count(self, needle):
        return MTA.log().count(needle)


class SendTest(SmtpCase):
    def test_send_file_over_starttls(self):
        mid = new_mid("starttls")
        body = "Hi Bob,\n.\n..\n.leading dot\nFrom the start\nGrüße ✓\n"
        path = self.write(message(mid, body=body))
        cfg = self.config(smtp_account(self.ws))
        self.assertSent(self.ws.run(cfg, "send %s" % quote(path)), mid)
        copy = self.copy_of("bob", mid)
        self.assertTrue(lf(copy).endswith(body.encode()), copy[-300:])
        self.assertIn(b"\nSubject: Hello\n", lf(copy))
        # Postfix's Received line: ESMTPSA is ESMTP with TLS and AUTH (RFC 3848).
        self.assertIn(b"with ESMTPSA", copy, "submitted with TLS and AUTH")
        self.assertSentCopy(mid)
        self.assertEqual(self.outbox(cfg), [])

    def test_smtps_without_imap_keeps_a_local_sent_copy(self):
        mid = new_mid("smtps")
        path = self.write(message(mid))
        keys = smtp_account(self.ws, transport="smtps", imap=False)
        cfg = self.config(keys)
        self.assertSent(self.ws.run(cfg, "send %s" % quote(path)), mid)
        self.copy_of("bob", mid)
        sent = popsmtp.maildir_files(os.path.join(keys["cache_dir"], "mail", "Sent"))
        self.assertEqual(len(sent), 1, sent.keys())
        self.assertIn(("<%s>" % mid).encode(), list(sent.values())[0])
        self.assertEqual(self.outbox(cfg), [])

    def test_bare_lf_and_dot_lines_arrive_intact(self):
        mid = new_mid("lf")
        body = ".\n..\n...\n. \n.x\nline\n\nFrom here\nend.\n"
        path = self.write(message(mid, body=body, eol="\n"))
        cfg = self.config(smtp_account(self.ws))
        self.assertSent(self.ws.run(cfg, "send %s" % quote(path)), mid)
        copy = lf(self.copy_of("bob", mid))
        self.assertTrue(copy.endswith(b"\n\n" + body.encode()), copy[-200:])

    def test_partial_recipient_failure_is_reported_per_recipient(self):
        mid = new_mid("partial")
        path = self.write(message(mid, to="bob@example.org, nosuch@example.org"))
        cfg = self.config(smtp_account(self.ws))
        res = self.ws.run(cfg, "send %s" % quote(path))
        self.assertEqual(res.bad_lines, [], res.describe())
        out = res.stdout.decode("utf-8", "replace")
        self.assertIn("nosuch@example.org", out, "the refused recipient is named\n" +
                      res.describe())
        self.assertIn("550", out, "with the server's code\n" + res.describe())
        self.copy_of("bob", mid)
        # The server took the message (2xx after DATA): it left the outbox.
        self.assertEqual(self.outbox(cfg), [])

    def test_all_recipients_refused_marks_failed_and_flush_leaves_it(self):
        mid = new_mid("refused")
        path = self.write(message(mid, to="nosuch1@example.org"))
        cfg = self.config(smtp_account(self.ws))
        res = self.ws.run(cfg, "send %s" % quote(path))
        self.assertEqual(res.rc, 1, res.describe())
        self.assertTrue(res.errors, res.describe())
        box = self.outbox(cfg)
        self.assertEqual(len(box), 1, box)
        self.assertEqual(box[0]["state"], "failed", box)
        self.assertEqual(box[0]["message_id"], mid, box)
        self.assertIn("nosuch1@example.org", box[0]["last_error"] + " ".join(
            str(t) for t in box[0].get("to", [])), box)
        tries = self.mta_log_count("<nosuch1@example.org>: Recipient address rejected")
        self.assertGreaterEqual(tries, 1)
        # Failed messages are not retried by flush, not even days later.
        self.ws.run(cfg, "flush", env=popsmtp.later())
        self.assertEqual(self.mta_log_count("<nosuch1@example.org>: Recipient address rejected"),
                         tries)
        box = self.outbox(cfg)
        self.assertEqual([b["state"] for b in box], ["failed"], box)

    def test_queued_while_unreachable_then_flushed_over_one_connection(self):
        closed = dovecot.free_ports(1)[0]
        keys = smtp_account(self.ws, port=closed)
        down = self.config(keys, "mta")
        up = self.config(dict(keys, smtp="smtp://alice@127.0.0.1:%d" % MTA.ports["submission"]))
        mids = [new_mid("queued%d" % i) for i in range(3)]
        for mid in mids:
            res = self.ws.run(down, "send %s" % quote(self.write(message(mid))))
            self.assertEqual(res.rc, 1, res.describe())
            self.assertEqual([o.get("message_id") for o in res.results if o.get("queued")],
                             [mid], res.describe())
            self.assertEqual([o for o in res.results if o.get("sent")], [], res.describe())
        box = self.outbox(down)
        self.assertEqual(sorted(b["message_id"] for b in box), sorted(mids), box)
        for b in box:
            self.assertEqual(b["state"], "queued", b)
            self.assertIsInstance(b["attempts"], int, b)
            self.assertIn("to", b)
            # Why it is still queued: the connection failure (the issue: "outbox
            # lists queued and failed messages with their last error").
            self.assertTrue(b["last_error"], b)
        res = self.ws.run(up, "flush", env=popsmtp.later())
        objs = self.assertOk(res)
        self.assertEqual(sorted(o["message_id"] for o in objs if o.get("sent")), sorted(mids),
                         res.describe())
        for mid in mids:
            self.copy_of("bob", mid)
            self.assertSentCopy(mid)
        self.assertEqual(self.outbox(up), [])
        # One connection carried all three (Postfix logs its counts at disconnect).
        deadline = time.monotonic() + 5
        while True:
            ends = [l for l in MTA.log().split("\n")
                    if "postfix/submission/smtpd" in l and "disconnect from" in l]
            if (ends and " mail=3 " in ends[-1]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertIn(" data=3 ", ends[-1] if ends else "", "three messages over one "
                      "connection:\n" + "\n".join(ends[-3:]))

    def test_too_large_is_refused_before_data(self):
        mid = new_mid("large")
        line = "0123456789abcdef" * 4 + "\n"
        body = line * (11 * 1024 * 1024 // len(line))
        path = self.write(message(mid, body=body))
        cfg = self.config(smtp_account(self.ws))
        res = self.ws.run(cfg, "send %s" % quote(path), timeout=120)
        self.assertEqual(res.rc, 1, res.describe())
        self.assertNotIn("message-id=<%s>" % mid, MTA.log(), "the data was transmitted")
        box = self.outbox(cfg)
        self.assertEqual([b["state"] for b in box], ["failed"], box)


class ComposeTest(SmtpCase):
    def test_compose_utf8_attachments_and_bcc(self):
        subject = "Grüße — тест ✓ " + uuid.uuid4().hex[:8]
        body = ("Hallo Bob,\n\nÜmläüts and ✓ marks.\n.\n.. two dots\n" +
                "x" * 1500 + "\n" + "long line with spaces " * 80 + "\nend\n")
        body_file = self.write(body.encode("utf-8"), "body-%s.txt" % uuid.uuid4().hex[:6])
        blob = bytes(range(256)) * 64
        bin_file = self.write(blob, "data.bin")
        notes = ("naïve résumé\n" + "y" * 3000 + "\n").encode("utf-8")
        notes_file = self.write(notes, "notes with space.txt")
        keys = smtp_account(self.ws)
        cfg = self.config(keys)
        cmd = ("compose --to %s --cc %s --bcc %s --subject %s --attach %s --attach %s "
               "--body-file %s" % ("bob@example.org", "carol@example.org", "dave@example.org",
                                   quote(subject), quote(bin_file), quote(notes_file),
                                   quote(body_file)))
        res = self.ws.run(cfg, cmd)
        objs = self.assertOk(res)
        queued = [o for o in objs if o.get("queued")]
        self.assertEqual(len(queued), 1, res.describe())
        mid = queued[0]["message_id"]
        self.assertEqual([o.get("message_id") for o in objs if o.get("sent")], [mid])
        for user in ("bob", "carol", "dave"):
            raw = self.copy_of(user, mid)
            for line in lf(raw).split(b"\n"):
                self.assertLessEqual(len(line), 998, "a line over 998 octets in %s's copy" % user)
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            self.assertIsNone(msg["Bcc"], "Bcc transmitted to %s" % user)
            self.assertNotIn(b"dave@example.org", raw.split(b"\n\n", 1)[0].replace(
                b"for <dave@example.org>", b"").replace(b"Delivered-To: dave@example.org", b""),
                "dave's address in the headers of %s's copy" % user)
            self.assertEqual(str(msg["Subject"]), subject)
            self.assertIn("alice@example.org", str(msg["From"]))
            self.assertIsNotNone(msg["Date"])
            self.assertEqual(str(msg["Message-ID"]).strip("<> "), mid)
            text = msg.get_body(("plain",)).get_content()
            self.assertEqual(text.replace("\r\n", "\n").rstrip("\n"), body.rstrip("\n"))
            atts = {a.get_filename(): a.get_payload(decode=True) for a in msg.iter_attachments()}
            self.assertEqual(set(atts), {"data.bin", "notes with space.txt"}, user)
            self.assertEqual(atts["data.bin"], blob)
            self.assertEqual(lf(atts["notes with space.txt"]), notes)
        self.assertSentCopy(mid)
        self.assertEqual(self.outbox(cfg), [])

    def test_cr_or_lf_on_the_command_line_is_an_error(self):
        keys = smtp_account(self.ws)
        cfg = self.config(keys)
        body_file = self.write(b"hello\n", "body-inject.txt")
        before = self.mta_log_count("carol@example.org")
        for args in (("bob@example.org", "hi\r\nBcc: carol@example.org"),
                     ("bob@example.org", "hi\nBcc: carol@example.org"),
                     ("bob@example.org\r\nRCPT TO:<carol@example.org>", "hi"),
                     ("bob@example.org\ncarol@example.org", "hi")):
            with self.subTest(args=args):
                res = self.ws.run(cfg, "compose --to %s --subject %s --body-file %s" % (
                    quote(args[0]), quote(args[1]), quote(body_file)))
                self.assertIn(res.rc, (1, 2), res.describe())
                self.assertTrue(res.errors, res.describe())
                self.assertEqual([o for o in res.results if o.get("queued")], [],
                                 "queued despite CR/LF\n" + res.describe())
        time.sleep(0.5)
        self.assertEqual(self.mta_log_count("carol@example.org"), before)
        self.assertEqual(self.outbox(cfg), [])


if __name__ == "__main__":
    unittest.main()
