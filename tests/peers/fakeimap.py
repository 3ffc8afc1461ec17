#!/usr/bin/python3
"""A scriptable fake IMAP server for the adversarial tests (TESTMATRIX T1-T7, I1-I6, F3).

Layer: tests/peers. It does on purpose what a real server never does: strip
STARTTLS, inject bytes after the TLS go-ahead, send a 10 MB line, announce a
4 GiB literal, nest a BODYSTRUCTURE 100,000 deep, drop the connection in the
middle of a FETCH. Standard library only (socket, ssl, threading).

Use
---
    from fakeimap import FakeIMAP, Expect, Tagged, Send, StartTLS, ...

    with FakeIMAP([Auth(), Expect(r"^LIST\\b"), HugeLine()],
                  tls="server", certs=certs, password="pw") as srv:
        run tern against 127.0.0.1:srv.port ...
        srv.wait_idle()
        assert b"LOGIN" not in srv.received(tls=False)

The server listens on a free 127.0.0.1 port (srv.port) from start() (or
__enter__) until stop() (or __exit__), which closes every socket and joins
every thread. Each accepted connection runs, in its own thread:

 1. implicit TLS when the server was made with tls=CERT (imaps);
 2. the greeting: by default "* OK [CAPABILITY <caps>] fakeimap ready";
    greeting="..." sends that line instead (CRLF added when missing),
    greeting=False sends nothing;
 3. the script: a list of steps, run in order (below);
 4. when the script ends without closing, the default responder (Serve) until
    the client logs out or closes.

The script is a Python list of step objects. Steps that read commands (Expect,
Auth, StartTLS) hand every command they are not waiting for to the default
responder, so a script only spells out the interesting part whatever
CAPABILITY, ID, ENABLE, NAMESPACE, NOOP, LOGIN, LIST, SELECT ... the client
sends around it. Steps:

    Send(data)                 raw bytes (str is encoded as UTF-8), nothing added
    Line(text)                 one line, CRLF added
    Tagged(text, tag=None, offset=0)
                               "<tag> <text>\\r\\n" with the tag of the last command
                               received (the one the last Expect, Auth or
                               StartTLS matched), or TAG; OFFSET shifts the
                               tag's trailing number (offset=1 is the tag the
                               client has not sent yet: A0003 -> A0004)
    Expect(regex, reply=None, untagged=())
                               read commands until one matches REGEX (searched in
                               the command without its tag, case-insensitive,
                               literals inlined); record it, make its tag the
                               last tag, send the UNTAGGED lines then the tagged
                               REPLY when given
    Auth(reply=None, extra=b"")
                               expect LOGIN or AUTHENTICATE (PLAIN, LOGIN; SASL
                               continuations included), record the credentials,
                               answer REPLY (default: OK when they match the
                               server's user/password, else NO
                               [AUTHENTICATIONFAILED]), then EXTRA in the same
                               send
    StartTLS(cert="server", inject=b"", before=b"", reply="OK Begin TLS negotiation now",
             expect=True)
                               expect STARTTLS; send BEFORE + the tagged REPLY +
                               INJECT in one send() (one TCP segment), then do
                               the server side of the TLS handshake with CERT;
                               INJECT may be a function of the STARTTLS tag
                               returning the bytes (to forge the next tags)
    ImplicitTLS(cert="server") the TLS handshake now (normally tls=CERT does it)
    SetCaps(caps)              the capabilities the responder announces from now on
    HugeLine(size=10 MiB, prefix=b"* OK ", chunk=64 KiB)
                               stream SIZE bytes without any CRLF
    ShortLiteral(announce=4096, send=100, prefix=b"* 1 FETCH (UID 1 BODY[] ")
                               announce a literal of ANNOUNCE bytes, send SEND of
                               them, then close
    HugeLiteral(size=4 GiB, prefix=b"* 1 FETCH (UID 1 BODY[] ", stream=16 MiB)
                               announce {SIZE}, then stream up to STREAM bytes of
                               it (while the client keeps reading), then stall
    DeepNesting(depth=100000, prefix=b"* 1 FETCH (UID 1 BODYSTRUCTURE ")
                               a multipart BODYSTRUCTURE nested DEPTH deep
    Bye(text="Server shutting down")
                               "* BYE <text>\\r\\n"
    Close()                    close the connection (FIN)
    Reset()                    close with SO_LINGER 0 (RST)
    Stall(seconds=None)        send nothing; read and log until the client
                               closes, the server stops or SECONDS pass
    Sleep(seconds)             pause, reading nothing
    Mark(name)                 put a named mark in the command log
    Serve()                    the default responder until LOGOUT or EOF

The hostile steps (HugeLine, ShortLiteral, HugeLiteral, DeepNesting, Bye,
Close, Reset, Stall) also put a mark named after the step ("HugeLine", ...),
so a test can ask what the client sent after the fault: commands_after("Bye").

The default responder answers CAPABILITY, NOOP, CHECK, ID, ENABLE, NAMESPACE,
LOGOUT, STARTTLS (when announced), LOGIN, AUTHENTICATE PLAIN/LOGIN, LIST,
LSUB, STATUS, SELECT, EXAMINE, SEARCH, FETCH (and their UID forms), CLOSE,
UNSELECT with plausible replies over a tiny mailbox (FOLDERS, MESSAGES), and
BAD to anything else (recorded in srv.unexpected). Commands that need the
authenticated state get "NO [UNAVAILABLE] not authenticated" before a
successful login (or a PREAUTH greeting).

What the client sent
--------------------
Every byte received from the client is logged: received(tls=None|False|True)
gives them (before the TLS handshake, after it, or all; TLS bytes decrypted).
commands() lists the parsed commands (conn, tls, tag, name, text, seq);
auth_attempts the credentials seen (with the phase they came in);
handshakes the TLS handshakes and their outcome; errors any fault of the
fake itself (a test should assert it is empty). With log_dir=DIR the server
also writes DIR/client.bin (the raw bytes received, all connections in
order) and DIR/transcript.txt (both directions, long sends abbreviated).

Run alone ("python3 fakeimap.py [--tls] [--certs DIR] [--port N]") it serves
the default mailbox until interrupted, for poking at it with a client.
"""

