#!/usr/bin/python3
"""A private Dovecot for tests, the demo and the benchmarks.

Layer: test infrastructure (tests/lib). It never touches the system Dovecot:
everything lives in one directory that the caller names or that is made in
/tmp. The shape follows curl's tests/http/testenv: generate a config, allocate
free loopback ports, start, wait until the server answers, stop by pid.

What one instance holds, under ROOT:

    tls/        a test CA, a server certificate for localhost/127.0.0.1/::1,
                an expired one, a not yet valid one and one for the wrong host
    dovecot.conf, users (passwd-file), ports.json
    run/        base_dir (master.pid, sockets)
    state/      state_dir
    home/USER/Maildir   the mail (Maildir, LAYOUT=fs, UTF-8 folder names)
    dovecot.log

Python use:

    dc = Dovecot()                 # or Dovecot(root="/path", cert="expired")
    dc.start()
    dc.add_message("alice", "INBOX", eml_bytes, flags=("seen",))
    dc.flags("alice", "INBOX", 1)  # the server's view, through doveadm
    dc.stop()                      # or dc.cleanup(), or use it as a context manager

Dovecot(lmtp=True) also delivers by LMTP (RFC 2033) on the unix socket
dc.lmtp_socket and answers SASL requests of an MTA on dc.auth_socket (the
Dovecot SASL protocol that Postfix's smtpd_sasl_type = dovecot speaks); both
sockets are mode 0666 under run/. tests/lib/mta.py uses them. This needs the
Debian package dovecot-lmtpd; has_lmtp() says whether it is installed.

Messages are written straight into the Maildir, byte for byte, before or after
start; within one call they get ascending UIDs in the order given.

Command line use (prints shell-sourceable variables):

    python3 tests/lib/dovecot.py start DIR [--cert good|expired|notyet|wronghost]
    python3 tests/lib/dovecot.py env DIR
    python3 tests/lib/dovecot.py seed DIR USER GENDIR   (a gen-mail.py output dir)
    python3 tests/lib/dovecot.py seed DIR USER FILE.eml... --folder F [--flags seen,flagged]
    python3 tests/lib/dovecot.py doveadm DIR ARGS...
    python3 tests/lib/dovecot.py stop DIR
"""

import argparse
import datetime
import grp
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

DEFAULT_USERS = {"alice": "alice-pw", "bob": "bob-pw"}

# The SPECIAL-USE folders every user gets (RFC 6154), created on first login.
SPECIAL_FOLDERS = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}

# Maildir flag letters (maildir(5)) for the IMAP system flags.
_FLAG_LETTERS = {
    "draft": "D",
    "flagged": "F",
    "answered": "R",
    "seen": "S",
    "deleted": "T",
}

PORT_NAMES = ("imap", "imaps", "pop3", "pop3s")

# The server certificates made for every instance: valid, expired, not yet
# valid, and valid but for another host name. All are signed by the test CA.
CERTS = ("good", "expired", "notyet", "wronghost")


class DovecotError(Exception):
    """The fixture could not set up, start or control the server."""


# The LMTP server of Debian's dovecot-lmtpd.
LMTP_BINARY = "/usr/lib/dovecot/lmtp"


def has_lmtp():
    """True when Dovecot's LMTP server (Debian package dovecot-lmtpd) is installed."""
    return os.access(LMTP_BINARY, os.X_OK)


def _run(argv, check=True, input=None, timeout=60, env=None):
    proc = subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise DovecotError("%s failed (exit %d): %s" % (
            " ".join(shlex.quote(a) for a in argv), proc.returncode,
            proc.stderr.decode("utf-8", "replace").strip()))
    return proc


def free_ports(count, host="127.0.0.1"):
    """Returns COUNT distinct TCP ports that are free on HOST right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_is_free(port, host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _pid_alive(pid):
    """True when PID is a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        state = stat[stat.rindex(")") + 2:].split()[0]
        return state not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return True


