#!/usr/bin/python3
"""A scriptable fake POP3 server for the adversarial tests (TESTMATRIX T1, T3, P1,
P2, I3, I6, F3 for POP3).

Layer: tests/peers. It does on purpose what a real server never does: drop
STLS from CAPA or refuse it, inject bytes after the STLS go-ahead, send a
10 MB line, lie in LIST about sizes, send UIDLs that are empty, too long,
non-printable, contain "/" or are shared by two messages, split the ".CRLF"
terminator across TCP segments, drop the connection in the middle of a
RETR. Standard library only; built on fakebase.py (the approach and logging
of fakeimap.py).

Use
---
    from fakepop3 import FakePOP3, PopMessage, Stls, Retr, Expect, ...

    msgs = [PopMessage(b"Subject: a\\r\\n\\r\\nbody\\r\\n", uidl=b"u1")]
    with FakePOP3([Stls(), Retr(drop_after=10)], messages=msgs, certs=certs,
                  user="tester", password="pw") as srv:
        run tern against 127.0.0.1:srv.port ...
        srv.wait_idle()
        assert "DELE" not in srv.command_names()

The mailbox (srv.mailbox, a list of PopMessage) lives as long as the server,
across connections: each connection sees the messages present when it
started, numbered from 1; DELE marks them and only a QUIT commits the
deletions (RFC 1939 §6, the UPDATE state), which removes them from the
mailbox and appends them to srv.deleted. A connection that ends any other
way deletes nothing.

PopMessage(data, uidl=None, list_size=None, wire=None, chunk=None, pause=0.002)
    data       the message as the client should store it
    uidl       bytes for UIDL (default: b"uidl-N" with N its position at
               creation); any bytes, also empty or hostile
    list_size  what LIST and STAT claim (default: len(data)), to lie
    wire       the exact bytes after the "+OK" line of RETR, terminator
               included, replacing the dot-stuffed data + ".\\r\\n" (for a
               missing terminator or other framing faults)
    chunk      send the RETR response CHUNK bytes at a time with PAUSE
               seconds between the sends (separate TCP segments/TLS records)

The server: FakePOP3(script=(), *, certs, tls=None, greeting=None,
caps=DEFAULT_CAPS, caps_tls=DEFAULT_CAPS_TLS, capa=True, uidl=True,
messages=None, user=None, password=None, auth_reply=None, per_conn=None,
log_dir=None). caps are the CAPA lines before and after TLS; capa=False
answers CAPA with -ERR (an RFC 1939-only server); uidl=False answers UIDL
with -ERR and leaves it out of CAPA. tls=CERT makes it pop3s. The default
greeting is "+OK fakepop3 ready <1.2@fake>".

Steps (besides the generic ones of fakebase: Send, Line, Expect, ImplicitTLS,
HugeLine, Close, Reset, Stall, Sleep, Mark, Call, Serve):

    Auth(reply=None, extra=b"")
                  wait for USER+PASS or AUTH (PLAIN, LOGIN, XOAUTH2,
                  OAUTHBEARER); record the credentials; answer REPLY
                  (default: +OK when they match, else -ERR [AUTH]), then EXTRA
    Stls(cert="server", inject=b"", before=b"", reply="+OK Begin TLS negotiation",
         expect=True)
                  wait for STLS; send BEFORE + REPLY + INJECT in one send(),
                  then the TLS handshake with CERT; a REPLY starting with
                  -ERR refuses (no handshake)
    Retr(which=None, drop_after=None, reply=None)
                  wait for RETR (of message WHICH when given); send the
                  first DROP_AFTER bytes of the response body and close; or
                  answer REPLY instead of the message
    Quit(apply=True, reply="+OK Logging out", close=True)
                  wait for QUIT; commit the deletions only when APPLY; REPLY
                  None sends nothing

The default responder answers CAPA, STLS, USER, PASS, AUTH, APOP (-ERR), STAT,
LIST, UIDL, RETR, TOP, DELE, NOOP, RSET, QUIT; anything else gets -ERR and is
recorded in srv.unexpected. Transaction commands before a login get
"-ERR not authenticated".
"""

