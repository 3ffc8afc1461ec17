#!/usr/bin/python3
"""Runs Python unittest modules and prints one TAP line per test case.

Layer: test infrastructure (tests/lib), used by tests/run for
tests/integration/test_*.py. Each module is imported on its own, so one
module that cannot even be imported counts as one failure and the others
still run. A failure prints its traceback (and so the tern output the
assertion carried) as "#" comment lines.

    python3 tests/lib/runner.py [-j N] MODULE.py ...

With -j N, up to N modules run at the same time in child processes (each
module starts its own Dovecot on its own ports). Exits 1 when any test failed.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import traceback
import unittest

# Keep the source tree free of __pycache__ directories.
sys.dont_write_bytecode = True


class TapResult(unittest.TestResult):
    """Prints "ok"/"not ok" per test as it finishes."""

    def __init__(self, out, prefix):
        super().__init__()
        self.out = out
        self.prefix = prefix
        self.passed = 0
        self.failed_count = 0
        self._start = {}

    def startTest(self, test):
        super().startTest(test)
        self._start[test] = time.monotonic()

    def _name(self, test):
        return "%s%s" % (self.prefix, test.id().split(".", 1)[-1] if "." in test.id()
                         else test.id())

    def _elapsed(self, test):
        test = getattr(test, "test_case", test)
        if test not in self._start:
            return ""
        return " (%.1fs)" % (time.monotonic() - self._start[test])

    def _line(self, ok, test, note=""):
        self.out.write("%s - %s%s%s\n" % ("ok" if ok else "not ok", self._name(test),
                                           self._elapsed(test), note))
        self.out.flush()

    def _details(self, text):
        for line in text.rstrip("\n").split("\n"):
            self.out.write("#   %s\n" % line)
        self.out.flush()

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1
        self._line(True, test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.failed_count += 1
        self._line(False, test)
        self._details(self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        self.failed_count += 1
        if isinstance(test, unittest.case._SubTest) or hasattr(test, "id"):
            self._line(False, test, " error")
        self._details(self._exc_info_to_string(err, test))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.failed_count += 1
            self._line(False, subtest)
            self._details(self._exc_info_to_string(err, subtest))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.out.write("ok - %s # SKIP %s\n" % (self._name(test), reason))
        self.out.flush()

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.passed += 1
        self._line(True, test, " # expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.failed_count += 1
        self._line(False, test, " unexpected success")


def run_module(path, out):
    """Runs one test module; returns (passed, failed)."""
    name = os.path.splitext(os.path.basename(path))[0]
    prefix = name + "."
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    except Exception:
        out.write("not ok - %s (import)\n" % name)
        for line in traceback.format_exc().rstrip("\n").split("\n"):
            out.write("#   %s\n" % line)
        return 0, 1
    result = TapResult(out, prefix)
    # Module fixtures (setUpModule) failing show up as errors of a
    # _ErrorHolder, which the result reports like any failed test.
    suite.run(result)
    if result.testsRun == 0 and not result.errors:
        out.write("# %s: no tests\n" % name)
    return result.passed, result.failed_count


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run unittest modules with TAP output.")
    ap.add_argument("-j", "--jobs", type=int, default=1)
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("modules", nargs="+")
    args = ap.parse_args(argv)

    if args.jobs <= 1 or len(args.modules) == 1:
        passed = failed = 0
        for path in args.modules:
            p, f = run_module(path, sys.stdout)
            passed += p
            failed += f
        print("# passed %d failed %d" % (passed, failed))
        return 1 if failed else 0

    # Parallel: one child per module, outputs printed whole, in module order.
    pending = list(args.modules)
    running = []
    outputs = {}
    failed_any = False
    while pending or running:
        while pending and len(running) < args.jobs:
            path = pending.pop(0)
            buf = tempfile.TemporaryFile()
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--single",
                                     path], stdout=buf, stderr=subprocess.STDOUT)
            running.append((path, proc, buf))
        time.sleep(0.05)
        for item in list(running):
            path, proc, buf = item
            if proc.poll() is not None:
                buf.seek(0)
                outputs[path] = (proc.returncode, buf.read())
                buf.close()
                running.remove(item)
    passed = failed = 0
    for path in args.modules:
        rc, data = outputs[path]
        text = data.decode("utf-8", "replace")
        saw_summary = False
        for line in text.split("\n"):
            if line.startswith("# passed "):
                parts = line.split()
                passed += int(parts[2])
                failed += int(parts[4])
                saw_summary = True
                continue
            if line:
                print(line)
        if not saw_summary or (rc != 0 and rc != 1):
            print("not ok - %s (runner exited %s)" % (os.path.basename(path), rc))
            failed += 1
        if rc != 0:
            failed_any = True
    print("# passed %d failed %d" % (passed, failed))
    return 1 if failed or failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
