#!/usr/bin/python3
"""A private Postfix for tests and benchmarks: mail submission into the test Dovecot.

Layer: test infrastructure (tests/lib). It never touches the system's Postfix
(Debian package postfix, installed with "No configuration"): everything lives
in one directory that the caller names or that is made in /tmp, and the
instance runs from its own config directory (postfix -c DIR), queue, data
directory, pid file and log. It listens on 127.0.0.1 only, on two free ports:

    submission   RFC 6409 on a 587-style port: STARTTLS required (RFC 3207)
                 before AUTH (smtpd_tls_security_level = encrypt)
    smtps        RFC 8314 implicit TLS on a 465-style port

Both offer AUTH PLAIN and LOGIN (RFC 4954) after TLS, checked by the
Dovecot's auth service over its SASL socket (Dovecot(lmtp=True)), so the
users and passwords are the Dovecot's. Port 25 is never opened. Certificates
are the Dovecot's (its test CA signs them for localhost and 127.0.0.1).

Mail for example.org is delivered by LMTP (RFC 2033) into the Dovecot: the
message a test sends to bob@example.org lands in bob's INBOX, and tern can
find it there with `list INBOX`. A recipient that is not a Dovecot user is
refused at RCPT TO with 550 5.1.1 (a real partial recipient failure). Any
other domain is refused at RCPT TO (relay access denied).

What one instance holds, under ROOT:

    conf/main.cf, conf/master.cf, conf/recipients   the config (texthash map)
    spool/       queue_directory (pid/master.pid is the master's pid)
    data/        data_directory
    postfix.log  maillog_file (postlogd)
    ports.json

Python use:

    dc = Dovecot(lmtp=True); dc.start()
    mta = MTA(dc); mta.start()
    mta.ports["submission"], mta.ports["smtps"], mta.ca_file
    mta.wait_delivered("bob", "INBOX", message_id="x@y")   # polls the Dovecot
    mta.queue()                                             # what is still queued
    mta.stop()

MTA(dc, deliver=False) accepts and queues mail like the real thing but
discards it at delivery (the discard(8) agent), for a benchmark that measures
submission only; it then takes every recipient of an authenticated client,
in any domain (nothing leaves the machine: every transport is discard).

Command line use (prints shell-sourceable variables):

    python3 tests/lib/mta.py start DIR DOVECOT_DIR [--no-deliver]
    python3 tests/lib/mta.py env DIR
    python3 tests/lib/mta.py stop DIR

Needs root (Postfix's master runs as root and drops to the postfix user), the
Debian packages postfix and dovecot-lmtpd. available() says whether this
machine can run it and why not.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dovecot as dovecot_mod  # noqa: E402

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
DAEMON_DIR = "/usr/lib/postfix/sbin"

PORT_NAMES = ("submission", "smtps")
# The queue directories owned by the postfix user, mode 0700 (postfix-files).
_QUEUE_DIRS = ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming",
               "private", "saved", "trace")
DOMAIN = "example.org"


class MTAError(Exception):
    """The fixture could not set up, start or control the server."""


def available():
    """(True, "") when a private Postfix can run here, else (False, why)."""
    if not os.access(POSTFIX, os.X_OK) or not os.access(
            os.path.join(DAEMON_DIR, "master"), os.X_OK):
        return False, "postfix is not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return False, "a private Postfix needs root (its master drops privileges itself)"
    try:
        import pwd
        import grp
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return False, "the postfix user or the postdrop group is missing"
    if not dovecot_mod.has_lmtp():
        return False, "dovecot-lmtpd is not installed (apt-get install dovecot-lmtpd)"
    return True, ""


def _run(argv, check=True, timeout=60, env=None):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise MTAError("%s failed (exit %d): %s%s" % (
            " ".join(shlex.quote(a) for a in argv), proc.returncode,
            proc.stderr.decode("utf-8", "replace").strip(),
            proc.stdout.decode("utf-8", "replace").strip()))
    return proc


def _write_old(path, text):
    """Writes PATH with a modification time in the past: Postfix waits, re-reading,
    until a file it loads is older than the current second (dict_load_file)."""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    past = time.time() - 5
    os.utime(path, (past, past))


class MTA:
    """One private Postfix instance delivering into the Dovecot DC (made with lmtp=True)."""

    def __init__(self, dc, root=None, deliver=True, message_size_limit=10240000):
        if not getattr(dc, "lmtp", False):
            raise MTAError("the Dovecot must be made with lmtp=True")
        self.dc = dc
        self._own_root = root is None
        if root is None:
            root = tempfile.mkdtemp(prefix="tern-mta-")
        self.root = os.path.abspath(root)
        self.deliver = deliver
        self.message_size_limit = message_size_limit
        self.host = "127.0.0.1"
        self.ports = {}

    # ----- paths ---------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    @property
    def conf_dir(self):
        return self.path("conf")

    @property
    def log_file(self):
        return self.path("postfix.log")

    @property
    def ca_file(self):
        return self.dc.ca_file

    def password(self, user):
        return self.dc.password(user)

    # ----- setup ---------------------------------------------------------

    def setup(self):
        """Writes the config and creates the queue; safe to call again."""
        ok, why = available()
        if not ok:
            raise MTAError(why)
        os.makedirs(self.root, exist_ok=True)
        # The postfix user must reach the queue and the data directory below ROOT.
        os.chmod(self.root, 0o755)
        for d in ("conf", "spool", "data"):
            os.makedirs(self.path(d), exist_ok=True)
        os.chmod(self.path("spool"), 0o755)
        self._load_ports()
        if self.ports and self.is_running():
            return
        if not self.ports or not all(dovecot_mod._port_is_free(p) for p in self.ports.values()):
            self.ports = dict(zip(PORT_NAMES, dovecot_mod.free_ports(len(PORT_NAMES))))
            with open(self.path("ports.json"), "w") as f:
                json.dump(self.ports, f)
        self.write_recipients()
        _write_old(os.path.join(self.conf_dir, "main.cf"), self._main_cf())
        _write_old(os.path.join(self.conf_dir, "master.cf"),
                   _MASTER_CF.format(host=self.host, **self.ports))
        self._make_queue()

    def _make_queue(self):
        """The queue directories with the owners and modes of Postfix's postfix-files
        (what "postfix set-permissions" does, without its seconds of checks)."""
        import grp
        import pwd
        postfix = pwd.getpwnam("postfix").pw_uid
        postdrop = grp.getgrnam("postdrop").gr_gid
        dirs = [(d, postfix, 0, 0o700) for d in _QUEUE_DIRS]
        dirs += [("maildrop", postfix, postdrop, 0o730), ("public", postfix, postdrop, 0o710),
                 ("pid", 0, 0, 0o755)]
        for name, uid, gid, mode in dirs:
            path = self.path("spool", name)
            os.makedirs(path, exist_ok=True)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        os.chown(self.path("data"), postfix, 0)
        os.chmod(self.path("data"), 0o700)

    def _load_ports(self):
        try:
            with open(self.path("ports.json")) as f:
                ports = json.load(f)
            if set(ports) == set(PORT_NAMES):
                self.ports = {k: int(v) for k, v in ports.items()}
        except (OSError, ValueError):
            pass

    def write_recipients(self):
        """The recipients Postfix accepts: every Dovecot user at example.org."""
        tmp = os.path.join(self.conf_dir, "recipients.tmp")
        _write_old(tmp, "".join("%s@%s OK\n" % (user, DOMAIN) for user in sorted(self.dc.users)))
        os.replace(tmp, os.path.join(self.conf_dir, "recipients"))

    def add_users(self, users):
        """Adds Dovecot users {name: password} and makes Postfix accept mail for them."""
        self.dc.add_users(users)
        self.write_recipients()
        if self.is_running():
            self.reload()

    def _main_cf(self):
        transport = ("lmtp:unix:%s" % self.dc.lmtp_socket) if self.deliver else "discard:"
        if self.deliver:
            local = {"default_transport": "error:5.7.1 this test server delivers nowhere "
                                          "but " + DOMAIN,
                     "restrictions": "reject_unlisted_recipient, permit_sasl_authenticated, "
                                     "reject",
                     "reject_unlisted": "yes"}
        else:
            local = {"default_transport": "discard:",
                     "restrictions": "permit_sasl_authenticated, reject",
                     "reject_unlisted": "no"}
        return _MAIN_CF.format(**local, **dict(
            root=self.root, conf=self.conf_dir,
            cert=self.dc.cert_file(), key=self.dc.path("tls", "%s.key" % self.dc.cert),
            auth_socket=self.dc.auth_socket, transport=transport, domain=DOMAIN,
            size=self.message_size_limit))

    # ----- run -----------------------------------------------------------

    def pid(self):
        try:
            with open(self.path("spool", "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def is_running(self):
        pid = self.pid()
        return pid is not None and dovecot_mod._pid_alive(pid)

    def start(self, timeout=20):
        """Starts the Dovecot when needed, then Postfix; waits until both ports greet."""
        if not self.dc.is_running():
            self.dc.start()
        if self.is_running():
            self._load_ports()
            self._wait_ready(timeout)
            return
        for attempt in range(3):
            self.setup()
            log_start = os.path.getsize(self.log_file) if os.path.exists(self.log_file) else 0
            # master -w waits until the daemon is initialized and says whether it failed.
            with open(self.path("start.err"), "w+b") as err:
                rc = subprocess.call([os.path.join(DAEMON_DIR, "master"), "-c", self.conf_dir,
                                      "-w"], stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                     timeout=60, env=self._env())
                err.seek(0)
                errtext = err.read().decode("utf-8", "replace").strip()
            if rc != 0:
                log = self._log_tail(log_start)
                if "Address already in use" in (errtext + log) and attempt < 2:
                    self._forget_ports()
                    continue
                raise MTAError("postfix did not start (exit %d): %s\n%s" % (rc, errtext, log))
            try:
                self._wait_ready(timeout)
                return
            except MTAError:
                log = self._log_tail(log_start)
                self.stop()
                if "Address already in use" in log and attempt < 2:
                    self._forget_ports()
                    continue
                raise MTAError("postfix did not become ready:\n" + log)

    def _forget_ports(self):
        self.ports = {}
        try:
            os.unlink(self.path("ports.json"))
        except OSError:
            pass

    def _env(self):
        # Postfix's commands read MAIL_CONFIG; nothing of the caller's leaks in.
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": self.conf_dir,
                "LANG": "C"}

    def _log_tail(self, start=0):
        try:
            with open(self.log_file, "rb") as f:
                f.seek(start)
                return f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        pending = list(PORT_NAMES)
        while pending:
            if time.monotonic() > deadline:
                raise MTAError("ports %s did not answer" % ", ".join(pending))
            name = pending[0]
            if self._greets(self.ports[name], name == "smtps"):
                pending.pop(0)
                continue
            if not self.is_running():
                raise MTAError("postfix exited")
            time.sleep(0.05)

    def _greets(self, port, tls):
        try:
            with socket.create_connection((self.host, port), timeout=5) as raw:
                s = raw
                if tls:
                    ctx = ssl.create_default_context(cafile=self.ca_file)
                    s = ctx.wrap_socket(raw, server_hostname="localhost")
                data = b""
                while b"\n" not in data:
                    chunk = s.recv(512)
                    if not chunk:
                        break
                    data += chunk
                ok = data.startswith(b"220")
                try:
                    s.sendall(b"QUIT\r\n")
                except OSError:
                    pass
                return ok
        except (OSError, ssl.SSLError):
            return False

    def reload(self):
        """Makes the running master re-read its config (SIGHUP)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
            time.sleep(0.3)

    def stop(self, timeout=15):
        """Stops the master by its pid (SIGTERM; it ends its children) and waits."""
        pid = self.pid()
        if pid is None or not dovecot_mod._pid_alive(pid):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while dovecot_mod._pid_alive(pid):
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(
                dovecot_mod._port_is_free(p) for p in self.ports.values()):
            time.sleep(0.05)

    def cleanup(self):
        """Stops the server and removes ROOT if this object created it."""
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.cleanup()

    # ----- inspection ----------------------------------------------------

    def env(self):
        return {
            "MTA_DIR": self.root,
            "MTA_CONF_DIR": self.conf_dir,
            "MTA_PID": str(self.pid() or ""),
            "MTA_HOST": self.host,
            "SUBMISSION_PORT": str(self.ports.get("submission", "")),
            "SMTPS_PORT": str(self.ports.get("smtps", "")),
            "MTA_CA_FILE": self.ca_file,
            "MTA_LOG": self.log_file,
        }

    def queue(self):
        """The messages still in Postfix's queue, as postqueue -j objects."""
        proc = _run([POSTQUEUE, "-c", self.conf_dir, "-j"], check=False, env=self._env())
        out = []
        for line in proc.stdout.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def flush_queue(self):
        """Asks Postfix to retry deferred mail now."""
        _run([POSTQUEUE, "-c", self.conf_dir, "-f"], check=False, env=self._env())

    def log(self):
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_delivered(self, user, folder="INBOX", message_id=None, count=None, timeout=20):
        """Waits until USER's FOLDER holds the message MESSAGE_ID (returns its UID), or
        until it holds at least COUNT messages (returns the count). Raises MTAError
        with the end of Postfix's log after TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if message_id is not None:
                uid = self.dc.uid_of(user, folder, message_id)
                if uid is not None:
                    return uid
            else:
                n = self.dc.status(user, folder, "messages").get("messages", 0)
                if n >= (count or 1):
                    return n
            if time.monotonic() > deadline:
                raise MTAError("no delivery to %s/%s of %s within %ds; queue %s\n%s" % (
                    user, folder, message_id or "%s messages" % count, timeout,
                    self.queue(), self.log()[-3000:]))
            time.sleep(0.1)


_MAIN_CF = """\
# A private test instance made by tests/lib/mta.py; not a system config.
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
import_environment = MAIL_CONFIG MAIL_DEBUG LANG=C TZ

