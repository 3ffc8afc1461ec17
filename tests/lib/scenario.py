#!/usr/bin/python3
"""Runner of the headless scenarios in tests/scenarios/*.t.

Layer: test infrastructure (tests/lib). One .t file is one story a user would
tell. The runner starts one private Dovecot, gives every scenario a fresh
user and mailbox, seeds it, runs the commands through `tern --batch`, and
compares the JSON Lines, the exit status, saved files and the server's state
with what the file expects. The format is in tests/scenarios/README.md.

    python3 tests/lib/scenario.py [--verbose] [FILE.t ...]

Prints one TAP line per scenario ("ok 1 - name: story") with the details of a
failure as "#" comments, and exits 1 when any scenario failed.
"""

import argparse
import glob
import hashlib
import json
import os
import re
import shlex
import sys

# Keep the source tree free of __pycache__ directories.
sys.dont_write_bytecode = True

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dovecot as dovecot_mod  # noqa: E402
import tern as tern_mod  # noqa: E402

SECTIONS = ("story", "setup", "commands", "expect", "exit", "files", "server")


class ScenarioError(Exception):
    """A .t file that does not follow the format."""


class Scenario:
    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)
        self.story = ""
        self.setup = []       # (folder, kind, args, options, inline_bytes)
        self.commands = []
        self.expect = []      # dict or "..."
        self.exit = 0
        self.files = []       # (path, {size, sha256, same_as})
        self.server = []      # shlex-split lines
        self._parse()

    def _parse(self):
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        section = None
        seen = set()
        i = 0
        while i < len(lines):
            raw = lines[i]
            i += 1
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            if not raw[0].isspace():
                m = re.match(r"^([a-z]+):\s*(.*)$", raw)
                if not m or m.group(1) not in SECTIONS:
                    raise ScenarioError("line %d: unknown section %r" % (i, raw))
                section = m.group(1)
                if section in seen:
                    raise ScenarioError("line %d: section %s twice" % (i, section))
                seen.add(section)
                rest = m.group(2).strip()
                if section == "story":
                    self.story = rest
                elif section == "exit":
                    if not rest.isdigit():
                        raise ScenarioError("line %d: exit wants a number" % i)
                    self.exit = int(rest)
                elif rest:
                    raise ScenarioError("line %d: %s: takes indented lines" % (i, section))
                continue
            text = raw.strip()
            if section is None:
                raise ScenarioError("line %d: text before the first section" % i)
            if section == "story":
                self.story = (self.story + " " + text).strip()
            elif section == "setup":
                inline = []
                while i < len(lines) and lines[i].lstrip().startswith("|"):
                    body = lines[i].lstrip()[1:]
                    inline.append(body[1:] if body.startswith(" ") else body)
                    i += 1
                self.setup.append(self._parse_setup(text, inline, i))
            elif section == "commands":
                self.commands.append(text)
            elif section == "expect":
                if text == "...":
                    self.expect.append("...")
                else:
                    try:
                        obj = json.loads(text)
                    except ValueError as e:
                        raise ScenarioError("line %d: expected JSON: %s" % (i, e))
                    if not isinstance(obj, dict):
                        raise ScenarioError("line %d: expected a JSON object" % i)
                    self.expect.append(obj)
            elif section == "files":
                words = shlex.split(text)
                checks = {}
                for w in words[1:]:
                    k, sep, v = w.partition("=")
                    if not sep or k not in ("size", "sha256", "same_as"):
                        raise ScenarioError("line %d: bad file check %r" % (i, w))
                    checks[k] = v
                self.files.append((words[0], checks))
            elif section == "server":
                self.server.append((i, shlex.split(text)))
            elif section == "exit":
                raise ScenarioError("line %d: exit takes no indented lines" % i)
        for need in ("story", "commands", "expect"):
            if need not in seen:
                raise ScenarioError("missing section %s" % need)

    @staticmethod
    def _parse_setup(text, inline, lineno):
        m = re.match(r'^("[^"]*"|\S+):\s*(.*)$', text)
        if not m:
            raise ScenarioError("line %d: setup lines are FOLDER: WHAT" % lineno)
        folder = m.group(1).strip('"')
        words = shlex.split(m.group(2))
        if not words:
            raise ScenarioError("line %d: nothing to set up" % lineno)
        kind = words[0]
        args, options = [], {}
        for w in words[1:]:
            k, sep, v = w.partition("=")
            if sep and k in ("flags", "keywords"):
                options[k] = [x for x in v.split(",") if x]
            elif sep:
                raise ScenarioError("line %d: unknown option %s" % (lineno, k))
            else:
                args.append(w)
        if kind not in ("bulk", "demo", "inline", "empty"):
            raise ScenarioError("line %d: unknown setup kind %s" % (lineno, kind))
        if kind == "inline" and not inline:
            raise ScenarioError("line %d: inline wants '|' lines" % lineno)
        if kind == "bulk" and (len(args) != 1 or not args[0].isdigit()):
            raise ScenarioError("line %d: bulk wants a count" % lineno)
        if kind == "demo" and not args:
            raise ScenarioError("line %d: demo wants message names" % lineno)
        data = ("\r\n".join(inline) + "\r\n").encode("utf-8") if inline else None
        return folder, kind, args, options, data


