#!/usr/bin/python3
"""The common part of the scripted fake line-protocol servers (POP3, SMTP).

Layer: tests/peers. fakepop3.py and fakesmtp.py build on this module; it
holds what every line protocol needs and nothing protocol-specific: a
listening socket on a free 127.0.0.1 port, one thread per connection, the
script of steps each connection runs, TLS (implicit or after a STARTTLS-like
command), and the log of every byte the client sent. The approach and the
logging are those of fakeimap.py: a test names the fault it wants in a short
script, and the default responder answers everything around it.

A protocol module subclasses FakeLineServer and defines:

    greeting_text(c)        the default greeting line(s), CRLF included
    respond_default(c, cmd) answer one command the script does not handle
    on_connect(c)           set up per-connection state (optional)
    on_tls(c)               after a successful handshake (optional)

Generic steps (the protocol modules add their own):

    Send(data)            raw bytes (str is encoded as UTF-8), nothing added
    Line(text)            one line, CRLF added when missing
    Expect(regex, reply=None)
                          read commands until one matches REGEX (searched in
                          the command line, case-insensitive), answering the
                          others with the default responder; then send REPLY
                          (CRLF added) when given
    ImplicitTLS(cert)     the server side of a TLS handshake now
    HugeLine(size=10 MiB, prefix, chunk=64 KiB)
                          stream SIZE bytes without any LF
    Close()               close the connection (FIN)
    Reset()               close with SO_LINGER 0 (RST)
    Stall(seconds=None)   send nothing; read and log until EOF, stop or SECONDS
    Sleep(seconds)        pause, reading nothing
    Mark(name)            a named mark in the command log
    Call(fn)              fn(conn): anything else
    Serve()               the default responder until the client quits

A server's script runs on every connection; per_conn={N: script} gives
connection N (1 for the first) its own script instead, so a test can make
the first connection fail and the second succeed.

Records, for the tests: received(tls=None|False|True, conn=None) the bytes
from the client; commands(tls=None) the parsed command lines as Command(conn,
tls, name, text, seq, pipelined) where pipelined says that more client bytes
had already arrived when the command was read, before its reply (the client
did not wait for it); auth_attempts; handshakes; marks and commands_after(mark);
unexpected (commands the responder did not know); errors (faults of the fake
itself: a test asserts it stays empty). With log_dir=DIR the server writes
DIR/client.bin and DIR/transcript.txt as fakeimap.py does.
"""

import os
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections import namedtuple

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# How long one blocking socket call waits before checking for stop().
POLL = 0.2
# The longest command line the fakes accept from a client.
CMD_LINE_MAX = 1 * MiB
HANDSHAKE_TIMEOUT = 10.0

Command = namedtuple("Command", "conn tls name text seq pipelined")
Handshake = namedtuple("Handshake", "conn cert ok error")
AuthAttempt = namedtuple("AuthAttempt", "conn tls mechanism user password")
MarkEntry = namedtuple("MarkEntry", "conn name seq")


class Done(Exception):
    """The connection is over: EOF, a socket error, a close or stop()."""


def to_bytes(data):
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


def crlf_line(text):
    data = to_bytes(text)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def printable(data, limit=400):
    text = data[:limit].decode("latin-1")
    text = "".join(ch if 32 <= ord(ch) < 127 else "\\x%02x" % ord(ch) for ch in text)
    if len(data) > limit:
        text += "...[%d bytes]" % len(data)
    return text


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------


class Step:
    """One action of a script; run(conn) performs it or raises Done."""

    def run(self, c):
        raise NotImplementedError

    def __repr__(self):
        return type(self).__name__


class Send(Step):
    def __init__(self, data):
        self.data = to_bytes(data)

    def run(self, c):
        c.send(self.data)


class Line(Step):
    def __init__(self, text):
        self.data = crlf_line(text)

    def run(self, c):
        c.send(self.data)


class Expect(Step):
    def __init__(self, regex, reply=None):
        self.rx = re.compile(regex, re.I | re.S)
        self.reply = reply

    def run(self, c):
        while True:
            cmd = c.read_command()
            if self.rx.search(cmd.text):
                c.last_cmd = cmd
                if self.reply is not None:
                    c.send(crlf_line(self.reply))
                return
            c.srv.respond_default(c, cmd)

    def __repr__(self):
        return "Expect(%r)" % self.rx.pattern


class ImplicitTLS(Step):
    def __init__(self, cert="server"):
        self.cert = cert

    def run(self, c):
        c.start_tls(self.cert)