myhostname = localhost
mydomain = localdomain
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
relayhost =
relay_domains =
smtpd_banner = $myhostname ESMTP tern test Postfix
biff = no
append_dot_mydomain = no
alias_maps =
alias_database =
notify_classes =
smtputf8_enable = yes
# Pass messages through as sent: no Date, Message-ID or From added for the client.
local_header_rewrite_clients =
always_add_missing_headers = no
message_size_limit = {size}
mailbox_size_limit = 0

# example.org is the Dovecot's; everything else is refused, nothing leaves.
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = texthash:{conf}/recipients
virtual_transport = {transport}
local_transport = error:5.1.1 local delivery is disabled on this test server
default_transport = {default_transport}
relay_transport = $default_transport
lmtp_destination_recipient_limit = 50

smtpd_sasl_type = dovecot
smtpd_sasl_path = {auth_socket}
smtpd_sasl_auth_enable = no
smtpd_sasl_authenticated_header = no
smtpd_tls_auth_only = yes
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_session_cache_database =
smtpd_tls_loglevel = 0
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = {restrictions}
smtpd_reject_unlisted_recipient = {reject_unlisted}
smtpd_client_restrictions =
smtpd_helo_required = no

# Tests: no waiting on errors, retry deferred mail within seconds.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 1000
in_flow_delay = 0
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 10s
delay_warning_time = 0
bounce_queue_lifetime = 1h
maximal_queue_lifetime = 1h
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
"""

# master.cf: the two submission services on their own loopback ports (no port
# 25), and the internal services of Debian's master.cf, none chrooted.
_MASTER_CF = """\
{host}:{submission} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
{host}:{smtps} inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _print_env(m):
    for k, v in m.env().items():
        print("%s=%s" % (k, shlex.quote(v)))


