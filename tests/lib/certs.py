#!/usr/bin/python3
"""Test certificates for the TLS cases of the test matrix (TESTMATRIX T5).

Layer: tests/lib, shared by the integration tests and the fake peers. It uses
only the openssl command-line tool and the standard library.

make_certs(DIR) writes into DIR (created when missing):

    ca.pem / ca.key                  a test CA (the trust anchor: tls_ca_file)
    server.pem / server.key          localhost, 127.0.0.1 and ::1, signed by the CA
    expired.pem / expired.key        same names, signed by the CA, valid 2000-2001
    notyet.pem / notyet.key          same names, signed by the CA, valid from 2090
    wronghost.pem / wronghost.key    signed by the CA for wrong.example.org only
    selfsigned.pem / selfsigned.key  localhost and 127.0.0.1, signed by itself

and returns a Certs object with those paths, the SHA-256 fingerprint of the
server certificate (lower-case hex without colons, the form a
"tls = fingerprint:sha256:HEX" config line takes) and a dictionary of the
fingerprints of every certificate, keyed by name ("server", "selfsigned", ...).

From the shell, "python3 tests/lib/certs.py DIR" writes the files and prints
shell-sourceable variables (CA_FILE=..., SERVER_CERT=..., SERVER_FP=...).

Keys are EC P-256, which openssl generates in milliseconds. Dates outside the
validity window come from "openssl ca -startdate/-enddate", which OpenSSL 3.0
supports (x509 -not_before only arrived in 3.4).
"""

import hashlib
import os
import shlex
import ssl
import subprocess
import sys
from dataclasses import dataclass, field

SERVER_NAMES = ("DNS:localhost", "IP:127.0.0.1", "IP:::1")
WRONG_NAMES = ("DNS:wrong.example.org",)

# The window of the expired and the not-yet-valid certificate.
EXPIRED_DATES = ("20000101000000Z", "20010101000000Z")
NOTYET_DATES = ("20900101000000Z", "20910101000000Z")

CA_CONF = """\
[ ca ]
default_ca = testca

[ testca ]
dir = {dir}
database = $dir/ca-index.txt
new_certs_dir = $dir/ca-newcerts
serial = $dir/ca-serial
default_md = sha256
policy = policy_any
copy_extensions = none
unique_subject = no
email_in_dn = no

[ policy_any ]
commonName = supplied

[ req ]
distinguished_name = req_dn
prompt = no

[ req_dn ]
CN = tern test CA

[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

LEAF_EXT = """\
[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}

[ selfsigned ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
subjectAltName = {san}
"""


@dataclass
class Certs:
    """Paths of the generated files and the certificates' fingerprints."""

    dir: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    expired_cert: str
    expired_key: str
    notyet_cert: str
    notyet_key: str
    wronghost_cert: str
    wronghost_key: str
    selfsigned_cert: str
    selfsigned_key: str
    fingerprint: str
    fingerprints: dict = field(default_factory=dict)

    def pair(self, name):
        """(cert, key) of "server", "expired", "notyet", "wronghost" or "selfsigned"."""
        return getattr(self, name + "_cert"), getattr(self, name + "_key")


def _openssl(args, cwd):
    proc = subprocess.run(["openssl"] + args, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args),
                                                       proc.stderr.decode(errors="replace")))
    return proc.stdout


def fingerprint(pem_path):
    """SHA-256 of the DER form of the certificate in PEM_PATH, lower-case hex."""
    with open(pem_path, "r", encoding="ascii") as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    return hashlib.sha256(der).hexdigest()


def _newkey(d, name):
    key = os.path.join(d, name + ".key")
    _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", key], d)
    os.chmod(key, 0o600)
    return key


def _ext_file(d, name, names):
    path = os.path.join(d, name + ".ext")
    with open(path, "w", encoding="ascii") as f:
        f.write(LEAF_EXT.format(san=", ".join(names)))
    return path