class HugeLine(Step):
    def __init__(self, size=10 * MiB, prefix=b"", chunk=64 * KiB):
        self.size, self.prefix, self.chunk = size, to_bytes(prefix), chunk

    def run(self, c):
        c.mark("HugeLine")
        c.send(self.prefix)
        block = b"x" * self.chunk
        left = self.size - len(self.prefix)
        while left > 0:
            n = min(left, self.chunk)
            c.send(block[:n], log=False)
            left -= n
        c.note("S: [%d bytes without LF]" % self.size)


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
                raise Done("stopped")
            time.sleep(min(POLL, max(end - time.monotonic(), 0)))


class Mark(Step):
    def __init__(self, name):
        self.name = name

    def run(self, c):
        c.mark(self.name)


class Call(Step):
    def __init__(self, fn):
        self.fn = fn

    def run(self, c):
        self.fn(c)


class Serve(Step):
    def run(self, c):
        while True:
            c.srv.respond_default(c, c.read_command())


# ---------------------------------------------------------------------------
# One connection
# ---------------------------------------------------------------------------


class Conn:
    def __init__(self, srv, sock, cid):
        self.srv, self.sock, self.id = srv, sock, cid
        self.tls = False
        self.buf = bytearray()
        self.closed = False
        self.last_cmd = None
        self.state = {}

    def mark(self, name):
        self.srv._record_mark(self, name)

    def note(self, text):
        self.srv._transcript(self, text)

    def recv_some(self):
        """Reads what is there (at most POLL seconds); raises Done at EOF or stop."""
        if self.closed:
            raise Done("closed")
        if self.srv.stopping.is_set():
            raise Done("stopped")
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return b""
        except (OSError, ssl.SSLError) as e:
            raise Done("recv: %s" % e) from e
        if not data:
            raise Done("eof")
        self.srv._record_recv(self, data)
        self.buf += data
        return data

    def send(self, data, log=True):
        if self.closed:
            raise Done("closed")
        data = to_bytes(data)
        if log:
            self.srv._transcript(self, "S: " + printable(data))
        view = memoryview(data)
        while view:
            if self.srv.stopping.is_set():
                raise Done("stopped")
            try:
                n = self.sock.send(view[:256 * KiB])
            except (socket.timeout, ssl.SSLWantWriteError):
                continue
            except (OSError, ssl.SSLError) as e:
                self.srv._transcript(self, "S: send failed: %s" % e)
                raise Done("send: %s" % e) from e
            view = view[n:]

    def send_chunked(self, data, chunk, pause):
        """Sends DATA CHUNK bytes at a time with PAUSE seconds between the sends,
        so that the pieces arrive in separate TCP segments (or TLS records)."""
        self.srv._transcript(self, "S: [%d bytes in pieces of %d] %s" % (
            len(data), chunk, printable(data, 200)))
        for i in range(0, len(data), chunk):
            self.send(data[i:i + chunk], log=False)
            if pause:
                time.sleep(pause)

    def read_line(self, limit=CMD_LINE_MAX):
        """One line without its CRLF (or LF)."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buf) > limit:
                self.srv.line_too_long(self)
                self.close()
            start = len(self.buf)
            self.recv_some()

    def read_bytes(self, n):
        while len(self.buf) < n:
            self.recv_some()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def more_pending(self):
        """True when client bytes beyond what was parsed have already arrived: in
        the buffer, inside the TLS layer, or waiting on the socket."""
        if self.buf:
            return True
        try:
            if self.tls and self.sock.pending() > 0:
                return True
            readable, _, _ = select.select([self.sock], [], [], 0)
            return bool(readable)
        except (OSError, ValueError):
            return False

    def read_command(self):
        """One command line, recorded in the command log. It counts as pipelined
        when more of the client's bytes were already there before the reply."""
        line = self.read_line()
        pipelined = self.more_pending()
        text = line.decode("latin-1")
        name = text.split(" ", 1)[0].upper()
        return self.srv._record_command(self, name, text, pipelined)

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
        raise Done("closed by script")

    def start_tls(self, which):
        ctx = self.srv._ssl_context(which)
        try:
            tls = ctx.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ssl.SSLError) as e:
            self.srv._record_handshake(self, which, False, str(e))
            raise Done("wrap failed") from e
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        while True:
            if self.srv.stopping.is_set():
                raise Done("stopped")
            try:
                tls.do_handshake()
                break
            except (socket.timeout, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                if time.monotonic() > deadline:
                    self.srv._record_handshake(self, which, False, "handshake timed out")
                    self.sock = tls
                    raise Done("handshake timeout")
            except (OSError, ssl.SSLError) as e:
                self.srv._record_handshake(self, which, False, str(e))
                self.sock = tls
                raise Done("handshake failed") from e
        self.sock = tls
        self.tls = True
        if self.buf:
            # Cleartext the client sent after the go-ahead is logged, never read
            # as a command inside TLS.
            self.note("-- %d cleartext bytes after the TLS go-ahead dropped" % len(self.buf))
            self.buf.clear()
        self.srv._record_handshake(self, which, True, None)
        self.srv.on_tls(self)


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class FakeLineServer:
    """A fake server running its script on every connection it accepts."""

    name = "fakeline"

    def __init__(self, script=(), *, certs=None, tls=None, greeting=None, per_conn=None,
                 user=None, password=None, log_dir=None, host="127.0.0.1", port=0):
        self.script = list(script)
        self.per_conn = dict(per_conn or {})
        self.certs = certs
        self.implicit_tls = tls
        self.greeting = greeting
        self.user, self.password = user, password
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
        self._order = []
        self.cmds = []
        self.marks = []
        self.handshakes = []
        self.auth_attempts = []
        self.unexpected = []
        self.errors = []
        self.connections = 0
        self._log_bin = None
        self._log_txt = None

    # -- protocol hooks ---------------------------------------------------

    def greeting_text(self, c):
        return b""

    def respond_default(self, c, cmd):
        raise NotImplementedError

    def on_connect(self, c):
        pass

    def on_tls(self, c):
        pass

    def line_too_long(self, c):
        pass

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
                                               name="%s-accept" % self.name)
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
        with self._lock:
            for f in (self._log_bin, self._log_txt):
                if f is not None and not f.closed:
                    f.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def wait_idle(self, timeout=5.0):
        """Waits until every connection has ended; True when so."""
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
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                c = Conn(self, sock, self.connections)
                t = threading.Thread(target=self._serve, args=(c,), daemon=True,
                                     name="%s-conn%d" % (self.name, c.id))
                self._conns.append(c)
                self._threads.append(t)
            t.start()

    def _serve(self, c):
        self._transcript(c, "-- connection %d accepted" % c.id)
        try:
            self.on_connect(c)
            if self.implicit_tls:
                c.start_tls(self.implicit_tls)
            if self.greeting is not False:
                if self.greeting is None:
                    data = self.greeting_text(c)
                else:
                    data = crlf_line(self.greeting)
                c.send(data)
            for step in self.per_conn.get(c.id, self.script):
                step.run(c)
            Serve().run(c)
        except Done as e:
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
            self._order.append((c.id, c.tls, bytes(data)))
            if self._log_bin is not None and not self._log_bin.closed:
                self._log_bin.write(data)
                self._log_bin.flush()
        self._transcript(c, "C: " + printable(data, 2000))

    def _record_command(self, c, name, text, pipelined):
        with self._lock:
            cmd = Command(c.id, c.tls, name, text, self._next_seq(), pipelined)
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
        with self._lock:
            if self._log_txt is not None and not self._log_txt.closed:
                self._log_txt.write("[%d %s] %s\n" % (c.id, "tls" if c.tls else "plain", text))
                self._log_txt.flush()

    # -- queries for tests ------------------------------------------------

    def received(self, tls=None, conn=None):
        """Bytes received from clients: before TLS (False), inside it (True) or all (None)."""
        with self._lock:
            return b"".join(data for cid, t, data in self._order
                            if (tls is None or t == tls) and (conn is None or cid == conn))

    def commands(self, tls=None, conn=None):
        with self._lock:
            return [c for c in self.cmds
                    if (tls is None or c.tls == tls) and (conn is None or c.conn == conn)]

    def command_names(self, tls=None, conn=None):
        return [c.name for c in self.commands(tls, conn)]

    def mark_seq(self, name):
        with self._lock:
            for m in self.marks:
                if m.name == name:
                    return m.seq
        return None

    def commands_after(self, name):
        """Commands read after the first mark NAME (all of them when it never happened)."""
        seq = self.mark_seq(name)
        with self._lock:
            return [c for c in self.cmds if seq is None or c.seq > seq]

    def transcript(self):
        if not self.log_dir:
            return ""
        try:
            with open(os.path.join(self.log_dir, "transcript.txt"), encoding="utf-8") as f:
                return f.read()
        except OSError:
            return ""