import base64
import os
import re
import socket
import ssl
import struct
import sys
import threading
import time
from collections import namedtuple

__all__ = ["FakeIMAP", "Step", "Send", "Line", "Tagged", "Expect", "Auth", "StartTLS",
           "ImplicitTLS", "SetCaps", "HugeLine", "ShortLiteral", "HugeLiteral", "DeepNesting",
           "Bye", "Close", "Reset", "Stall", "Sleep", "Mark", "Serve", "shift_tag",
           "default_messages", "DEFAULT_CAPS", "DEFAULT_CAPS_TLS", "DEFAULT_FOLDERS",
           "KiB", "MiB", "GiB"]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

DEFAULT_CAPS = "IMAP4rev1 ID ENABLE NAMESPACE LITERAL+ STARTTLS LOGINDISABLED"
DEFAULT_CAPS_TLS = "IMAP4rev1 ID ENABLE NAMESPACE LITERAL+ AUTH=PLAIN AUTH=LOGIN"

# How long one blocking socket call waits before checking for stop().
POLL = 0.2
# The longest command line the fake accepts from a client, and its literals.
CMD_LINE_MAX = 1 * MiB
CMD_LITERAL_MAX = 64 * MiB
# How long a TLS handshake may take.
HANDSHAKE_TIMEOUT = 10.0

Command = namedtuple("Command", "conn tls tag name text seq")
Handshake = namedtuple("Handshake", "conn cert ok error")
AuthAttempt = namedtuple("AuthAttempt", "conn tls mechanism user password")
MarkEntry = namedtuple("MarkEntry", "conn name seq")


class _Done(Exception):
    """The connection is over: EOF, a socket error, a close or stop()."""


def _b(data):
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


def _line(text):
    data = _b(text)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def shift_tag(tag, offset):
    """A0003 + 1 -> A0004, keeping the width of the number."""
    if not offset:
        return tag
    m = re.match(r"^(.*?)(\d+)$", tag)
    if not m:
        return tag + str(offset)
    num = int(m.group(2)) + offset
    return m.group(1) + str(max(num, 0)).zfill(len(m.group(2)))


# ---------------------------------------------------------------------------
# Script steps
# ---------------------------------------------------------------------------


class Step:
    """One action of a script; run(conn) performs it or raises _Done."""

    def run(self, c):
        raise NotImplementedError

    def __repr__(self):
        return type(self).__name__


class Send(Step):
    def __init__(self, data):
        self.data = _b(data)

    def run(self, c):
        c.send(self.data)


class Line(Step):
    def __init__(self, text):
        self.data = _line(text)

    def run(self, c):
        c.send(self.data)


class Tagged(Step):
    def __init__(self, text, tag=None, offset=0):
        self.text, self.tag, self.offset = text, tag, offset

    def run(self, c):
        tag = self.tag if self.tag is not None else (c.last_tag or "*")
        c.send(_line("%s %s" % (shift_tag(tag, self.offset), self.text)))


class Expect(Step):
    def __init__(self, regex, reply=None, untagged=()):
        self.rx = re.compile(regex, re.I | re.S)
        self.reply = reply
        self.untagged = [untagged] if isinstance(untagged, (str, bytes)) else list(untagged)

    def run(self, c):
        while True:
            cmd = c.read_command()
            if self.rx.search(cmd.text):
                c.last_tag = cmd.tag
                data = b"".join(_line(u) for u in self.untagged)
                if self.reply is not None:
                    data += _line("%s %s" % (cmd.tag, self.reply))
                if data:
                    c.send(data)
                return
            c.respond_default(cmd)

    def __repr__(self):
        return "Expect(%r)" % self.rx.pattern


class Auth(Step):
    def __init__(self, reply=None, extra=b""):
        self.reply, self.extra = reply, _b(extra)

    def run(self, c):
        while True:
            cmd = c.read_command()
            if cmd.name in ("LOGIN", "AUTHENTICATE"):
                c.last_tag = cmd.tag
                c.do_auth(cmd, self.reply, self.extra)
                return
            c.respond_default(cmd)


class StartTLS(Step):
    def __init__(self, cert="server", inject=b"", before=b"",
                 reply="OK Begin TLS negotiation now", expect=True):
        self.cert, self.before = cert, _b(before)
        self.inject = inject if callable(inject) else _b(inject)
        self.reply, self.expect = reply, expect

    def run(self, c):
        if self.expect:
            while True:
                cmd = c.read_command()
                if cmd.name == "STARTTLS":
                    c.last_tag = cmd.tag
                    break
                c.respond_default(cmd)
        c.mark("StartTLS")
        tag = c.last_tag or "*"
        inject = _b(self.inject(tag)) if callable(self.inject) else self.inject
        c.send(self.before + _line("%s %s" % (tag, self.reply)) + inject)
        c.start_tls(self.cert)


