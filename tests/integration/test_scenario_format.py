"""Tests of the scenario format and matcher (tests/lib/scenario.py), without tern.

Layer: tests/integration (needs no server). A matcher that accepted anything
would make every scenario pass; these cases prove it rejects what it must.
"""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import scenario  # noqa: E402
import tern  # noqa: E402


class MatchValueTest(unittest.TestCase):
    def ok(self, expected, actual):
        self.assertIsNone(scenario.match_value(expected, actual, "x"), (expected, actual))

    def bad(self, expected, actual):
        self.assertIsNotNone(scenario.match_value(expected, actual, "x"), (expected, actual))

    def test_subset_of_keys(self):
        self.ok({"uid": 1}, {"uid": 1, "flags": []})
        self.bad({"uid": 1, "size": 3}, {"uid": 1})
        self.bad({"uid": 1}, {"uid": 2})
        self.ok({"h": {"a": "b"}}, {"h": {"a": "b", "c": "d"}})
        self.bad({"h": {"a": "b"}}, {"h": {"a": "c"}})

    def test_types(self):
        self.bad({"uid": 1}, {"uid": "1"})
        self.bad({"v": None}, {"v": "null"})
        self.ok({"v": None}, {"v": None})
        self.bad({"v": True}, {"v": 1})
        self.bad({"v": 1}, {"v": True})
        self.bad({"v": {}}, {"v": []})

    def test_lists(self):
        self.ok(["seen", "flagged"], ["flagged", "seen"])
        self.bad(["seen"], ["seen", "flagged"])
        self.bad(["seen", "seen"], ["seen", "flagged"])
        self.ok([{"id": "1"}, {"id": "2"}], [{"id": "1", "x": 0}, {"id": "2"}])
        self.bad([{"id": "1"}, {"id": "2"}], [{"id": "2"}, {"id": "1"}])

    def test_special_values(self):
        self.ok("<any>", None)
        self.ok("<int>", 5)
        self.bad("<int>", "5")
        self.bad("<int>", True)
        self.ok("re:^list ", "list Foo")
        self.bad("re:^list ", "show Foo")
        self.bad("re:x", 5)


class MatchLinesTest(unittest.TestCase):
    def test_exact_and_extra(self):
        self.assertIsNone(scenario.match_lines([{"a": 1}], [{"a": 1}]))
        self.assertIn("unexpected", scenario.match_lines([{"a": 1}], [{"a": 1}, {"b": 2}]))
        self.assertIn("missing", scenario.match_lines([{"a": 1}, {"b": 2}], [{"a": 1}]))
        self.assertIsNotNone(scenario.match_lines([], [{"a": 1}]))
        self.assertIsNone(scenario.match_lines([], []))

    def test_ellipsis(self):
        lines = [{"n": i} for i in range(5)]
        self.assertIsNone(scenario.match_lines(["..."], lines))
        self.assertIsNone(scenario.match_lines(["..."], []))
        self.assertIsNone(scenario.match_lines(["...", {"n": 2}, "..."], lines))
        self.assertIsNone(scenario.match_lines([{"n": 0}, "...", {"n": 4}], lines))
        self.assertIsNotNone(scenario.match_lines(["...", {"n": 7}, "..."], lines))
        self.assertIsNotNone(scenario.match_lines([{"n": 4}, "..."], lines))
        self.assertIsNotNone(scenario.match_lines(["...", {"n": 3}, {"n": 2}, "..."], lines))

    def test_order_matters(self):
        self.assertIsNotNone(scenario.match_lines([{"n": 1}, {"n": 0}],
                                                  [{"n": 0}, {"n": 1}]))


class ParseTest(unittest.TestCase):
    def parse(self, text):
        with tempfile.NamedTemporaryFile("w", suffix=".t", delete=False) as f:
            f.write(text)
        try:
            return scenario.Scenario(f.name)
        finally:
            os.unlink(f.name)

    def test_full_file(self):
        sc = self.parse(
            "# comment\nstory: Two\n  lines.\n\nsetup:\n  INBOX: bulk 2 flags=\n"
            "  \"Mit Leerzeichen\": inline flags=seen,flagged keywords=$x\n"
            "    | Subject: hi\n    |\n    | body\n  Archive: empty\n"
            "  INBOX: demo utf8 attachment\n"
            "commands:\n  list INBOX\n  show INBOX 1\nexpect:\n  {\"uid\": 2}\n  ...\n"
            "exit: 1\nfiles:\n  \"$OUT/a b\" size=3\nserver:\n  status INBOX messages=2\n")
        self.assertEqual(sc.story, "Two lines.")
        self.assertEqual(sc.commands, ["list INBOX", "show INBOX 1"])
        self.assertEqual(sc.expect, [{"uid": 2}, "..."])
        self.assertEqual(sc.exit, 1)
        self.assertEqual(sc.setup[0][:4], ("INBOX", "bulk", ["2"], {"flags": []}))
        folder, kind, args, options, data = sc.setup[1]
        self.assertEqual((folder, kind), ("Mit Leerzeichen", "inline"))
        self.assertEqual(options, {"flags": ["seen", "flagged"], "keywords": ["$x"]})
        self.assertEqual(data, b"Subject: hi\r\n\r\nbody\r\n")
        self.assertEqual(sc.setup[2][:2], ("Archive", "empty"))
        self.assertEqual(sc.setup[3][2], ["utf8", "attachment"])
        self.assertEqual(sc.files, [("$OUT/a b", {"size": "3"})])

    def test_errors(self):
        for text in ("story: x\ncommands:\n  a\n",                      # no expect
                     "story: x\nsetup:\n  INBOX: bulk many\ncommands:\n  a\nexpect:\n  {}\n",
                     "story: x\nsetup:\n  INBOX: magic\ncommands:\n  a\nexpect:\n  {}\n",
                     "story: x\ncommands:\n  a\nexpect:\n  [1]\n",
                     "story: x\ncommands:\n  a\nexpect:\n  {bad json}\n",
                     "story: x\nbogus:\n  a\n",
                     "story: x\ncommands:\n  a\nexpect:\n  {}\nexit: one\n",
                     "story: x\ncommands:\n  a\ncommands:\n  b\nexpect:\n  {}\n"):
            with self.subTest(text=text):
                with self.assertRaises(scenario.ScenarioError):
                    self.parse(text)

    def test_repository_scenarios_parse(self):
        import glob
        files = glob.glob(os.path.join(tern.REPO, "tests", "scenarios", "*.t"))
        self.assertGreaterEqual(len(files), 4)
        for path in files:
            with self.subTest(path=os.path.basename(path)):
                sc = scenario.Scenario(path)
                self.assertTrue(sc.story and sc.commands and sc.expect)


if __name__ == "__main__":
    unittest.main()
