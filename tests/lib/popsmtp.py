"""Helpers shared by the POP3 and SMTP integration tests.

Layer: test infrastructure (tests/lib), used by tests/integration/test_pop3.py,
test_smtp.py and test_fake_pop3_smtp.py. It knows the parts of the contract
those tests rely on beyond tests/lib/tern.py:

  - whether this tern has a command at all (unsupported_reason): a tern that
    answers `unsupported` with "... is not available in this version" makes
    the tests skip with that reason instead of failing, until the command
    exists;
  - the local Maildir folders under cache_dir/mail/ (maildir_files), where
    `pop` stores what it downloads (pop3_folder, default Inbox) and a
    POP-only account keeps its Sent copies;
  - the crash hook of the C side (STYLE.md §8, docs/DECISIONS.md): with
    TERN_TEST_KILL_AT=N in its environment, tern kills itself with SIGKILL at
    its N-th durable step (of `pop`: after the RETRs, after the PENDING
    commit, after the renames, after the STORED commit, after the DELEs,
    after QUIT; of the outbox likewise), counted from 1 in that process; a
    run with fewer steps ends normally. killed_by_hook() accepts that death
    (and an _exit(KILL_STATUS), the shell's view of the same);
  - TERN_TEST_NOW=SECONDS: the clock (seconds since the epoch) tern uses for
    its schedules: pop3_keep_days (the download time it records and the age
    it compares) and the outbox's retry backoff (a 4xx sets a next attempt
    that `flush` waits for), so a test can let days pass (later());
  - running tern in the background and killing it with SIGKILL (run_killed).

Messages are compared as the wire carries them (CRLF), or all with CRLF
turned into LF: a Maildir may hold either form, as long as the whole store
uses one (same_message).
"""

import os
import signal
import subprocess
import time

import tern as tern_mod

# The exit status of a tern that the TERN_TEST_KILL_AT hook stopped, as a
# shell shows kill -9 (128 + 9); subprocess reports the signal as -9.
KILL_STATUS = 137

_SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                    "ERROR: UndefinedBehaviorSanitizer", "SUMMARY: AddressSanitizer")


def killed_by_hook(res):
    """True when RES is a run that the TERN_TEST_KILL_AT hook ended."""
    return res.rc in (-signal.SIGKILL, KILL_STATUS)


def run(ws, config, commands, env=None, timeout=120, preexec_fn=None):
    """Runs tern like Workspace.run, but a death by signal is returned, not raised
    (the crash hook kills tern on purpose); a sanitizer report still raises."""
    argv = [tern_mod.tern_bin(), "-F", config]
    for c in commands:
        argv += ["-e", c]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ws.env(env), cwd=ws.path("home"),
                            start_new_session=True, preexec_fn=preexec_fn)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        res = tern_mod.Result(argv, None, out, err, time.monotonic() - t0)
        raise tern_mod.TernError("tern did not finish within %ds\n%s" % (timeout,
                                                                       res.describe()))
    res = tern_mod.Result(argv, proc.returncode, out, err, time.monotonic() - t0)
    for mark in _SANITIZER_MARKS:
        if mark in res.stderr:
            raise tern_mod.TernError("sanitizer report\n" + res.describe())
    return res


def later(days=7):
    """The environment for a tern that believes DAYS have passed (TERN_TEST_NOW)."""
    return {"TERN_TEST_NOW": str(int(time.time()) + int(days * 86400))}


def unsupported_reason(res, word):
    """The skip reason when RES says that command WORD is not in this tern, else None."""
    for err in res.errors:
        msg = err.get("message", "")
        if err.get("code") == "unsupported" and "not available" in msg and word in msg:
            return "tern has no '%s' command yet (%s)" % (word, msg)
    return None


def maildir_files(folder_path, include_tmp=False):
    """{relative path: bytes} of the messages in the Maildir FOLDER_PATH (new/ and cur/,
    and tmp/ when asked). A missing folder is empty."""
    out = {}
    subs = ("new", "cur", "tmp") if include_tmp else ("new", "cur")
    for sub in subs:
        d = os.path.join(folder_path, sub)
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        for name in names:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    out[os.path.join(sub, name)] = f.read()
    return out


def tmp_files(folder_path):
    try:
        return sorted(os.listdir(os.path.join(folder_path, "tmp")))
    except FileNotFoundError:
        return []


def lf(data):
    return data.replace(b"\r\n", b"\n")


def same_message(stored, wire):
    """True when STORED is WIRE byte for byte, or WIRE with every CRLF made LF."""
    return stored == wire or stored == lf(wire)


def match_messages(stored, expected):
    """Pairs every stored message with an expected one (each used once).

    Returns (unmatched_stored, missing_expected, duplicates): stored blobs that
    are no expected message at all (partial or corrupt), expected messages not
    stored, and expected messages stored more than once.
    """
    counts = [0] * len(expected)
    unmatched = []
    for blob in stored:
        hit = None
        for i, e in enumerate(expected):
            if same_message(blob, e):
                hit = i
                if counts[i] == 0:
                    break
        if hit is None:
            unmatched.append(blob)
        else:
            counts[hit] += 1
    missing = [expected[i] for i, n in enumerate(counts) if n == 0]
    dups = [expected[i] for i, n in enumerate(counts) if n > 1]
    return unmatched, missing, dups


def last_with(res, key):
    """The last result object of RES that has KEY, or None."""
    for obj in reversed(res.results):
        if key in obj:
            return obj
    return None


def run_killed(ws, config, commands, delay, env=None, timeout=60):
    """Starts tern with COMMANDS, sends SIGKILL after DELAY seconds (when it is still
    running) and returns (exit status or -9, stdout bytes, stderr text, killed)."""
    argv = [tern_mod.tern_bin(), "-F", config]
    for c in commands:
        argv += ["-e", c]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ws.env(env), cwd=ws.path("home"),
                            start_new_session=True)
    killed = False
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.001)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        except ProcessLookupError:
            pass
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return proc.returncode, out, err.decode("utf-8", "replace"), killed