class ImplicitTLS(Step):
    def __init__(self, cert="server"):
        self.cert = cert

    def run(self, c):
        c.start_tls(self.cert)


class SetCaps(Step):
    def __init__(self, caps):
        self.caps = caps

    def run(self, c):
        c.caps = self.caps


class HugeLine(Step):
    def __init__(self, size=10 * MiB, prefix=b"* OK ", chunk=64 * KiB):
        self.size, self.prefix, self.chunk = size, _b(prefix), chunk

    def run(self, c):
        c.mark("HugeLine")
        c.send(self.prefix)
        block = b"x" * self.chunk
        left = self.size - len(self.prefix)
        while left > 0:
            n = min(left, self.chunk)
            c.send(block[:n], log=False)
            left -= n
        c.note("S: [%d bytes without CRLF]" % self.size)


class ShortLiteral(Step):
    def __init__(self, announce=4096, send=100, prefix=b"* 1 FETCH (UID 1 BODY[] "):
        self.announce, self.count, self.prefix = announce, send, _b(prefix)

    def run(self, c):
        c.mark("ShortLiteral")
        c.send(self.prefix + b"{%d}\r\n" % self.announce + b"y" * self.count)
        time.sleep(0.1)
        c.close()


class HugeLiteral(Step):
    def __init__(self, size=4 * GiB, prefix=b"* 1 FETCH (UID 1 BODY[] ", stream=16 * MiB):
        self.size, self.prefix, self.stream = size, _b(prefix), stream

    def run(self, c):
        c.mark("HugeLiteral")
        c.send(self.prefix + b"{%d}\r\n" % self.size)
        block = b"z" * (64 * KiB)
        left = min(self.stream, self.size)
        while left > 0:
            n = min(left, len(block))
            c.send(block[:n], log=False)
            left -= n
        c.note("S: [%d literal bytes streamed]" % min(self.stream, self.size))
        Stall().run(c)


class DeepNesting(Step):
    INNER = b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 1 1)'

    def __init__(self, depth=100000, prefix=b"* 1 FETCH (UID 1 BODYSTRUCTURE "):
        self.depth, self.prefix = depth, _b(prefix)

    def run(self, c):
        c.mark("DeepNesting")
        data = (self.prefix + b"(" * self.depth + self.INNER + b' "MIXED")' * self.depth
                + b")\r\n")
        c.send(data, log=False)
        c.note("S: %s[BODYSTRUCTURE nested %d deep, %d bytes]" %
               (self.prefix.decode("latin-1"), self.depth, len(data)))


class Bye(Step):
    def __init__(self, text="Server shutting down"):
        self.text = text

    def run(self, c):
        c.mark("Bye")
        c.send(_line("* BYE " + self.text))


class Close(Step):
    def run(self, c):
        c.mark("Close")
        c.close()


class Reset(Step):
    def run(self, c):
        c.mark("Reset")
        c.close(reset=True)


class Stall(Step):
    def __init__(self, seconds=None):
        self.seconds = seconds

    def run(self, c):
        c.mark("Stall")
        deadline = None if self.seconds is None else time.monotonic() + self.seconds
        while deadline is None or time.monotonic() < deadline:
            c.recv_some()


class Sleep(Step):
    def __init__(self, seconds):
        self.seconds = seconds

    def run(self, c):
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            if c.srv.stopping.is_set():
                raise _Done("stopped")
            time.sleep(min(POLL, max(end - time.monotonic(), 0)))


class Mark(Step):
    def __init__(self, name):
        self.name = name

    def run(self, c):
        c.mark(self.name)


class Serve(Step):
    def run(self, c):
        while True:
            c.respond_default(c.read_command())


# ---------------------------------------------------------------------------
# The default mailbox
# ---------------------------------------------------------------------------


def default_messages():
    """Three small plain-text messages; the first is \\Seen."""
    msgs = []
    for i in range(1, 4):
        raw = ("From: Alice Example <alice@example.org>\r\n"
               "To: Bob Example <bob@example.org>\r\n"
               "Subject: Test message %d\r\n"
               "Date: Mon, 01 Jan 2024 10:%02d:00 +0000\r\n"
               "Message-ID: <msg%d@fake.example.org>\r\n"
               "MIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=us-ascii\r\n"
               "\r\n"
               "Body of message %d.\r\n" % (i, i, i, i)).encode("ascii")
        msgs.append({"uid": i, "flags": ["\\Seen"] if i == 1 else [],
                     "internaldate": "01-Jan-2024 10:%02d:00 +0000" % i, "raw": raw})
    return msgs


DEFAULT_FOLDERS = (("INBOX", "\\HasNoChildren"), ("Sent", "\\HasNoChildren \\Sent"),
                   ("Archive", "\\HasNoChildren"))


def _quote(s):
    if s is None:
        return "NIL"
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_header(raw):
    i = raw.find(b"\r\n\r\n")
    if i < 0:
        return raw, b""
    return raw[:i + 4], raw[i + 4:]


def _header_fields(header):
    """[(name, raw bytes of the field including folded lines)]."""
    fields = []
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line + b"\r\n")
        else:
            fields.append((line.split(b":", 1)[0].strip().upper(), line + b"\r\n"))
    return fields


