#!/usr/bin/python3
"""A scriptable fake SMTP submission server for the adversarial tests (TESTMATRIX
T1, T3, S1, S2, S3, I3, F3 for SMTP).

Layer: tests/peers. It does on purpose what a real server never does: leave
STARTTLS out of EHLO or refuse it, inject bytes after the "220 Ready to start
TLS", answer 421 at any step, 451 or 554 after DATA, drop the connection
after the final "." without a reply, send a 10 MB reply line, a multi-line
reply that never ends, refuse some recipients and not others. It records
every transaction byte for byte, so a test can check what the client
transmitted (CRLF line ends, dot-stuffing, no Bcc header, MAIL FROM
parameters). Standard library only; built on fakebase.py (the approach and
logging of fakeimap.py).

Use
---
    from fakesmtp import FakeSMTP, Data, Fail, StartTLS, ...

    with FakeSMTP([StartTLS(), Data(reply="451 4.3.0 try again later")],
                  certs=certs, user="tester", password="pw") as srv:
        run tern against 127.0.0.1:srv.port ...
        srv.wait_idle()
        srv.messages[0].data, srv.messages[0].rcpts ...

The server: FakeSMTP(script=(), *, certs, tls=None, greeting=None,
ehlo=DEFAULT_EHLO, ehlo_tls=DEFAULT_EHLO_TLS, size_limit=None,
rcpt_replies=None, data_replies=None, require_auth=True, user=None,
password=None, auth_reply=None, per_conn=None, log_dir=None).

  ehlo / ehlo_tls   the EHLO keywords before and after TLS (an implicit-TLS
                    server, tls=CERT, uses ehlo_tls from the start)
  size_limit        refuse MAIL FROM with SIZE=n above it (552), and a DATA
                    larger than it (552 after the data)
  rcpt_replies      {address: reply line} for RCPT TO (default "250 2.1.5 Ok")
  data_replies      {n: reply line} for the reply after the n-th DATA (0 for
                    the first on this server), None for no reply and a close
  require_auth      MAIL before a successful AUTH gets 530
  data_delay        seconds to wait before the reply to the end of DATA (a slow
                    server, so that a test can kill the client mid-transaction)

The default greeting is "220 fakesmtp ESMTP ready".

Steps (besides the generic ones of fakebase: Send, Line, Expect, ImplicitTLS,
HugeLine, Close, Reset, Stall, Sleep, Mark, Call, Serve):

    Auth(reply=None, extra=b"")
                  wait for AUTH (PLAIN, LOGIN, XOAUTH2, OAUTHBEARER), record
                  the credentials, answer REPLY (default: 235 when they match,
                  else 535), then EXTRA
    StartTLS(cert="server", inject=b"", before=b"",
             reply="220 2.0.0 Ready to start TLS", expect=True)
                  wait for STARTTLS; send BEFORE + REPLY + INJECT in one
                  send(); then the TLS handshake (not when REPLY is not 220)
    Fail(verb, reply="421 4.3.2 Service shutting down", close=True)
                  wait for the command VERB (EHLO, AUTH, MAIL, RCPT, DATA,
                  RSET, QUIT, ...), answer REPLY, close
    Data(reply=DEFAULT, go_ahead="354 End data with <CR><LF>.<CR><LF>",
         drop_after=None, close=False)
                  wait for DATA; send GO_AHEAD; read the message (or, with
                  DROP_AFTER, close once that many bytes of it arrived);
                  record it; send REPLY (None: no reply at all) and close
                  when CLOSE (a drop after "." with no reply: reply=None,
                  close=True)

The default responder answers EHLO, HELO, STARTTLS, AUTH, MAIL, RCPT, DATA,
RSET, NOOP, VRFY, QUIT; anything else gets 502 and is recorded in
srv.unexpected.

What the client transmitted: srv.messages, one Transaction per DATA whose
data arrived in full: conn, tls, mail_from, mail_params (dict, upper-case
keys), rcpts (accepted), rejected (refused addresses), raw (the bytes between
the 354 and the terminator, exactly as sent), data (raw with the
dot-stuffing undone, RFC 5321 §4.5.2), reply (what the server answered).
"""

import base64
import os
import re
import sys
import time
from collections import namedtuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakebase import (GiB, KiB, MiB, Call, Close, Done, Expect, FakeLineServer,  # noqa: E402,F401
                      HugeLine, ImplicitTLS, Line, Mark, Reset, Send, Serve, Sleep, Stall, Step,
                      crlf_line, to_bytes)