# ----- matching ----------------------------------------------------------------

def match_value(expected, actual, where):
    """Returns None when ACTUAL matches EXPECTED, else a sentence saying why."""
    if isinstance(expected, str) and expected == "<any>":
        return None
    if isinstance(expected, str) and expected == "<int>":
        if isinstance(actual, int) and not isinstance(actual, bool):
            return None
        return "%s: %r is not an integer" % (where, actual)
    if isinstance(expected, str) and expected.startswith("re:"):
        if isinstance(actual, str) and re.search(expected[3:], actual):
            return None
        return "%s: %r does not match /%s/" % (where, actual, expected[3:])
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return "%s: %r is not an object" % (where, actual)
        for k, v in expected.items():
            if k not in actual:
                return "%s: no key %r" % (where, k)
            why = match_value(v, actual[k], "%s.%s" % (where, k))
            if why:
                return why
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return "%s: %r is not a list" % (where, actual)
        if len(expected) != len(actual):
            return "%s: %d items, expected %d: %r" % (where, len(actual), len(expected), actual)
        if all(not isinstance(x, (dict, list)) for x in expected):
            # Lists of scalars (flags) compare as multisets.
            if sorted(map(json.dumps, expected)) == sorted(map(json.dumps, actual)):
                return None
            return "%s: %r, expected %r (any order)" % (where, actual, expected)
        for n, (e, a) in enumerate(zip(expected, actual)):
            why = match_value(e, a, "%s[%d]" % (where, n))
            if why:
                return why
        return None
    if type(expected) is not type(actual) and not (
            isinstance(expected, (int, float)) and isinstance(actual, (int, float)) and
            not isinstance(actual, bool) and not isinstance(expected, bool)):
        return "%s: %r, expected %r" % (where, actual, expected)
    if expected != actual:
        return "%s: %r, expected %r" % (where, actual, expected)
    return None


def match_lines(expected, actual):
    """Matches the expected lines (dicts and "...") against ACTUAL objects.

    Returns None on a match, else a sentence about the first mismatch.
    """
    memo = {}
    best = [(-1, None)]

    def go(i, j):
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(expected):
            ok = j == len(actual)
            if not ok and best[0][0] < j:
                best[0] = (j, "unexpected output line %d: %s" % (j + 1, json.dumps(
                    actual[j], ensure_ascii=False)))
            memo[key] = ok
            return ok
        if expected[i] == "...":
            ok = go(i + 1, j) or (j < len(actual) and go(i, j + 1))
            memo[key] = ok
            return ok
        if j == len(actual):
            if best[0][0] < j:
                best[0] = (j, "missing output: %s" % json.dumps(expected[i],
                                                                ensure_ascii=False))
            memo[key] = False
            return False
        why = match_value(expected[i], actual[j], "line %d" % (j + 1))
        if why:
            if best[0][0] < j:
                best[0] = (j, why)
            memo[key] = False
            return False
        ok = go(i + 1, j + 1)
        memo[key] = ok
        return ok

    sys.setrecursionlimit(max(1000, 4 * (len(expected) + len(actual)) + 100))
    if go(0, 0):
        return None
    return best[0][1] or "output does not match"