def _header_value(raw, name):
    for fname, fraw in _header_fields(_split_header(raw)[0]):
        if fname == name.upper().encode():
            return fraw.split(b":", 1)[1].strip().decode("utf-8", "replace")
    return None


def _address_list(value):
    if not value:
        return "NIL"
    m = re.match(r"^\s*(.*?)\s*<([^@>]+)@([^>]+)>\s*$", value)
    if m:
        name, mbox, host = m.group(1) or None, m.group(2), m.group(3)
    else:
        mbox, _, host = value.strip().partition("@")
        name = None
    return "((%s NIL %s %s))" % (_quote(name), _quote(mbox), _quote(host or None))


def _envelope(raw):
    h = lambda n: _header_value(raw, n)  # noqa: E731
    frm = _address_list(h("From"))
    return "(%s %s %s %s %s %s %s %s %s %s)" % (
        _quote(h("Date")), _quote(h("Subject")), frm, frm, frm,
        _address_list(h("To")), _address_list(h("Cc")), "NIL", _quote(h("In-Reply-To")),
        _quote(h("Message-ID")))


def _bodystructure(raw):
    body = _split_header(raw)[1]
    return '("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" %d %d)' % (
        len(body), body.count(b"\n"))


def _parse_set(text, maximum):
    """The numbers of an IMAP sequence set, capped to MAXIMUM ("*")."""
    out = set()
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        try:
            a = maximum if lo == "*" else int(lo)
            b = a if not hi else (maximum if hi == "*" else int(hi))
        except ValueError:
            return None
        if a > b:
            a, b = b, a
        out.update(range(a, min(b, maximum) + 1))
    return out


def _fetch_items(text):
    """Splits a FETCH item list: brackets keep their spaces, parentheses are dropped."""
    text = text.strip()
    macros = {"ALL": "FLAGS INTERNALDATE RFC822.SIZE ENVELOPE",
              "FAST": "FLAGS INTERNALDATE RFC822.SIZE",
              "FULL": "FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY"}
    if text.upper() in macros:
        return macros[text.upper()].split()
    if text.startswith("("):
        depth, end = 0, len(text)
        for i, ch in enumerate(text):
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    end = i
                    break
        text = text[1:end]
    items, cur, brackets = [], "", 0
    for ch in text:
        if ch == "[":
            brackets += 1
        elif ch == "]":
            brackets -= 1
        if ch == " " and brackets == 0:
            if cur:
                items.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        items.append(cur)
    return items


def _section(raw, item):
    """(response name, bytes) of a BODY[...]/BINARY[...]/RFC822.* item."""
    u = item.upper()
    if u in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
        header, body = _split_header(raw)
        return u, {"RFC822": raw, "RFC822.HEADER": header, "RFC822.TEXT": body}[u]
    m = re.match(r"^(BODY|BINARY)(?:\.PEEK)?\[([^\]]*)\](?:<(\d+)(?:\.(\d+))?>)?$", item, re.I)
    if not m:
        return None, None
    kind, sec = m.group(1).upper(), m.group(2)
    header, body = _split_header(raw)
    su = sec.upper()
    if su == "":
        data = raw
    elif su in ("HEADER", "0"):
        data = header
    elif su in ("TEXT", "1"):
        data = body
    elif su.startswith("HEADER.FIELDS"):
        names = set(n.encode() for n in re.findall(r"[^\s()]+", sec[sec.find("(") + 1:].upper()))
        keep = su.startswith("HEADER.FIELDS.NOT")
        data = b"".join(f for n, f in _header_fields(header) if (n in names) != keep) + b"\r\n"
    else:
        data = b""
    name = "%s[%s]" % (kind, sec)
    if m.group(3) is not None:
        off = int(m.group(3))
        data = data[off:]
        if m.group(4) is not None:
            data = data[:int(m.group(4))]
        name += "<%d>" % off
    return name, data


# ---------------------------------------------------------------------------
# One connection
# ---------------------------------------------------------------------------