class Dovecot:
    """One private Dovecot instance (IMAP, IMAPS, POP3, POP3S on 127.0.0.1)."""

    def __init__(self, root=None, users=None, cert="good", zlib=True, fsync=False, lmtp=False):
        if cert not in CERTS:
            raise ValueError("cert must be one of %s" % ", ".join(CERTS))
        self._own_root = root is None
        if root is None:
            root = tempfile.mkdtemp(prefix="tern-dovecot-")
        self.root = os.path.abspath(root)
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.cert = cert
        self.zlib = zlib
        self.fsync = fsync
        self.lmtp = lmtp
        if lmtp and not has_lmtp():
            raise DovecotError("LMTP wanted but %s is missing: apt-get install dovecot-lmtpd"
                               % LMTP_BINARY)
        self.ports = {}
        self.host = "127.0.0.1"
        self._folder_paths = {}
        self._seq = 0
        if os.geteuid() == 0:
            self.mail_uid = pwd.getpwnam("nobody").pw_uid
            try:
                self.mail_gid = grp.getgrnam("nogroup").gr_gid
            except KeyError:
                self.mail_gid = pwd.getpwnam("nobody").pw_gid
            self.login_user = "dovenull"
            self.internal_user = "dovecot"
        else:
            self.mail_uid = os.geteuid()
            self.mail_gid = os.getegid()
            name = pwd.getpwuid(self.mail_uid).pw_name
            self.login_user = name
            self.internal_user = name

    # ----- paths ---------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    @property
    def conf(self):
        return self.path("dovecot.conf")

    @property
    def ca_file(self):
        return self.path("tls", "ca.pem")

    @property
    def log_file(self):
        return self.path("dovecot.log")

    @property
    def lmtp_socket(self):
        """The LMTP unix socket (with lmtp=True)."""
        return self.path("run", "lmtp-mta")

    @property
    def auth_socket(self):
        """The SASL socket for an MTA (with lmtp=True)."""
        return self.path("run", "auth-mta")

    def cert_file(self, which=None):
        return self.path("tls", "%s.pem" % (which or self.cert))

    def home(self, user):
        return self.path("home", user)

    def password(self, user):
        return self.users[user]

    def fingerprint(self, which=None):
        """The SHA-256 fingerprint of the served certificate (DER), lower-case hex."""
        with open(self.cert_file(which)) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        return hashlib.sha256(der).hexdigest()

    # ----- setup ---------------------------------------------------------

    def setup(self):
        """Creates certificates, users and the config; safe to call again."""
        os.makedirs(self.root, exist_ok=True)
        # The mail uid must be able to reach the homes below ROOT.
        os.chmod(self.root, 0o755)
        self._check_reachable()
        for d in ("run", "state", "home"):
            os.makedirs(self.path(d), exist_ok=True)
        os.chmod(self.path("home"), 0o755)
        self._make_tls()
        self._load_ports()
        if self.ports and self.is_running():
            # A running server keeps its ports and config.
            return
        if not self.ports or not all(_port_is_free(p) for p in self.ports.values()):
            self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
            with open(self.path("ports.json"), "w") as f:
                json.dump(self.ports, f)
        self._write_users()
        self._write_conf()

    def _check_reachable(self):
        """Fails clearly when the mail uid cannot traverse a parent of ROOT."""
        if os.geteuid() != 0:
            return
        path = os.path.dirname(self.root)
        while True:
            st = os.stat(path)
            if not st.st_mode & 0o001 and not (st.st_uid == self.mail_uid and
                                               st.st_mode & 0o100):
                raise DovecotError(
                    "the mail user (uid %d) cannot enter %s (mode %o): put the Dovecot "
                    "directory elsewhere (e.g. under /tmp) or chmod o+x that directory"
                    % (self.mail_uid, path, st.st_mode & 0o777))
            parent = os.path.dirname(path)
            if parent == path:
                return
            path = parent

    def _load_ports(self):
        try:
            with open(self.path("ports.json")) as f:
                ports = json.load(f)
            if set(ports) == set(PORT_NAMES):
                self.ports = {k: int(v) for k, v in ports.items()}
        except (OSError, ValueError):
            pass

    def _openssl(self, *args, cwd=None):
        proc = subprocess.run([OPENSSL] + list(args), cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise DovecotError("openssl %s failed: %s" % (
                args[0], proc.stderr.decode("utf-8", "replace").strip()))

    def _make_tls(self):
        tls = self.path("tls")
        if all(os.path.exists(os.path.join(tls, c + ".pem")) for c in CERTS):
            return
        shutil.rmtree(tls, ignore_errors=True)
        os.makedirs(os.path.join(tls, "db"), exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem",
                      "-days", "3650", "-subj", "/O=tern tests/CN=tern test CA",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=tls)
        with open(os.path.join(tls, "ca.cnf"), "w") as f:
            f.write(_CA_CNF)
        with open(os.path.join(tls, "db", "index.txt"), "w"):
            pass
        with open(os.path.join(tls, "db", "serial"), "w") as f:
            f.write("1000\n")
        today = datetime.datetime.now(datetime.timezone.utc)
        start = (today - datetime.timedelta(days=1)).strftime("%Y%m%d%H%M%SZ")
        end = (today + datetime.timedelta(days=825)).strftime("%Y%m%d%H%M%SZ")
        variants = [
            ("good", "localhost", "ext_good", start, end),
            ("expired", "localhost", "ext_good", "20200101000000Z", "20210101000000Z"),
            ("notyet", "localhost", "ext_good", "20990101000000Z", "21000101000000Z"),
            ("wronghost", "wrong.example.org", "ext_wrong", start, end),
        ]
        for name, cn, ext, not_before, not_after in variants:
            self._openssl("req", "-new", *ec, "-keyout", name + ".key", "-out", name + ".csr",
                          "-subj", "/O=tern tests/CN=" + cn, cwd=tls)
            self._openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem",
                          "-keyfile", "ca.key", "-in", name + ".csr", "-out", name + ".pem",
                          "-startdate", not_before, "-enddate", not_after,
                          "-extensions", ext, "-notext", cwd=tls)
        for name in os.listdir(tls):
            if name.endswith(".key"):
                os.chmod(os.path.join(tls, name), 0o600)

    def _write_users(self):
        lines = []
        for user, password in self.users.items():
            home = self.home(user)
            os.makedirs(home, exist_ok=True)
            os.chown(home, self.mail_uid, self.mail_gid)
            lines.append("%s:{PLAIN}%s:%d:%d::%s::\n" % (user, password, self.mail_uid,
                                                         self.mail_gid, home))
        tmp = self.path("users.tmp")
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path("users"))

    def add_user(self, user, password):
        """Adds a user; Dovecot re-reads the passwd-file, so this works while running."""
        self.add_users({user: password})

    def add_users(self, users):
        """Adds several users {name: password} at once."""
        self.users.update(users)
        self._write_users()
        if self.is_running():
            # The auth process looks at the passwd-file at most once per second
            # (db-passwd-file.c): let that second pass so the next lookup sees it.
            now = int(time.time())
            while int(time.time()) == now:
                time.sleep(0.02)

    def _write_conf(self):
        mailboxes = "".join(
            "  mailbox %s {\n    special_use = %s\n    auto = subscribe\n  }\n" % (name, use)
            for name, use in SPECIAL_FOLDERS.items())
        dh = "/usr/share/dovecot/dh.pem"
        conf = _CONF.format(
            root=self.root,
            instance=os.path.basename(self.root),
            cert=self.cert_file(),
            key=self.path("tls", "%s.key" % self.cert),
            ssl_dh=("ssl_dh = <%s\n" % dh) if os.path.exists(dh) else "",
            first_uid=min(self.mail_uid, 500) if self.mail_uid else 1,
            login_user=self.login_user,
            internal_user=self.internal_user,
            fsync="optimized" if self.fsync else "never",
            plugins="zlib" if self.zlib else "",
            imap_plugins="imap_zlib" if self.zlib else "",
            mailboxes=mailboxes,
            protocols="imap pop3 lmtp" if self.lmtp else "imap pop3",
            lmtp=_LMTP_CONF if self.lmtp else "",
            **{"port_" + k: v for k, v in self.ports.items()})
        with open(self.conf, "w") as f:
            f.write(conf)

    # ----- run -----------------------------------------------------------

    def pid(self):
        try:
            with open(self.path("run", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def is_running(self):
        pid = self.pid()
        return pid is not None and _pid_alive(pid)

    def start(self, timeout=15):
        """Sets up if needed, starts Dovecot and waits until every port answers."""
        if self.is_running():
            self._load_ports()
            self._wait_ready(timeout)
            return
        for attempt in range(3):
            self.setup()
            log_start = os.path.getsize(self.log_file) if os.path.exists(self.log_file) else 0
            # The daemon keeps its inherited stdio open: give it files, not pipes.
            with open(self.path("start.err"), "w+b") as err:
                rc = subprocess.call([DOVECOT, "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=err, timeout=30)
                err.seek(0)
                errtext = err.read().decode("utf-8", "replace").strip()
            if rc != 0:
                raise DovecotError("dovecot did not start: %s\n%s" % (
                    errtext, self._log_tail(log_start)))
            try:
                self._wait_ready(timeout)
                return
            except DovecotError:
                log = self._log_tail(log_start)
                self.stop()
                if "Address already in use" in log and attempt < 2:
                    # Another process took a port between allocation and bind.
                    self.ports = {}
                    try:
                        os.unlink(self.path("ports.json"))
                    except OSError:
                        pass
                    continue
                raise DovecotError("dovecot did not become ready:\n" + log)

    def _log_tail(self, start=0):
        try:
            with open(self.log_file, "rb") as f:
                f.seek(start)
                return f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        expect = {"imap": b"* OK", "pop3": b"+OK"}
        pending = ["imap", "pop3", "imaps", "pop3s"]
        while pending:
            if time.monotonic() > deadline:
                raise DovecotError("ports %s did not answer" % ", ".join(pending))
            name = pending[0]
            if name in expect:
                if self._greets(self.ports[name], expect[name]):
                    pending.pop(0)
                    continue
            elif self._accepts(self.ports[name]):
                pending.pop(0)
                continue
            pid = self.pid()
            if pid is not None and not _pid_alive(pid):
                raise DovecotError("dovecot exited")
            time.sleep(0.05)

    def _greets(self, port, prefix):
        try:
            with socket.create_connection((self.host, port), timeout=2) as s:
                data = b""
                while b"\n" not in data:
                    chunk = s.recv(512)
                    if not chunk:
                        break
                    data += chunk
                return data.startswith(prefix)
        except OSError:
            return False

    def _accepts(self, port):
        try:
            with socket.create_connection((self.host, port), timeout=2):
                return True
        except OSError:
            return False

    def stop(self, timeout=10):
        """Stops the server by the pid in base_dir/master.pid and waits for it."""
        pid = self.pid()
        if pid is None or not _pid_alive(pid):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.05)
        # Give the children a moment to release the listening sockets.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(
                _port_is_free(p) for p in self.ports.values()):
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
        """The variables a shell or a test needs to reach this server."""
        return {
            "DOVECOT_DIR": self.root,
            "DOVECOT_CONF": self.conf,
            "DOVECOT_PID": str(self.pid() or ""),
            "DOVECOT_HOST": self.host,
            "IMAP_PORT": str(self.ports.get("imap", "")),
            "IMAPS_PORT": str(self.ports.get("imaps", "")),
            "POP3_PORT": str(self.ports.get("pop3", "")),
            "POP3S_PORT": str(self.ports.get("pop3s", "")),
            "DOVECOT_CA_FILE": self.ca_file,
            "DOVECOT_FINGERPRINT": "sha256:" + self.fingerprint(),
            "DOVECOT_USERS": " ".join(self.users),
            **{"%s_PASSWORD" % u.upper(): p for u, p in self.users.items()},
            **({"DOVECOT_LMTP_SOCKET": self.lmtp_socket,
                "DOVECOT_AUTH_SOCKET": self.auth_socket} if self.lmtp else {}),
        }

    def doveadm(self, *args, check=True, input=None):
        """Runs doveadm against this instance; returns the stdout as text."""
        proc = _run([DOVEADM, "-c", self.conf] + list(args), check=check, input=input)
        return proc.stdout.decode("utf-8", "replace")

    def folders(self, user, subscribed=False):
        """The folder names of USER (UTF-8), from doveadm mailbox list."""
        args = ["mailbox", "list", "-u", user]
        if subscribed:
            args.insert(2, "-s")
        return [l for l in self.doveadm(*args).splitlines() if l]

    def status(self, user, folder, fields="messages unseen uidnext"):
        """A dict of doveadm mailbox status fields (ints) for FOLDER."""
        out = self.doveadm("-f", "flow", "mailbox", "status", "-u", user, fields, folder)
        result = {}
        for item in shlex.split(out):
            if "=" in item:
                k, v = item.split("=", 1)
                result[k] = int(v) if v.isdigit() else v
        return result

    def fetch(self, user, folder, fields="uid flags", query="all"):
        """Messages of FOLDER as dicts of doveadm fetch FIELDS (uid as int)."""
        out = self.doveadm("-f", "pager", "fetch", "-u", user, fields, "mailbox", folder,
                           *query.split())
        messages = []
        for record in out.split("\f"):
            msg = {}
            key = None
            for line in record.strip("\n").split("\n"):
                if ": " in line and not line.startswith(" ") and line.split(": ", 1)[0] in \
                        fields.split():
                    key, value = line.split(": ", 1)
                    msg[key] = value
                elif line.endswith(":") and line[:-1] in fields.split():
                    key = line[:-1]
                    msg[key] = ""
                elif key is not None:
                    msg[key] += "\n" + line
            if msg:
                if "uid" in msg:
                    msg["uid"] = int(msg["uid"])
                messages.append(msg)
        return messages

    def flags(self, user, folder, uid):
        """The set of IMAP flags of one message, as doveadm reports them."""
        for m in self.fetch(user, folder, "uid flags", "uid %d" % uid):
            if m["uid"] == uid:
                return set(m.get("flags", "").split())
        raise DovecotError("no uid %d in %s" % (uid, folder))

    def search(self, user, folder, query):
        """The UIDs (ascending) that Dovecot's own SEARCH finds for QUERY in FOLDER.

        QUERY is doveadm's search query, e.g. "or from bob subject lunch".
        """
        out = self.doveadm("search", "-u", user, "mailbox", folder, "(",
                           *shlex.split(query), ")")
        uids = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                uids.append(int(parts[1]))
        return sorted(uids)

    def uid_of(self, user, folder, message_id):
        """The UID of the message with MESSAGE_ID (without <>) in FOLDER, or None."""
        out = self.doveadm("search", "-u", user, "mailbox", folder,
                           "header", "message-id", "<%s>" % message_id)
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                return int(parts[1])
        return None

    def logins(self, user, protocol=None):
        """The server's log lines of successful logins by USER (oldest first)."""
        lines = []
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if " Login: user=<%s>," % user not in line:
                        continue
                    if protocol and (" %s-login:" % protocol) not in line:
                        continue
                    lines.append(line.rstrip("\n"))
        except OSError:
            pass
        return lines

    # ----- seeding -------------------------------------------------------

    def create_folder(self, user, folder, subscribe=True):
        """Creates FOLDER for USER (no error if it exists)."""
        if not self.is_running():
            self._offline_folder(user, folder, subscribe)
            return
        args = ["mailbox", "create", "-u", user]
        if subscribe:
            args.append("-s")
        proc = _run([DOVEADM, "-c", self.conf] + args + [folder], check=False)
        if proc.returncode != 0 and b"already exists" not in proc.stderr:
            raise DovecotError("cannot create %s: %s" % (
                folder, proc.stderr.decode("utf-8", "replace").strip()))
        self._folder_paths.pop((user, folder), None)

    def _offline_folder_path(self, user, folder):
        root = os.path.join(self.home(user), "Maildir")
        return root if folder.upper() == "INBOX" else os.path.join(root, *folder.split("/"))

    def _offline_folder(self, user, folder, subscribe=True):
        """Creates FOLDER on disk while the server is down; returns its path.

        This is the layout of the config (maildir, LAYOUT=fs, UTF-8 names, "/"
        as separator): INBOX is ~/Maildir itself, other folders are directories
        below it, and ~/Maildir/subscriptions lists subscribed folders, one per
        line with the hierarchy separated by tabs, after a "V\t2" header.
        """
        root = os.path.join(self.home(user), "Maildir")
        if any(p in ("", ".", "..") for p in folder.split("/")):
            raise DovecotError("bad folder name %r" % folder)
        path = self._offline_folder_path(user, folder)
        for sub in ("cur", "new", "tmp"):
            self._makedirs_owned(os.path.join(path, sub))
        if subscribe and folder.upper() != "INBOX":
            subs = os.path.join(root, "subscriptions")
            entry = folder.replace("/", "\t")
            try:
                with open(subs, encoding="utf-8") as f:
                    lines = f.read().split("\n")
            except FileNotFoundError:
                lines = ["V\t2", ""]
            if entry not in lines[2:]:
                body = [l for l in lines[2:] if l] + [entry]
                with open(subs, "w", encoding="utf-8") as f:
                    f.write("V\t2\n\n" + "".join(l + "\n" for l in body))
                os.chown(subs, self.mail_uid, self.mail_gid)
        return path

    def _ensure_user(self, user):
        if not self.is_running():
            self._offline_folder(user, "INBOX")
            return
        if not os.path.isdir(os.path.join(self.home(user), "Maildir", "cur")):
            # A first access makes Dovecot create INBOX and the special folders.
            self.doveadm("mailbox", "status", "-u", user, "messages", "INBOX")

    def folder_path(self, user, folder, create=True):
        """The Maildir directory of FOLDER, creating the folder when asked."""
        key = (user, folder)
        if key in self._folder_paths:
            return self._folder_paths[key]
        if not self.is_running():
            if not create and not os.path.isdir(self._offline_folder_path(user, folder)):
                raise DovecotError("no folder %s" % folder)
            return self._offline_folder(user, folder)
        self._ensure_user(user)
        if create and folder.upper() != "INBOX" and folder not in self.folders(user):
            self.create_folder(user, folder)
        path = self.doveadm("mailbox", "path", "-u", user, folder).strip()
        if not path:
            raise DovecotError("no path for %s" % folder)
        for sub in ("cur", "new", "tmp"):
            self._makedirs_owned(os.path.join(path, sub))
        self._folder_paths[key] = path
        return path

    def _makedirs_owned(self, path):
        """Creates PATH and its missing parents, owned by the mail uid."""
        if os.path.isdir(path):
            return
        self._makedirs_owned(os.path.dirname(path))
        os.mkdir(path, 0o700)
        os.chown(path, self.mail_uid, self.mail_gid)

    def _keyword_letters(self, path, keywords):
        """Maps keywords to Maildir letters via dovecot-keywords, adding new ones."""
        kwfile = os.path.join(path, "dovecot-keywords")
        known = {}
        try:
            with open(kwfile) as f:
                for line in f:
                    idx, _, name = line.rstrip("\n").partition(" ")
                    if idx.isdigit() and name:
                        known[name] = int(idx)
        except FileNotFoundError:
            pass
        changed = False
        for kw in keywords:
            if kw not in known:
                free = sorted(set(range(26)) - set(known.values()))
                if not free:
                    raise DovecotError("more than 26 keywords in %s" % path)
                known[kw] = free[0]
                changed = True
        if changed:
            tmp = kwfile + ".tern-tmp"
            with open(tmp, "w") as f:
                for name, idx in sorted(known.items(), key=lambda kv: kv[1]):
                    f.write("%d %s\n" % (idx, name))
            os.chown(tmp, self.mail_uid, self.mail_gid)
            os.replace(tmp, kwfile)
        return "".join(chr(ord("a") + known[kw]) for kw in keywords)

    def add_message(self, user, folder, data, flags=(), keywords=(), date=None):
        """Stores DATA (bytes of one message) in FOLDER of USER.

        The file is written straight into the Maildir, so it works before and after
        start, keeps the bytes exactly, and messages get UIDs in the order they
        were added. FLAGS are system flag names (seen, answered, flagged, deleted,
        draft); KEYWORDS are kept as they are ($label). DATE (datetime or epoch)
        becomes the INTERNALDATE.
        """
        self.add_messages(user, folder, [(data, flags, keywords, date)])

    def add_messages(self, user, folder, messages):
        """Like add_message for an iterable of (data, flags, keywords, date)."""
        path = self.folder_path(user, folder)
        host = "tern-seed"
        base = int(time.time()) - 10 ** 6
        count = 0
        for data, flags, keywords, date in messages:
            letters = ""
            for flag in flags:
                flag = flag.lower().lstrip("\\")
                if flag not in _FLAG_LETTERS:
                    raise ValueError("unknown flag %r" % flag)
                letters += _FLAG_LETTERS[flag]
            if keywords:
                letters += self._keyword_letters(path, list(keywords))
            letters = "".join(sorted(set(letters)))
            self._seq += 1
            # The leading time orders the new files, and so their UIDs.
            name = "%d.M%06dP%d.%s,S=%d:2,%s" % (base + self._seq, self._seq % 1000000,
                                                 os.getpid(), host, len(data), letters)
            tmp = os.path.join(path, "tmp", name)
            with open(tmp, "wb") as f:
                f.write(data)
            os.chown(tmp, self.mail_uid, self.mail_gid)
            if date is not None:
                ts = date.timestamp() if hasattr(date, "timestamp") else float(date)
                os.utime(tmp, (ts, ts))
            os.rename(tmp, os.path.join(path, "cur", name))
            count += 1
        # Make Dovecot notice the files and assign UIDs now, in order. A stopped
        # server does the same on the first access after start.
        if self.is_running():
            self.doveadm("force-resync", "-u", user, folder)
        return count

    def seed_dir(self, user, gendir):
        """Seeds the output of contrib/demo/gen-mail.py (GENDIR/manifest.jsonl)."""
        by_folder = {}
        order = []
        with open(os.path.join(gendir, "manifest.jsonl"), encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                entry = json.loads(line)
                folder = entry["folder"]
                if folder not in by_folder:
                    by_folder[folder] = []
                    order.append(folder)
                by_folder[folder].append(entry)
        total = 0
        for folder in order:
            def gen(entries=by_folder[folder]):
                for e in entries:
                    with open(os.path.join(gendir, e["file"]), "rb") as mf:
                        data = mf.read()
                    date = None
                    if e.get("internaldate"):
                        date = datetime.datetime.fromisoformat(e["internaldate"])
                    yield data, e.get("flags", ()), e.get("keywords", ()), date
            total += self.add_messages(user, folder, gen())
        return total


_CA_CNF = """\
[ ca ]
default_ca = test_ca

[ test_ca ]
dir = .
database = db/index.txt
new_certs_dir = db
serial = db/serial
default_md = sha256
policy = any_name
unique_subject = no
copy_extensions = none

[ any_name ]
organizationName = optional
commonName = supplied

[ ext_good ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1

[ ext_wrong ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:wrong.example.org
"""

_CONF = """\
# A private test instance made by tests/lib/dovecot.py; not a system config.
instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
listen = 127.0.0.1
protocols = {protocols}
login_greeting = tern test Dovecot ready.
# No stats: a login process that waits for the stats handshake delays a stop by 5 s.
stats_writer_socket_path =

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
{ssl_dh}ssl_min_protocol = TLSv1.2

disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {root}/users
}}

first_valid_uid = {first_uid}
default_login_user = {login_user}
default_internal_user = {internal_user}

mail_location = maildir:~/Maildir:LAYOUT=fs:UTF-8
mailbox_list_index = no
mail_fsync = {fsync}
mail_plugins = $mail_plugins {plugins}

namespace inbox {{
  inbox = yes
  separator = /
  prefix =
{mailboxes}}}

protocol imap {{
  mail_plugins = $mail_plugins {imap_plugins}
}}

# No auth penalty: one test's failed login must not delay the next test's logins
# by seconds (Dovecot's documented way to disable it).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port_imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port_imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port_pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {port_pop3s}
    ssl = yes
  }}
}}
{lmtp}"""

# With lmtp=True: LMTP delivery and SASL for a private MTA, on unix sockets in
# base_dir that the MTA's unprivileged processes may use (mode 0666; nothing
# outside this machine can reach them).
_LMTP_CONF = """
postmaster_address = postmaster@example.org
lmtp_rcpt_check_quota = no
service lmtp {
  unix_listener lmtp-mta {
    mode = 0666
  }
}
service auth {
  unix_listener auth-mta {
    mode = 0666
  }
}
"""


def _print_env(dc):
    for k, v in dc.env().items():
        print("%s=%s" % (k, shlex.quote(v)))


def main(argv=None):
    ap = argparse.ArgumentParser(description="A private Dovecot for tern's tests and demo.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start", help="start (set up if needed) and print variables")
    p.add_argument("dir")
    p.add_argument("--cert", default="good", choices=CERTS)
    p.add_argument("--lmtp", action="store_true",
                   help="also LMTP and an MTA's SASL socket (for tests/lib/mta.py)")
    p = sub.add_parser("stop", help="stop the server of DIR")
    p.add_argument("dir")
    p = sub.add_parser("env", help="print the variables of DIR")
    p.add_argument("dir")
    p = sub.add_parser("status", help="exit 0 when the server of DIR runs")
    p.add_argument("dir")
    p = sub.add_parser("seed", help="add messages")
    p.add_argument("dir")
    p.add_argument("user")
    p.add_argument("source", nargs="+", help="a gen-mail.py output dir, or .eml files")
    p.add_argument("--folder", default="INBOX")
    p.add_argument("--flags", default="")
    p = sub.add_parser("doveadm", help="run doveadm against DIR's config")
    p.add_argument("dir")
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)

    cert = "good"
    lmtp = False
    conf = os.path.join(args.dir, "dovecot.conf")
    if args.cmd == "start":
        cert = args.cert
        lmtp = args.lmtp
    elif os.path.exists(conf):
        with open(conf) as f:
            for line in f:
                if line.startswith("ssl_cert = <"):
                    cert = os.path.basename(line.strip()).rsplit(".", 1)[0]
                elif line.startswith("protocols = ") and "lmtp" in line.split():
                    lmtp = True
    try:
        dc = Dovecot(root=args.dir, cert=cert, lmtp=lmtp)
    except DovecotError as e:
        print("dovecot.py: %s" % e, file=sys.stderr)
        return 1
    dc._load_ports()
    try:
        if args.cmd == "start":
            dc.start()
            _print_env(dc)
        elif args.cmd == "stop":
            dc.stop()
        elif args.cmd == "env":
            _print_env(dc)
        elif args.cmd == "status":
            return 0 if dc.is_running() else 1
        elif args.cmd == "seed":
            total = 0
            flags = [f for f in args.flags.split(",") if f]
            for src in args.source:
                if os.path.isdir(src):
                    total += dc.seed_dir(args.user, src)
                else:
                    with open(src, "rb") as f:
                        total += dc.add_messages(args.user, args.folder,
                                                 [(f.read(), flags, (), None)])
            print("seeded %d messages" % total, file=sys.stderr)
        elif args.cmd == "doveadm":
            proc = subprocess.run([DOVEADM, "-c", dc.conf] + args.args)
            return proc.returncode
    except DovecotError as e:
        print("dovecot.py: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