def _open(root, dovecot_dir=None, deliver=True):
    """An MTA object for ROOT, with its Dovecot from DOVECOT_DIR or the saved one."""
    saved = os.path.join(root, "dovecot_dir")
    if dovecot_dir is None:
        try:
            with open(saved) as f:
                dovecot_dir = f.read().strip()
        except OSError:
            raise MTAError("%s has no saved Dovecot directory: start it first" % root)
    dc = dovecot_mod.Dovecot(root=dovecot_dir, lmtp=True)
    dc._load_ports()
    m = MTA(dc, root=root, deliver=deliver)
    m._load_ports()
    os.makedirs(root, exist_ok=True)
    with open(saved, "w") as f:
        f.write(os.path.abspath(dovecot_dir) + "\n")
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description="A private Postfix for tern's tests.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start", help="start Dovecot (with LMTP) and Postfix, print variables")
    p.add_argument("dir")
    p.add_argument("dovecot_dir")
    p.add_argument("--no-deliver", action="store_true",
                   help="accept and queue, but discard at delivery (benchmarks)")
    for name in ("stop", "env", "status"):
        p = sub.add_parser(name)
        p.add_argument("dir")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "start":
            m = _open(args.dir, args.dovecot_dir, deliver=not args.no_deliver)
            m.start()
            _print_env(m)
            for k, v in m.dc.env().items():
                print("%s=%s" % (k, shlex.quote(v)))
        else:
            m = _open(args.dir)
            if args.cmd == "stop":
                m.stop()
            elif args.cmd == "env":
                _print_env(m)
            elif args.cmd == "status":
                return 0 if m.is_running() else 1
    except (MTAError, dovecot_mod.DovecotError) as e:
        print("mta.py: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