# ----- running -----------------------------------------------------------------

class Runner:
    def __init__(self, verbose=False):
        self.verbose = verbose
        self.dc = None
        self.ws = None
        self.count = 0
        self._demo = None

    def demo(self, name):
        if self._demo is None:
            self._demo = {m.name: m for m in tern_mod.gen_mail().demo_set()}
        if name not in self._demo:
            raise ScenarioError("no demo message named %s" % name)
        return self._demo[name]

    def start(self, scenarios):
        # One user per scenario, all in the passwd-file before the server starts.
        users = {"scenario%d" % n: "pw-%d" % n for n in range(1, scenarios + 1)}
        self.dc = dovecot_mod.Dovecot(users=users)
        self.dc.start()
        self.ws = tern_mod.Workspace(prefix="tern-scenario-")

    def stop(self):
        if self.dc:
            self.dc.cleanup()
        if self.ws and not self.verbose:
            self.ws.cleanup()

    def seed(self, user, sc):
        gm = tern_mod.gen_mail()
        for folder, kind, args, options, data in sc.setup:
            if kind == "empty":
                if folder.upper() != "INBOX":
                    self.dc.create_folder(user, folder)
                continue
            batch = []
            if kind == "bulk":
                for m in gm.bulk(int(args[0]), folder):
                    batch.append((m.data, options.get("flags", m.flags),
                                  options.get("keywords", ()), m.internaldate))
            elif kind == "demo":
                for name in args:
                    m = self.demo(name)
                    batch.append((m.data, options.get("flags", m.flags),
                                  options.get("keywords", m.keywords), m.internaldate))
            else:
                batch.append((data, options.get("flags", ()), options.get("keywords", ()),
                              None))
            self.dc.add_messages(user, folder, batch)

    def run_one(self, path):
        """Runs one scenario; returns (ok, name, list of detail lines)."""
        try:
            sc = Scenario(path)
        except (ScenarioError, OSError, ValueError) as e:
            return False, os.path.basename(path), ["bad scenario file: %s" % e]
        label = "%s: %s" % (sc.name, sc.story)
        self.count += 1
        user = "scenario%d" % self.count
        if user not in self.dc.users:
            self.dc.add_user(user, "pw-%d" % self.count)
        out = self.ws.path("out", user)
        os.makedirs(out, exist_ok=True)

        def subst(s):
            return s.replace("$OUT", out)

        try:
            self.seed(user, sc)
            acct = self.ws.account(self.dc, user=user)
            config = self.ws.write_config({"main": acct})
            batch = "".join(subst(c) + "\n" for c in sc.commands)
            res = self.ws.run(config, batch=batch, timeout=120)
        except tern_mod.TernError as e:
            return False, label, str(e).split("\n")
        except (ScenarioError, dovecot_mod.DovecotError, OSError) as e:
            return False, label, ["setup failed: %s" % e]
        problems = []
        if res.bad_lines:
            problems.append("stdout lines that are not JSON objects: %r" % res.bad_lines[:3])
        expected = json.loads(subst(json.dumps(sc.expect)))
        why = match_lines(expected, res.objects)
        if why:
            problems.append(why)
        if res.rc != sc.exit:
            problems.append("exit status %s, expected %d" % (res.rc, sc.exit))
        if sc.exit != 0 and not res.stderr.strip():
            problems.append("a failing run printed nothing on stderr")
        for fpath, checks in sc.files:
            problems.extend(self.check_file(subst(fpath), checks))
        for lineno, words in sc.server:
            try:
                problems.extend(self.check_server(user, lineno, words))
            except (dovecot_mod.DovecotError, ScenarioError) as e:
                problems.append("server check on line %d: %s" % (lineno, e))
        if problems:
            return False, label, problems + res.describe().split("\n")
        return True, label, []

    def check_file(self, path, checks):
        if not os.path.isfile(path):
            return ["file %s was not written" % path]
        with open(path, "rb") as f:
            data = f.read()
        problems = []
        if "size" in checks and len(data) != int(checks["size"]):
            problems.append("%s: %d bytes, expected %s" % (path, len(data), checks["size"]))
        if "sha256" in checks and hashlib.sha256(data).hexdigest() != checks["sha256"]:
            problems.append("%s: sha256 differs" % path)
        if "same_as" in checks:
            ref = checks["same_as"]
            kind, _, name = ref.partition(":")
            if kind != "demo":
                problems.append("same_as wants demo:NAME")
            elif data != self.demo(name).data:
                problems.append("%s differs from the demo message %s" % (path, name))
        return problems

    def check_server(self, user, lineno, words):
        """Checks one line of the server section against doveadm."""
        if not words:
            return []
        what = words[0]
        if what == "status" and len(words) >= 3:
            folder = words[1]
            want = {}
            for w in words[2:]:
                k, _, v = w.partition("=")
                want[k] = int(v)
            got = self.dc.status(user, folder, " ".join(want))
            bad = {k: got.get(k) for k, v in want.items() if got.get(k) != v}
            if bad:
                return ["line %d: %s has %s, expected %s" % (lineno, folder, bad, want)]
            return []
        if what == "folder" and len(words) == 3:
            folder, state = words[1], words[2]
            if state in ("exists", "absent"):
                present = folder in self.dc.folders(user)
                if present != (state == "exists"):
                    return ["line %d: folder %s is %s" % (
                        lineno, folder, "there" if present else "missing")]
                return []
            if state in ("subscribed", "unsubscribed"):
                subscribed = folder in self.dc.folders(user, subscribed=True)
                if subscribed != (state == "subscribed"):
                    return ["line %d: folder %s is %ssubscribed" % (
                        lineno, folder, "" if subscribed else "not ")]
                return []
        if what == "flags" and len(words) >= 4 and words[3] == "=":
            folder, uid = words[1], int(words[2])
            got = tern_mod.doveadm_flags(self.dc.flags(user, folder, uid))
            want = set(words[4:])
            if got != want:
                return ["line %d: %s %d has flags %s, expected %s" % (
                    lineno, folder, uid, sorted(got), sorted(want))]
            return []
        raise ScenarioError("unknown server check %r" % " ".join(words))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run tern's headless scenarios.")
    ap.add_argument("files", nargs="*")
    ap.add_argument("--verbose", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    files = args.files or sorted(glob.glob(os.path.join(tern_mod.REPO, "tests", "scenarios",
                                                         "*.t")))
    if not files:
        print("1..0 # no scenarios")
        return 0
    print("1..%d" % len(files))
    runner = Runner(verbose=args.verbose)
    failed = 0
    try:
        runner.start(len(files))
    except dovecot_mod.DovecotError as e:
        for n, path in enumerate(files, 1):
            print("not ok %d - %s" % (n, os.path.basename(path)))
            print("# Dovecot did not start: %s" % str(e).replace("\n", "\n# "))
        return 1
    try:
        for n, path in enumerate(files, 1):
            ok, label, details = runner.run_one(path)
            print("%s %d - %s" % ("ok" if ok else "not ok", n, label))
            for line in details:
                print("#   " + line)
            sys.stdout.flush()
            if not ok:
                failed += 1
    finally:
        runner.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