import base64
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakebase import (GiB, KiB, MiB, Call, Close, Done, Expect, FakeLineServer,  # noqa: E402,F401
                      HugeLine, ImplicitTLS, Line, Mark, Reset, Send, Serve, Sleep, Stall, Step,
                      crlf_line, to_bytes)

__all__ = ["FakePOP3", "PopMessage", "Auth", "Stls", "Retr", "Quit", "Send", "Line",
           "Expect", "ImplicitTLS", "HugeLine", "Close", "Reset", "Stall", "Sleep", "Mark",
           "Call", "Serve", "dot_stuff", "DEFAULT_CAPS", "DEFAULT_CAPS_TLS", "KiB", "MiB",
           "GiB", "default_messages"]

DEFAULT_CAPS = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "USER", "STLS",
                "SASL PLAIN LOGIN"]
DEFAULT_CAPS_TLS = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "USER",
                    "SASL PLAIN LOGIN XOAUTH2 OAUTHBEARER"]

TRANSACTION = {"STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP"}


def dot_stuff(data):
    """RFC 1939 §3: a line starting with "." gets one more; the data ends in CRLF."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    stuffed = re.sub(rb"(^|\n)\.", rb"\1..", data)
    return stuffed + b".\r\n"


class PopMessage:
    _count = 0

    def __init__(self, data, uidl=None, list_size=None, wire=None, chunk=None, pause=0.002):
        PopMessage._count += 1
        self.data = to_bytes(data)
        self.uidl = to_bytes(uidl) if uidl is not None else b"uidl-%d" % PopMessage._count
        self.list_size = list_size
        self.wire = wire
        self.chunk, self.pause = chunk, pause

    @property
    def size(self):
        return len(self.data) if self.list_size is None else self.list_size

    def retr_body(self):
        return self.wire if self.wire is not None else dot_stuff(self.data)

    def __repr__(self):
        return "PopMessage(uidl=%r, %d bytes)" % (self.uidl, len(self.data))


def default_messages(count=3):
    """COUNT small plain-text messages with CRLF line ends and distinct UIDLs."""
    msgs = []
    for i in range(1, count + 1):
        raw = ("From: Alice Example <alice@example.org>\r\n"
               "To: Bob Example <bob@example.org>\r\n"
               "Subject: POP message %d\r\n"
               "Date: Mon, 01 Jan 2024 10:%02d:00 +0000\r\n"
               "Message-ID: <pop%d@fake.example.org>\r\n"
               "\r\n"
               "Body of POP message %d.\r\n" % (i, i, i, i)).encode("ascii")
        msgs.append(PopMessage(raw, uidl=b"fake-uidl-%d" % i))
    return msgs


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------


class Auth(Step):
    def __init__(self, reply=None, extra=b""):
        self.reply, self.extra = reply, to_bytes(extra)

    def run(self, c):
        while True:
            cmd = c.read_command()
            if cmd.name == "PASS" or cmd.name == "AUTH" and len(cmd.text.split()) > 1:
                c.last_cmd = cmd
                c.srv.do_auth(c, cmd, self.reply, self.extra)
                return
            c.srv.respond_default(c, cmd)


class Stls(Step):
    def __init__(self, cert="server", inject=b"", before=b"",
                 reply="+OK Begin TLS negotiation", expect=True):
        self.cert, self.before = cert, to_bytes(before)
        self.inject, self.reply, self.expect = to_bytes(inject), reply, expect

    def run(self, c):
        if self.expect:
            while True:
                cmd = c.read_command()
                if cmd.name == "STLS":
                    break
                c.srv.respond_default(c, cmd)
        c.mark("Stls")
        c.send(self.before + crlf_line(self.reply) + self.inject)
        if self.reply.startswith("+OK"):
            c.start_tls(self.cert)


class Retr(Step):
    def __init__(self, which=None, drop_after=None, reply=None):
        self.which, self.drop_after, self.reply = which, drop_after, reply

    def run(self, c):
        while True:
            cmd = c.read_command()
            words = cmd.text.split()
            if cmd.name == "RETR" and (self.which is None or
                                       (len(words) > 1 and words[1] == str(self.which))):
                break
            c.srv.respond_default(c, cmd)
        c.last_cmd = cmd
        if self.reply is not None:
            c.send(crlf_line(self.reply))
            return
        msg = c.srv.message(c, words[1] if len(words) > 1 else "")
        if msg is None:
            c.send(b"-ERR no such message\r\n")
            return
        body = msg.retr_body()
        head = b"+OK %d octets\r\n" % msg.size
        if self.drop_after is None:
            c.srv.send_retr(c, msg, head + body)
            return
        c.mark("RetrDrop")
        c.send(head + body[:self.drop_after])
        time.sleep(0.05)
        c.close()


class Quit(Step):
    def __init__(self, apply=True, reply="+OK Logging out", close=True):
        self.apply, self.reply, self.close = apply, reply, close

    def run(self, c):
        while True:
            cmd = c.read_command()
            if cmd.name == "QUIT":
                break
            c.srv.respond_default(c, cmd)
        c.mark("Quit")
        if self.apply:
            c.srv.commit(c)
        if self.reply is not None:
            c.send(crlf_line(self.reply))
        if self.close:
            c.close()


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class FakePOP3(FakeLineServer):
    name = "fakepop3"

    def __init__(self, script=(), *, caps=None, caps_tls=None, capa=True, uidl=True,
                 messages=None, auth_reply=None, **kw):
        super().__init__(script, **kw)
        self.caps = list(DEFAULT_CAPS if caps is None else caps)
        self.caps_tls = list(DEFAULT_CAPS_TLS if caps_tls is None else caps_tls)
        self.capa, self.uidl = capa, uidl
        if not uidl:
            self.caps = [c for c in self.caps if c.upper() != "UIDL"]
            self.caps_tls = [c for c in self.caps_tls if c.upper() != "UIDL"]
        self.mailbox = list(default_messages() if messages is None else messages)
        self.deleted = []
        self.auth_reply = auth_reply
        self.retrieved = []  # (conn, PopMessage) for every RETR answered in full

    # -- hooks ------------------------------------------------------------

    def on_connect(self, c):
        with self._lock:
            c.state["view"] = list(self.mailbox)
        c.state["marked"] = set()
        c.state["user"] = None
        c.state["authenticated"] = False

    def greeting_text(self, c):
        return b"+OK fakepop3 ready <1.2@fake>\r\n"

    def line_too_long(self, c):
        c.send(b"-ERR line too long\r\n")

    def current_caps(self, c):
        return self.caps_tls if c.tls else self.caps

    # -- mailbox ----------------------------------------------------------

    def message(self, c, arg):
        """The PopMessage numbered ARG on this connection, or None."""
        try:
            n = int(arg)
        except ValueError:
            return None
        view = c.state["view"]
        if n < 1 or n > len(view) or n in c.state["marked"]:
            return None
        return view[n - 1]

    def commit(self, c):
        """The UPDATE state: the marked messages leave the mailbox."""
        with self._lock:
            for n in sorted(c.state["marked"]):
                msg = c.state["view"][n - 1]
                if msg in self.mailbox:
                    self.mailbox.remove(msg)
                    self.deleted.append(msg)
        c.state["marked"] = set()

    def send_retr(self, c, msg, data):
        if msg.chunk:
            c.send_chunked(data, msg.chunk, msg.pause)
        else:
            c.send(data)
        with self._lock:
            self.retrieved.append((c.id, msg))

    # -- the default responder ------------------------------------------

    def respond_default(self, c, cmd):
        words = cmd.text.split(" ")
        n = cmd.name
        args = words[1:]
        if n == "CAPA":
            if not self.capa:
                c.send(b"-ERR unknown command\r\n")
                return
            c.send(b"+OK Capability list follows\r\n" +
                   b"".join(crlf_line(x) for x in self.current_caps(c)) + b".\r\n")
        elif n == "STLS":
            if c.tls or "STLS" not in [x.upper() for x in self.current_caps(c)]:
                c.send(b"-ERR STLS not available\r\n")
            else:
                Stls(expect=False).run(c)
        elif n == "QUIT":
            c.mark("Quit")
            self.commit(c)
            c.send(b"+OK Logging out\r\n")
            c.close()
        elif n == "USER":
            c.state["user"] = " ".join(args)
            c.send(b"+OK\r\n")
        elif n in ("PASS", "AUTH"):
            if n == "AUTH" and not args:
                mechs = [x for x in self.current_caps(c) if x.upper().startswith("SASL ")]
                names = mechs[0].split()[1:] if mechs else []
                c.send(b"+OK\r\n" + b"".join(crlf_line(m) for m in names) + b".\r\n")
                return
            self.do_auth(c, cmd, None, b"")
        elif n == "APOP":
            c.send(b"-ERR APOP not supported\r\n")
        elif n in TRANSACTION and not c.state["authenticated"]:
            self._record_unexpected(c, cmd)
            c.send(b"-ERR not authenticated\r\n")
        elif n == "STAT":
            live = self._live(c)
            c.send(b"+OK %d %d\r\n" % (len(live), sum(m.size for _, m in live)))
        elif n == "LIST":
            self._listing(c, args, lambda m: b"%d" % m.size)
        elif n == "UIDL":
            if not self.uidl:
                self._record_unexpected(c, cmd)
                c.send(b"-ERR unknown command\r\n")
                return
            self._listing(c, args, lambda m: m.uidl)
        elif n == "RETR":
            msg = self.message(c, args[0] if args else "")
            if msg is None:
                c.send(b"-ERR no such message\r\n")
                return
            self.send_retr(c, msg, b"+OK %d octets\r\n" % msg.size + msg.retr_body())
        elif n == "TOP":
            msg = self.message(c, args[0] if args else "")
            try:
                lines = int(args[1])
            except (IndexError, ValueError):
                msg = None
            if msg is None:
                c.send(b"-ERR no such message\r\n")
                return
            head, sep, body = msg.data.partition(b"\r\n\r\n")
            part = head + sep + b"".join(l + b"\r\n" for l in body.split(b"\r\n")[:lines]
                                        if sep)
            c.send(b"+OK\r\n" + dot_stuff(part))
        elif n == "DELE":
            msg = self.message(c, args[0] if args else "")
            if msg is None:
                c.send(b"-ERR no such message\r\n")
                return
            c.state["marked"].add(int(args[0]))
            c.send(b"+OK marked\r\n")
        elif n == "NOOP":
            c.send(b"+OK\r\n")
        elif n == "RSET":
            c.state["marked"] = set()
            c.send(b"+OK\r\n")
        else:
            self._record_unexpected(c, cmd)
            c.send(b"-ERR unknown command\r\n")

    def _live(self, c):
        return [(i, m) for i, m in enumerate(c.state["view"], 1) if i not in c.state["marked"]]

    def _listing(self, c, args, value):
        if args and args[0]:
            msg = self.message(c, args[0])
            if msg is None:
                c.send(b"-ERR no such message\r\n")
            else:
                c.send(b"+OK %s %s\r\n" % (args[0].encode("latin-1"), value(msg)))
            return
        c.send(b"+OK\r\n" + b"".join(b"%d %s\r\n" % (i, value(m)) for i, m in self._live(c))
               + b".\r\n")

    def _continuation(self, c, prompt=b""):
        """Sends "+ PROMPT", reads one base64 line; None when the client cancels ("*")."""
        c.send(b"+ " + prompt + b"\r\n")
        line = c.read_line()
        if line.strip() == b"*":
            return None
        try:
            return base64.b64decode(line, validate=True)
        except ValueError:
            return b""

    def do_auth(self, c, cmd, reply, extra):
        """USER/PASS (RFC 1939 §7) or AUTH (RFC 5034) with PLAIN, LOGIN, XOAUTH2,
        OAUTHBEARER."""
        words = cmd.text.split(" ")
        user = password = None
        if cmd.name == "PASS":
            mech = "USER/PASS"
            user = c.state["user"]
            password = cmd.text[5:] if len(cmd.text) > 5 else ""
        else:
            mech = words[1].upper() if len(words) > 1 else ""
            ir = words[2] if len(words) > 2 else None
            if mech in ("PLAIN", "XOAUTH2", "OAUTHBEARER"):
                if ir is None:
                    resp = self._continuation(c)
                elif ir == "=":
                    resp = b""
                else:
                    try:
                        resp = base64.b64decode(ir, validate=True)
                    except ValueError:
                        resp = b""
                if resp is None:
                    c.send(b"-ERR authentication canceled\r\n")
                    return
                user, password = _sasl_fields(mech, resp)
            elif mech == "LOGIN":
                u = self._continuation(c, base64.b64encode(b"Username:"))
                p = self._continuation(c, base64.b64encode(b"Password:")) if u is not None \
                    else None
                if u is None or p is None:
                    c.send(b"-ERR authentication canceled\r\n")
                    return
                user, password = u.decode("utf-8", "replace"), p.decode("utf-8", "replace")
            else:
                c.send(b"-ERR [AUTH] unsupported mechanism\r\n")
                return
            mech = "AUTH " + mech
        self._record_auth(c, mech, user, password)
        if reply is None:
            reply = self.auth_reply
        if reply is None:
            good = ((self.user is None or user == self.user) and
                    (self.password is None or password == self.password))
            reply = "+OK Logged in." if good else "-ERR [AUTH] Authentication failed."
        if reply.startswith("+OK"):
            c.state["authenticated"] = True
            # The maildrop is locked and numbered at login (RFC 1939 §4).
            with self._lock:
                c.state["view"] = list(self.mailbox)
        c.send(crlf_line(reply) + extra)


def _sasl_fields(mech, resp):
    """(user, password or token) from a PLAIN (RFC 4616), XOAUTH2 or OAUTHBEARER
    (RFC 7628) client response."""
    if mech == "PLAIN":
        fields = resp.split(b"\0")
        if len(fields) == 3:
            return fields[1].decode("utf-8", "replace"), fields[2].decode("utf-8", "replace")
        return None, None
    text = resp.decode("utf-8", "replace")
    user = token = None
    if mech == "XOAUTH2":
        for part in text.split("\x01"):
            if part.startswith("user="):
                user = part[5:]
            elif part.lower().startswith("auth=bearer "):
                token = part[12:]
        return user, token
    head, _, rest = text.partition("\x01")
    m = re.search(r"(?:^|,)a=([^,]*)", head)
    if m:
        user = m.group(1).replace("=2C", ",").replace("=3D", "=")
    for part in rest.split("\x01"):
        if part.lower().startswith("auth=bearer "):
            token = part[12:]
    return user, token


def main(argv):
    import argparse
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    ap = argparse.ArgumentParser(description="Serve three fake POP3 messages until interrupted.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", action="store_true", help="implicit TLS (pop3s)")
    ap.add_argument("--certs", help="directory for the test certificates")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--log-dir")
    a = ap.parse_args(argv[1:])
    certs = None
    if a.certs:
        import certs as certs_mod
        certs = certs_mod.make_certs(a.certs)
    srv = FakePOP3([], certs=certs, tls="server" if a.tls else None, user=a.user,
                   password=a.password, log_dir=a.log_dir, port=a.port)
    srv.start()
    print("PORT=%d" % srv.port, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