from fakepop3 import _sasl_fields  # noqa: E402

__all__ = ["FakeSMTP", "Transaction", "Auth", "StartTLS", "Fail", "Data", "Send", "Line",
           "Expect", "ImplicitTLS", "HugeLine", "Close", "Reset", "Stall", "Sleep", "Mark",
           "Call", "Serve", "unstuff", "DEFAULT_EHLO", "DEFAULT_EHLO_TLS", "KiB", "MiB", "GiB"]

DEFAULT_EHLO = ["PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "DSN",
                "ENHANCEDSTATUSCODES", "STARTTLS"]
DEFAULT_EHLO_TLS = ["PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "DSN",
                    "ENHANCEDSTATUSCODES", "AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER"]

# The largest message the fake reads.
DATA_MAX = 64 * MiB
_DEFAULT = object()

Transaction = namedtuple("Transaction",
                         "conn tls mail_from mail_params rcpts rejected raw data reply")


def unstuff(raw):
    """Undoes RFC 5321 §4.5.2 transparency: a leading "." of a line is removed."""
    return re.sub(rb"(^|\n)\.", rb"\1", raw)


def _path_and_params(text):
    """("addr", {PARAM: value}) of "FROM:<addr> SIZE=10 BODY=8BITMIME"."""
    m = re.match(r"^\s*(?:FROM|TO)\s*:\s*<([^>]*)>\s*(.*)$", text, re.I | re.S)
    if not m:
        return None, {}
    params = {}
    for word in m.group(2).split():
        key, _, value = word.partition("=")
        params[key.upper()] = value if _ else True
    return m.group(1), params


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------


class Auth(Step):
    def __init__(self, reply=None, extra=b""):
        self.reply, self.extra = reply, to_bytes(extra)

    def run(self, c):
        while True:
            cmd = c.read_command()
            if cmd.name == "AUTH":
                c.last_cmd = cmd
                c.srv.do_auth(c, cmd, self.reply, self.extra)
                return
            c.srv.respond_default(c, cmd)


class StartTLS(Step):
    def __init__(self, cert="server", inject=b"", before=b"",
                 reply="220 2.0.0 Ready to start TLS", expect=True):
        self.cert, self.before = cert, to_bytes(before)
        self.inject, self.reply, self.expect = to_bytes(inject), reply, expect

    def run(self, c):
        if self.expect:
            while True:
                cmd = c.read_command()
                if cmd.name == "STARTTLS":
                    break
                c.srv.respond_default(c, cmd)
        c.mark("StartTLS")
        c.send(self.before + crlf_line(self.reply) + self.inject)
        if self.reply.startswith("220"):
            c.start_tls(self.cert)


class Fail(Step):
    def __init__(self, verb, reply="421 4.3.2 Service shutting down", close=True):
        self.verb, self.reply, self.close = verb.upper(), reply, close

    def run(self, c):
        while True:
            cmd = c.read_command()
            if cmd.name == self.verb:
                break
            c.srv.respond_default(c, cmd)
        c.mark("Fail")
        c.send(crlf_line(self.reply))
        if self.close:
            time.sleep(0.05)
            c.close()