class _Conn:
    def __init__(self, srv, sock, cid):
        self.srv, self.sock, self.id = srv, sock, cid
        self.tls = False
        self.buf = bytearray()
        self.last_tag = None
        self.caps = srv.caps
        self.authenticated = False
        self.selected = None
        self.closed = False
        self.ended = threading.Event()

    # -- logging --------------------------------------------------------

    def mark(self, name):
        self.srv._record_mark(self, name)

    def note(self, text):
        self.srv._transcript(self, text)

    # -- bytes ----------------------------------------------------------

    def recv_some(self):
        """Reads what is there (at most POLL seconds); raises _Done at EOF or stop."""
        if self.closed:
            raise _Done("closed")
        if self.srv.stopping.is_set():
            raise _Done("stopped")
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return b""
        except (OSError, ssl.SSLError) as e:
            raise _Done("recv: %s" % e) from e
        if not data:
            raise _Done("eof")
        self.srv._record_recv(self, data)
        self.buf += data
        return data

    def send(self, data, log=True):
        if self.closed:
            raise _Done("closed")
        if log:
            self.srv._transcript(self, "S: " + _printable(data))
        view = memoryview(data)
        while view:
            if self.srv.stopping.is_set():
                raise _Done("stopped")
            try:
                n = self.sock.send(view[:256 * KiB])
            except (socket.timeout, ssl.SSLWantWriteError):
                continue
            except (OSError, ssl.SSLError) as e:
                self.srv._transcript(self, "S: send failed: %s" % e)
                raise _Done("send: %s" % e) from e
            view = view[n:]

    def read_line(self):
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buf) > CMD_LINE_MAX:
                self.send(b"* BYE command line too long\r\n")
                self.close()
            start = len(self.buf)
            self.recv_some()

    def read_bytes(self, n):
        while len(self.buf) < n:
            self.recv_some()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_command(self):
        """One command with its literals inlined; recorded in the command log."""
        line = self.read_line()
        raw = line
        while True:
            m = re.search(rb"\{(\d{1,12})(\+?)\}$", line)
            if not m:
                break
            n = int(m.group(1))
            if n > CMD_LITERAL_MAX:
                self.send(b"* BYE literal too large\r\n")
                self.close()
            if not m.group(2):
                self.send(b"+ Ready for literal data\r\n")
            raw += b"\r\n" + self.read_bytes(n)
            line = self.read_line()
            raw += line
        text = raw.decode("latin-1")
        tag, _, rest = text.partition(" ")
        words = rest.split(" ", 2)
        name = words[0].upper()
        if name == "UID" and len(words) > 1:
            name = "UID " + words[1].upper()
        return self.srv._record_command(self, tag, name, rest)

    def close(self, reset=False):
        if not self.closed:
            self.closed = True
            try:
                if reset:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
                self.sock.close()
            except OSError:
                pass
            self.note("-- closed%s" % (" (RST)" if reset else ""))
        raise _Done("closed by script")

    def start_tls(self, which):
        ctx = self.srv._ssl_context(which)
        try:
            tls = ctx.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ssl.SSLError) as e:
            self.srv._record_handshake(self, which, False, str(e))
            raise _Done("wrap failed") from e
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        while True:
            if self.srv.stopping.is_set():
                raise _Done("stopped")
            try:
                tls.do_handshake()
                break
            except (socket.timeout, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                if time.monotonic() > deadline:
                    self.srv._record_handshake(self, which, False, "handshake timed out")
                    self.sock = tls
                    raise _Done("handshake timeout")
            except (OSError, ssl.SSLError) as e:
                self.srv._record_handshake(self, which, False, str(e))
                self.sock = tls
                raise _Done("handshake failed") from e
        self.sock = tls
        self.tls = True
        self.caps = self.srv.caps_tls
        if self.buf:
            # Cleartext the client sent after STARTTLS: logged as such, never
            # read as a command inside TLS.
            self.note("-- %d cleartext bytes after STARTTLS dropped" % len(self.buf))
            self.buf.clear()
        self.srv._record_handshake(self, which, True, None)

    # -- the default responder ------------------------------------------

    def ok(self, cmd, text="completed", untagged=()):
        data = b"".join(_line(u) for u in untagged)
        data += _line("%s OK %s" % (cmd.tag, text))
        self.send(data)

    def respond_default(self, cmd):
        n = cmd.name
        args = cmd.text.split(" ", 1)[1] if " " in cmd.text else ""
        if n.startswith("UID "):
            args = args.split(" ", 1)[1] if " " in args else ""
        if n == "CAPABILITY":
            self.ok(cmd, "CAPABILITY completed", ["* CAPABILITY " + self.caps])
        elif n in ("NOOP", "CHECK"):
            self.ok(cmd, n + " completed")
        elif n == "ID":
            self.ok(cmd, "ID completed", ['* ID ("name" "fakeimap")'])
        elif n == "ENABLE":
            self.ok(cmd, "ENABLE completed", ["* ENABLED"])
        elif n == "NAMESPACE":
            self.ok(cmd, "NAMESPACE completed", ['* NAMESPACE (("" "/")) NIL NIL'])
        elif n == "LOGOUT":
            self.send(b"* BYE Logging out\r\n" + _line("%s OK LOGOUT completed" % cmd.tag))
            self.close()
        elif n == "STARTTLS":
            if self.tls or "STARTTLS" not in self.caps.upper().split():
                self.send(_line("%s BAD STARTTLS not available" % cmd.tag))
            else:
                self.last_tag = cmd.tag
                StartTLS(cert=self.srv.starttls_cert, expect=False).run(self)
        elif n in ("LOGIN", "AUTHENTICATE"):
            self.do_auth(cmd, None, b"")
        elif not self.authenticated:
            self.srv._record_unexpected(self, cmd)
            self.send(_line("%s NO [UNAVAILABLE] not authenticated" % cmd.tag))
        elif n in ("LIST", "LSUB"):
            self.ok(cmd, n + " completed",
                    ['* %s (%s) "/" %s' % (n, attrs, _quote(name))
                     for name, attrs in self.srv.folders])
        elif n == "STATUS":
            self.do_status(cmd, args)
        elif n in ("SELECT", "EXAMINE"):
            self.do_select(cmd, args)
        elif n in ("SEARCH", "UID SEARCH"):
            self.do_search(cmd, args)
        elif n in ("FETCH", "UID FETCH"):
            self.do_fetch(cmd, args)
        elif n in ("CLOSE", "UNSELECT"):
            self.selected = None
            self.ok(cmd, n + " completed")
        else:
            self.srv._record_unexpected(self, cmd)
            self.send(_line("%s BAD unknown command" % cmd.tag))

    def _mailbox_arg(self, args):
        args = args.strip()
        if args.startswith('"'):
            m = re.match(r'^"((?:[^"\\]|\\.)*)"\s*(.*)$', args, re.S)
            if m:
                return re.sub(r"\\(.)", r"\1", m.group(1)), m.group(2)
        name, _, rest = args.partition(" ")
        return name, rest

    def _folder(self, name):
        """The folder NAME names (INBOX in any case, RFC 3501 §5.1), or None."""
        for fname, _ in self.srv.folders:
            if fname == name or (fname.upper() == "INBOX" and name.upper() == "INBOX"):
                return fname
        return None

    def _messages(self, folder):
        return self.srv.messages if folder == "INBOX" else []

    def do_status(self, cmd, args):
        name, rest = self._mailbox_arg(args)
        folder = self._folder(name)
        if folder is None:
            self.send(_line("%s NO [NONEXISTENT] no such mailbox" % cmd.tag))
            return
        msgs = self._messages(folder)
        values = {"MESSAGES": len(msgs), "RECENT": 0,
                  "UNSEEN": sum(1 for m in msgs if "\\Seen" not in m["flags"]),
                  "UIDNEXT": max([m["uid"] for m in msgs] + [0]) + 1,
                  "UIDVALIDITY": self.srv.uidvalidity, "SIZE": sum(len(m["raw"]) for m in msgs)}
        asked = re.findall(r"[A-Za-z0-9-]+", rest)
        items = " ".join("%s %d" % (a.upper(), values[a.upper()])
                         for a in asked if a.upper() in values)
        self.ok(cmd, "STATUS completed", ["* STATUS %s (%s)" % (_quote(folder), items)])

    def do_select(self, cmd, args):
        name, _ = self._mailbox_arg(args)
        folder = self._folder(name)
        if folder is None:
            self.send(_line("%s NO [NONEXISTENT] no such mailbox" % cmd.tag))
            return
        self.selected = folder
        msgs = self._messages(folder)
        uidnext = max([m["uid"] for m in msgs] + [0]) + 1
        mode = "READ-ONLY" if cmd.name == "EXAMINE" else "READ-WRITE"
        self.ok(cmd, "[%s] %s completed" % (mode, cmd.name), [
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags",
            "* %d EXISTS" % len(msgs),
            "* 0 RECENT",
            "* OK [UIDVALIDITY %d] UIDs valid" % self.srv.uidvalidity,
            "* OK [UIDNEXT %d] Predicted next UID" % uidnext])

    def do_search(self, cmd, args):
        if self.selected is None:
            self.send(_line("%s BAD no mailbox selected" % cmd.tag))
            return
        msgs = self._messages(self.selected)
        words = args.upper().split()
        hits = []
        for seq, m in enumerate(msgs, 1):
            if "UNSEEN" in words and "\\Seen" in m["flags"]:
                continue
            if "SEEN" in words and "\\Seen" not in m["flags"]:
                continue
            hits.append(m["uid"] if cmd.name.startswith("UID") else seq)
        self.ok(cmd, "SEARCH completed", ["* SEARCH" + "".join(" %d" % h for h in hits)])

    def do_fetch(self, cmd, args):
        if self.selected is None:
            self.send(_line("%s BAD no mailbox selected" % cmd.tag))
            return
        msgs = self._messages(self.selected)
        by_uid = cmd.name.startswith("UID")
        setstr, _, itemstr = args.strip().partition(" ")
        top = max([m["uid"] for m in msgs] + [0]) if by_uid else len(msgs)
        wanted = _parse_set(setstr, top)
        if wanted is None:
            self.send(_line("%s BAD invalid sequence set" % cmd.tag))
            return
        items = _fetch_items(itemstr)
        if by_uid and "UID" not in (i.upper() for i in items):
            items = ["UID"] + items
        out = bytearray()
        for seq, m in enumerate(msgs, 1):
            if (m["uid"] if by_uid else seq) not in wanted:
                continue
            parts = []
            for item in items:
                u = item.upper()
                if u == "UID":
                    parts.append(b"UID %d" % m["uid"])
                elif u == "FLAGS":
                    parts.append(("FLAGS (%s)" % " ".join(m["flags"])).encode())
                elif u == "INTERNALDATE":
                    parts.append(('INTERNALDATE "%s"' % m["internaldate"]).encode())
                elif u == "RFC822.SIZE":
                    parts.append(b"RFC822.SIZE %d" % len(m["raw"]))
                elif u == "ENVELOPE":
                    parts.append(("ENVELOPE " + _envelope(m["raw"])).encode())
                elif u in ("BODYSTRUCTURE", "BODY"):
                    parts.append(("%s %s" % (u, _bodystructure(m["raw"]))).encode())
                else:
                    name, data = _section(m["raw"], item)
                    if name is not None:
                        parts.append(name.encode() + b" {%d}\r\n" % len(data) + data)
            out += b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n"
        self.send(bytes(out) + _line("%s OK FETCH completed" % cmd.tag))

    def _continuation(self, text=b""):
        self.send(b"+ " + text + b"\r\n")
        line = self.read_line()
        self.srv._transcript(self, "C: [SASL response]")
        if line.strip() == b"*":
            return None
        try:
            return base64.b64decode(line, validate=True)
        except ValueError:
            return b""

    def do_auth(self, cmd, reply, extra):
        """LOGIN or AUTHENTICATE (RFC 3501 §6.2.2, §6.2.3; RFC 4616 PLAIN)."""
        words = cmd.text.split(" ")
        user = password = None
        mech = "LOGIN command"
        if cmd.name == "LOGIN":
            user, password = _login_args(cmd.text[len(words[0]):])
        else:
            mech = words[1].upper() if len(words) > 1 else ""
            ir = words[2] if len(words) > 2 else None
            if mech == "PLAIN":
                if ir is None:
                    resp = self._continuation()
                elif ir == "=":
                    resp = b""
                else:
                    try:
                        resp = base64.b64decode(ir, validate=True)
                    except ValueError:
                        resp = b""
                if resp is None:
                    self.send(_line("%s BAD AUTHENTICATE canceled" % cmd.tag))
                    return
                fields = resp.split(b"\0")
                if len(fields) == 3:
                    user = fields[1].decode("utf-8", "replace")
                    password = fields[2].decode("utf-8", "replace")
            elif mech == "LOGIN":
                u = self._continuation(base64.b64encode(b"Username:"))
                p = self._continuation(base64.b64encode(b"Password:")) if u is not None else None
                if u is None or p is None:
                    self.send(_line("%s BAD AUTHENTICATE canceled" % cmd.tag))
                    return
                user, password = u.decode("utf-8", "replace"), p.decode("utf-8", "replace")
            else:
                self.send(_line("%s NO [CANNOT] unsupported mechanism" % cmd.tag))
                return
            mech = "AUTHENTICATE " + mech
        self.srv._record_auth(self, mech, user, password)
        if reply is None:
            reply = self.srv.auth_reply
        if reply is None:
            good = ((self.srv.user is None or user == self.srv.user) and
                    (self.srv.password is None or password == self.srv.password))
            if cmd.name == "LOGIN" and "LOGINDISABLED" in self.caps.upper().split():
                reply = "NO [PRIVACYREQUIRED] LOGIN is disabled on this connection"
            elif good:
                reply = "OK [CAPABILITY %s] Logged in" % self.srv.caps_tls
            else:
                reply = "NO [AUTHENTICATIONFAILED] Authentication failed."
        if reply.upper().startswith("OK"):
            self.authenticated = True
        self.send(_line("%s %s" % (cmd.tag, reply)) + extra)


def _astring(s):
    """(value, rest) of one IMAP astring at the start of S (quoted, literal or atom)."""
    s = s.lstrip(" ")
    if s.startswith('"'):
        m = re.match(r'^"((?:[^"\\]|\\.)*)"(.*)$', s, re.S)
        if m:
            return re.sub(r"\\(.)", r"\1", m.group(1)), m.group(2)
    m = re.match(r"^\{(\d+)\+?\}\r\n", s)
    if m:
        n = int(m.group(1))
        start = m.end()
        return s[start:start + n], s[start + n:]
    value, _, rest = s.partition(" ")
    return value, " " + rest if rest else ""


def _login_args(rest):
    user, rest = _astring(rest)
    password, _ = _astring(rest)
    return user, password


def _printable(data, limit=400):
    text = data[:limit].decode("latin-1")
    text = "".join(ch if 32 <= ord(ch) < 127 else "\\x%02x" % ord(ch) for ch in text)
    if len(data) > limit:
        text += "...[%d bytes]" % len(data)
    return text


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class FakeIMAP:
    """A fake IMAP server running SCRIPT on every connection it accepts."""

    def __init__(self, script=(), *, certs=None, tls=None, greeting=None,
                 caps=DEFAULT_CAPS, caps_tls=DEFAULT_CAPS_TLS, starttls_cert="server",
                 user=None, password=None, auth_reply=None, folders=DEFAULT_FOLDERS,
                 messages=None, log_dir=None, host="127.0.0.1", port=0):
        self.script = list(script)
        self.certs = certs
        self.implicit_tls = tls
        self.greeting = greeting
        self.caps, self.caps_tls = caps, caps_tls
        self.starttls_cert = starttls_cert
        self.user, self.password, self.auth_reply = user, password, auth_reply
        self.folders = list(folders)
        self.messages = default_messages() if messages is None else messages
        self.uidvalidity = 1700000000
        self.log_dir = log_dir
        self.host, self.port = host, port

        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._seq = 0
        self._listener = None
        self._accept_thread = None
        self._conns = []
        self._threads = []
        self._ctx_cache = {}
        self._raw = {}  # (conn, tls) -> bytearray
        self._order = []  # [(conn, tls, bytes)] in arrival order
        self.cmds = []
        self.marks = []
        self.handshakes = []
        self.auth_attempts = []
        self.unexpected = []
        self.errors = []
        self.connections = 0
        self._log_bin = None
        self._log_txt = None

    # -- lifecycle ------------------------------------------------------

    def start(self):
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            self._log_bin = open(os.path.join(self.log_dir, "client.bin"), "wb")
            self._log_txt = open(os.path.join(self.log_dir, "transcript.txt"), "w",
                                 encoding="utf-8")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        lst = socket.socket(family, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((self.host, self.port))
        lst.listen(16)
        lst.settimeout(POLL)
        self._listener = lst
        self.port = lst.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name="fakeimap-accept")
        self._accept_thread.start()
        return self.port

    def stop(self):
        """Closes every socket and joins every thread; safe to call twice."""
        self.stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5)
            if t.is_alive():
                self.errors.append("thread %s did not stop" % t.name)
        for c in conns:
            try:
                c.sock.close()
            except OSError:
                pass
        for f in (self._log_bin, self._log_txt):
            if f is not None and not f.closed:
                f.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def wait_idle(self, timeout=5.0):
        """Waits until every connection has ended (the client closed); True when so."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._threads)
            if all(not t.is_alive() for t in threads):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(POLL)
            with self._lock:
                self.connections += 1
                c = _Conn(self, sock, self.connections)
                t = threading.Thread(target=self._serve, args=(c,), daemon=True,
                                     name="fakeimap-conn%d" % c.id)
                self._conns.append(c)
                self._threads.append(t)
            t.start()

    def _serve(self, c):
        self._transcript(c, "-- connection %d accepted" % c.id)
        try:
            if self.implicit_tls:
                c.start_tls(self.implicit_tls)
            if self.greeting is not False:
                text = self.greeting
                if text is None:
                    text = "* OK [CAPABILITY %s] fakeimap ready" % c.caps
                data = _line(text)
                if data.upper().startswith(b"* PREAUTH"):
                    c.authenticated = True
                c.send(data)
            for step in self.script:
                step.run(c)
            Serve().run(c)
        except _Done as e:
            self._transcript(c, "-- end: %s" % e)
        except Exception as e:  # a fault of the fake itself; the test reports it
            self.errors.append("conn %d: %s: %r" % (c.id, type(e).__name__, e))
            self._transcript(c, "-- internal error %r" % e)
        finally:
            self._drain(c)
            if not c.closed:
                c.closed = True
                try:
                    c.sock.close()
                except OSError:
                    pass
            c.ended.set()

    def _drain(self, c):
        """Logs what the client still sends after the script ended, until EOF or 1 s."""
        if c.closed or self.stopping.is_set():
            return
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                data = c.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except (OSError, ssl.SSLError, ValueError):
                return
            if not data:
                return
            self._record_recv(c, data)

    def _ssl_context(self, which):
        if isinstance(which, tuple):
            cert, key = which
        else:
            if self.certs is None:
                raise RuntimeError("TLS wanted but the server has no certs")
            cert, key = self.certs.pair(which)
        k = (cert, key)
        if k not in self._ctx_cache:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self._ctx_cache[k] = ctx
        return self._ctx_cache[k]

    # -- records --------------------------------------------------------

    def _next_seq(self):
        self._seq += 1
        return self._seq

    def _record_recv(self, c, data):
        with self._lock:
            self._raw.setdefault((c.id, c.tls), bytearray()).extend(data)
            self._order.append((c.id, c.tls, bytes(data)))
            if self._log_bin is not None:
                self._log_bin.write(data)
                self._log_bin.flush()
        self._transcript(c, "C: " + _printable(data, 2000))

    def _record_command(self, c, tag, name, text):
        with self._lock:
            cmd = Command(c.id, c.tls, tag, name, text, self._next_seq())
            self.cmds.append(cmd)
        return cmd

    def _record_mark(self, c, name):
        with self._lock:
            self.marks.append(MarkEntry(c.id, name, self._next_seq()))
        self._transcript(c, "-- mark %s" % name)

    def _record_handshake(self, c, which, ok, error):
        with self._lock:
            self.handshakes.append(Handshake(c.id, which, ok, error))
        self._transcript(c, "-- TLS handshake (%s): %s" % (which, "ok" if ok else error))

    def _record_auth(self, c, mech, user, password):
        with self._lock:
            self.auth_attempts.append(AuthAttempt(c.id, c.tls, mech, user, password))

    def _record_unexpected(self, c, cmd):
        with self._lock:
            self.unexpected.append(cmd)

    def _transcript(self, c, text):
        if self._log_txt is None:
            return
        with self._lock:
            if not self._log_txt.closed:
                self._log_txt.write("[%d %s] %s\n" % (c.id, "tls" if c.tls else "plain", text))
                self._log_txt.flush()

    # -- queries for tests ------------------------------------------------

    def received(self, tls=None, conn=None):
        """Bytes received from clients: before TLS (False), inside it (True) or all (None)."""
        with self._lock:
            return b"".join(data for cid, t, data in self._order
                            if (tls is None or t == tls) and (conn is None or cid == conn))

    def commands(self, tls=None):
        with self._lock:
            return [c for c in self.cmds if tls is None or c.tls == tls]

    def command_names(self, tls=None):
        return [c.name for c in self.commands(tls)]

    def mark_seq(self, name):
        """The sequence number of the first mark NAME, or None."""
        with self._lock:
            for m in self.marks:
                if m.name == name:
                    return m.seq
        return None

    def commands_after(self, name):
        """Commands parsed after the first mark NAME (all of them when it never happened)."""
        seq = self.mark_seq(name)
        with self._lock:
            return [c for c in self.cmds if seq is None or c.seq > seq]

    def transcript(self):
        if not self.log_dir:
            return ""
        path = os.path.join(self.log_dir, "transcript.txt")
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError:
            return ""


def main(argv):
    import argparse
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    ap = argparse.ArgumentParser(description="Serve the default fake mailbox until interrupted.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", action="store_true", help="implicit TLS (imaps)")
    ap.add_argument("--certs", help="directory for the test certificates")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--log-dir")
    a = ap.parse_args(argv[1:])
    certs = None
    if a.certs:
        import certs as certs_mod
        certs = certs_mod.make_certs(a.certs)
    srv = FakeIMAP([], certs=certs, tls="server" if a.tls else None, user=a.user,
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