def _signed(d, conf, name, cn, names, dates):
    """A leaf certificate for NAMES signed by the CA, valid between DATES."""
    key = _newkey(d, name)
    csr = os.path.join(d, name + ".csr")
    pem = os.path.join(d, name + ".pem")
    ext = _ext_file(d, name, names)
    _openssl(["req", "-new", "-key", key, "-subj", "/CN=" + cn, "-out", csr], d)
    args = ["ca", "-batch", "-notext", "-config", conf, "-cert", "ca.pem", "-keyfile", "ca.key",
            "-in", csr, "-out", pem, "-extfile", ext, "-extensions", "leaf"]
    if dates is None:
        args += ["-days", "3650"]
    else:
        args += ["-startdate", dates[0], "-enddate", dates[1]]
    _openssl(args, d)
    os.unlink(csr)
    return pem, key


def make_certs(directory):
    """Writes every certificate into DIRECTORY and returns a Certs."""
    d = os.path.abspath(directory)
    os.makedirs(d, exist_ok=True)
    os.makedirs(os.path.join(d, "ca-newcerts"), exist_ok=True)
    with open(os.path.join(d, "ca-index.txt"), "w", encoding="ascii"):
        pass
    with open(os.path.join(d, "ca-serial"), "w", encoding="ascii") as f:
        f.write("1000\n")
    conf = os.path.join(d, "ca.cnf")
    with open(conf, "w", encoding="ascii") as f:
        f.write(CA_CONF.format(dir=d))

    ca_key = _newkey(d, "ca")
    ca_cert = os.path.join(d, "ca.pem")
    _openssl(["req", "-new", "-x509", "-config", conf, "-extensions", "v3_ca", "-key", ca_key,
              "-days", "3650", "-out", ca_cert], d)

    server = _signed(d, conf, "server", "localhost", SERVER_NAMES, None)
    expired = _signed(d, conf, "expired", "localhost", SERVER_NAMES, EXPIRED_DATES)
    notyet = _signed(d, conf, "notyet", "localhost", SERVER_NAMES, NOTYET_DATES)
    wrong = _signed(d, conf, "wronghost", "wrong.example.org", WRONG_NAMES, None)

    ss_key = _newkey(d, "selfsigned")
    ss_cert = os.path.join(d, "selfsigned.pem")
    ss_ext = _ext_file(d, "selfsigned", SERVER_NAMES)
    _openssl(["req", "-new", "-x509", "-key", ss_key, "-subj", "/CN=localhost", "-days", "3650",
              "-config", ss_ext, "-extensions", "selfsigned", "-out", ss_cert], d)

    certs = Certs(dir=d, ca_cert=ca_cert, ca_key=ca_key,
                  server_cert=server[0], server_key=server[1],
                  expired_cert=expired[0], expired_key=expired[1],
                  notyet_cert=notyet[0], notyet_key=notyet[1],
                  wronghost_cert=wrong[0], wronghost_key=wrong[1],
                  selfsigned_cert=ss_cert, selfsigned_key=ss_key,
                  fingerprint=fingerprint(server[0]))
    for name in ("ca", "server", "expired", "notyet", "wronghost", "selfsigned"):
        path = ca_cert if name == "ca" else certs.pair(name)[0]
        certs.fingerprints[name] = fingerprint(path)
    return certs


def main(argv):
    if len(argv) != 2 or argv[1].startswith("-"):
        sys.stderr.write("usage: certs.py DIR\n")
        return 2
    c = make_certs(argv[1])
    out = {
        "CERT_DIR": c.dir,
        "CA_FILE": c.ca_cert,
        "SERVER_CERT": c.server_cert,
        "SERVER_KEY": c.server_key,
        "SERVER_FP": c.fingerprint,
    }
    for name in ("expired", "notyet", "wronghost", "selfsigned"):
        cert, key = c.pair(name)
        out[name.upper() + "_CERT"] = cert
        out[name.upper() + "_KEY"] = key
        out[name.upper() + "_FP"] = c.fingerprints[name]
    for k, v in out.items():
        print("%s=%s" % (k, shlex.quote(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