class Data(Step):
    def __init__(self, reply=_DEFAULT, go_ahead="354 End data with <CR><LF>.<CR><LF>",
                 drop_after=None, close=False):
        self.reply, self.go_ahead = reply, go_ahead
        self.drop_after, self.close = drop_after, close

    def run(self, c):
        while True:
            cmd = c.read_command()
            if cmd.name == "DATA":
                break
            c.srv.respond_default(c, cmd)
        c.srv.do_data(c, cmd, reply=self.reply, go_ahead=self.go_ahead,
                      drop_after=self.drop_after, close=self.close)


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class FakeSMTP(FakeLineServer):
    name = "fakesmtp"

    def __init__(self, script=(), *, ehlo=None, ehlo_tls=None, size_limit=None,
                 rcpt_replies=None, data_replies=None, require_auth=True, auth_reply=None,
                 data_delay=0, **kw):
        super().__init__(script, **kw)
        self.ehlo = list(DEFAULT_EHLO if ehlo is None else ehlo)
        self.ehlo_tls = list(DEFAULT_EHLO_TLS if ehlo_tls is None else ehlo_tls)
        self.size_limit = size_limit
        self.rcpt_replies = dict(rcpt_replies or {})
        self.data_replies = dict(data_replies or {})
        self.require_auth = require_auth
        self.auth_reply = auth_reply
        self.data_delay = data_delay
        self.messages = []
        self.data_count = 0

    # -- hooks ------------------------------------------------------------

    def on_connect(self, c):
        c.state.update(helo=None, authenticated=False)
        self._reset(c)

    def on_tls(self, c):
        # RFC 3207 §4.2: the session starts over; the client must send EHLO again.
        c.state["helo"] = None
        c.state["authenticated"] = False
        self._reset(c)

    def greeting_text(self, c):
        return b"220 fakesmtp ESMTP ready\r\n"

    def line_too_long(self, c):
        c.send(b"500 5.5.0 line too long\r\n")

    def keywords(self, c):
        return self.ehlo_tls if c.tls else self.ehlo

    def _reset(self, c):
        c.state.update(mail_from=None, mail_params={}, rcpts=[], rejected=[])

    # -- the default responder ------------------------------------------

    def respond_default(self, c, cmd):
        n = cmd.name
        rest = cmd.text[len(n):].strip()
        if n == "EHLO":
            c.state["helo"] = rest
            self._reset(c)
            kws = ["fakesmtp greets %s" % (rest or "you")] + self.keywords(c)
            c.send(b"".join(crlf_line("250%s%s" % ("-" if i < len(kws) - 1 else " ", k))
                            for i, k in enumerate(kws)))
        elif n == "HELO":
            c.state["helo"] = rest
            self._reset(c)
            c.send(b"250 fakesmtp\r\n")
        elif n == "STARTTLS":
            if c.tls or "STARTTLS" not in [k.upper() for k in self.keywords(c)]:
                c.send(b"502 5.5.1 STARTTLS not available\r\n")
            else:
                StartTLS(expect=False).run(c)
        elif n == "AUTH":
            if c.state["authenticated"]:
                c.send(b"503 5.5.1 already authenticated\r\n")
            else:
                self.do_auth(c, cmd, None, b"")
        elif n == "MAIL":
            if self.require_auth and not c.state["authenticated"]:
                self._record_unexpected(c, cmd)
                c.send(b"530 5.7.0 Authentication required\r\n")
                return
            if c.state["mail_from"] is not None:
                c.send(b"503 5.5.1 nested MAIL command\r\n")
                return
            addr, params = _path_and_params(rest)
            if addr is None:
                c.send(b"501 5.5.4 syntax: MAIL FROM:<address>\r\n")
                return
            size = params.get("SIZE")
            if self.size_limit is not None and isinstance(size, str) and size.isdigit() \
                    and int(size) > self.size_limit:
                c.send(b"552 5.3.4 Message size exceeds fixed limit\r\n")
                return
            c.state.update(mail_from=addr, mail_params=params, rcpts=[], rejected=[])
            c.send(b"250 2.1.0 Ok\r\n")
        elif n == "RCPT":
            if c.state["mail_from"] is None:
                c.send(b"503 5.5.1 need MAIL command\r\n")
                return
            addr, params = _path_and_params(rest)
            if addr is None:
                c.send(b"501 5.5.4 syntax: RCPT TO:<address>\r\n")
                return
            reply = self.rcpt_replies.get(addr, "250 2.1.5 Ok")
            if reply.startswith("2"):
                c.state["rcpts"].append(addr)
            else:
                c.state["rejected"].append(addr)
            c.send(crlf_line(reply))
            if reply.startswith("421"):
                c.close()
        elif n == "DATA":
            self.do_data(c, cmd)
        elif n == "RSET":
            self._reset(c)
            c.send(b"250 2.0.0 Ok\r\n")
        elif n == "NOOP":
            c.send(b"250 2.0.0 Ok\r\n")
        elif n == "VRFY":
            c.send(b"252 2.0.0 Cannot VRFY\r\n")
        elif n == "QUIT":
            c.mark("Quit")
            c.send(b"221 2.0.0 Bye\r\n")
            c.close()
        else:
            self._record_unexpected(c, cmd)
            c.send(b"502 5.5.2 Error: command not recognized\r\n")

    def do_data(self, c, cmd, reply=_DEFAULT, go_ahead="354 End data with <CR><LF>.<CR><LF>",
                drop_after=None, close=False):
        """DATA (RFC 5321 §4.1.1.4): the go-ahead, the message up to CRLF.CRLF, a reply."""
        if c.state["mail_from"] is None:
            c.send(b"503 5.5.1 need MAIL command\r\n")
            return
        if not c.state["rcpts"]:
            c.send(b"554 5.5.1 Error: no valid recipients\r\n")
            return
        c.send(crlf_line(go_ahead))
        if not go_ahead.startswith("354"):
            if close:
                c.close()
            return
        raw = self._read_data(c, drop_after)
        with self._lock:
            index = self.data_count
            self.data_count += 1
        if reply is _DEFAULT:
            reply = self.data_replies.get(index, _DEFAULT)
        if reply is _DEFAULT:
            if self.size_limit is not None and len(raw) > self.size_limit:
                reply = "552 5.3.4 Message size exceeds fixed limit"
            else:
                reply = "250 2.0.0 Ok: queued as FAKE%04d" % index
        tx = Transaction(c.id, c.tls, c.state["mail_from"], dict(c.state["mail_params"]),
                         list(c.state["rcpts"]), list(c.state["rejected"]), raw, unstuff(raw),
                         reply)
        with self._lock:
            self.messages.append(tx)
        c.mark("DataEnd")
        self._reset(c)
        if self.data_delay:
            Sleep(self.data_delay).run(c)
        if reply is not None:
            c.send(crlf_line(reply))
        if reply is None or close:
            time.sleep(0.05)
            c.close()

    def _read_data(self, c, drop_after):
        """The bytes up to (not including) CRLF "." CRLF; the terminator is consumed."""
        start = 0
        while True:
            if drop_after is not None and len(c.buf) >= drop_after:
                c.mark("DataDrop")
                c.close()
            if c.buf.startswith(b".\r\n"):
                del c.buf[:3]
                return b""
            i = c.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                raw = bytes(c.buf[:i + 2])
                del c.buf[:i + 5]
                return raw
            if len(c.buf) > DATA_MAX:
                c.send(b"552 5.3.4 too much data\r\n")
                c.close()
            start = max(0, len(c.buf) - 4)
            c.recv_some()

    def _continuation(self, c, prompt=b""):
        c.send(b"334 " + prompt + b"\r\n")
        line = c.read_line()
        if line.strip() == b"*":
            return None
        try:
            return base64.b64decode(line, validate=True)
        except ValueError:
            return b""

    def do_auth(self, c, cmd, reply, extra):
        """AUTH (RFC 4954) with PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER (RFC 7628)."""
        words = cmd.text.split(" ")
        mech = words[1].upper() if len(words) > 1 else ""
        ir = words[2] if len(words) > 2 else None
        user = password = None
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
                c.send(b"501 5.7.0 Authentication aborted\r\n")
                return
            user, password = _sasl_fields(mech, resp)
        elif mech == "LOGIN":
            if ir is not None:
                try:
                    u = base64.b64decode(ir, validate=True)
                except ValueError:
                    u = b""
            else:
                u = self._continuation(c, base64.b64encode(b"Username:"))
            p = self._continuation(c, base64.b64encode(b"Password:")) if u is not None else None
            if u is None or p is None:
                c.send(b"501 5.7.0 Authentication aborted\r\n")
                return
            user, password = u.decode("utf-8", "replace"), p.decode("utf-8", "replace")
        else:
            c.send(b"504 5.5.4 Unrecognized authentication type\r\n")
            return
        self._record_auth(c, "AUTH " + mech, user, password)
        if reply is None:
            reply = self.auth_reply
        if reply is None:
            good = ((self.user is None or user == self.user) and
                    (self.password is None or password == self.password))
            reply = ("235 2.7.0 Authentication successful" if good
                     else "535 5.7.8 Authentication credentials invalid")
        if reply.startswith("235"):
            c.state["authenticated"] = True
        c.send(crlf_line(reply) + extra)


def main(argv):
    import argparse
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    ap = argparse.ArgumentParser(description="Accept mail and log it until interrupted.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", action="store_true", help="implicit TLS (smtps)")
    ap.add_argument("--certs", help="directory for the test certificates")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--log-dir")
    a = ap.parse_args(argv[1:])
    certs = None
    if a.certs:
        import certs as certs_mod
        certs = certs_mod.make_certs(a.certs)
    srv = FakeSMTP([], certs=certs, tls="server" if a.tls else None, user=a.user,
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
