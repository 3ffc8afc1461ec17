"""Headless read commands against a real Dovecot: folders, list, show, save, search.

Layer: tests/integration. One Dovecot for the module, seeded with the demo set
of contrib/demo/gen-mail.py for alice. Every expectation comes from the
generator (what was stored) or from Dovecot itself (doveadm), never from
tern's own earlier output.
"""

import datetime
import hashlib
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dovecot  # noqa: E402
import tern  # noqa: E402
from tern import flagset, quote  # noqa: E402

DC = WS = CONFIG = None
INDEX = {}
_CACHE = {}

SPECIALS = {"INBOX": "inbox", "Sent": "sent", "Drafts": "drafts", "Trash": "trash",
            "Junk": "junk", "Archive": "archive"}
LIST_KEYS = {"uid", "date", "from", "to", "subject", "flags", "size", "message_id", "thread"}


def setUpModule():
    global DC, WS, CONFIG, INDEX
    DC = dovecot.Dovecot()
    DC.start()
    INDEX = tern.seed_demo(DC, "alice")
    WS = tern.Workspace(prefix="tern-read-")
    CONFIG = WS.write_config({"demo": WS.account(DC, "alice")})


def tearDownModule():
    if DC:
        DC.cleanup()
    if WS:
        WS.cleanup()


def run(*commands, cache=True):
    """Runs tern once per distinct command tuple (the module only reads)."""
    if cache and commands in _CACHE:
        return _CACHE[commands]
    res = WS.run(CONFIG, *commands, timeout=120)
    if cache:
        _CACHE[commands] = res
    return res


def uid(name):
    return INDEX[name][1]


def mail(name):
    return INDEX[name][2]


def parse_iso(text):
    return datetime.datetime.fromisoformat(text)


class FoldersTest(tern.TernCase):
    def folders(self):
        return {f["name"]: f for f in self.assertOk(run("folders"))}

    def test_names_and_fields(self):
        folders = self.folders()
        for name in tern.gen_mail().FOLDERS:
            self.assertIn(name, folders)
        for f in folders.values():
            self.assertEqual(set(f), {"name", "delimiter", "special", "subscribed", "total",
                                      "unseen"}, f)
            self.assertEqual(f["delimiter"], "/", f)

    def test_specials(self):
        folders = self.folders()
        for name, f in folders.items():
            self.assertEqual(f["special"], SPECIALS.get(name), name)

    def test_counts_match_server(self):
        folders = self.folders()
        for name in tern.gen_mail().FOLDERS:
            with self.subTest(folder=name):
                st = DC.status("alice", name, "messages unseen")
                self.assertEqual((folders[name]["total"], folders[name]["unseen"]),
                                 (st["messages"], st["unseen"]))

    def test_subscribed_matches_server(self):
        folders = self.folders()
        subscribed = set(DC.folders("alice", subscribed=True))
        for name in tern.gen_mail().FOLDERS:
            if name == "INBOX":
                continue
            with self.subTest(folder=name):
                self.assertIs(folders[name]["subscribed"], name in subscribed)

    def test_non_ascii_names_round_trip(self):
        for name in ("Entwürfe", "Projekte/Überblick", "Отправленные"):
            with self.subTest(folder=name):
                results = self.assertOk(run("list %s" % quote(name)))
                self.assertEqual(len(results), DC.status("alice", name)["messages"])


class ListTest(tern.TernCase):
    def inbox(self):
        return self.assertOk(run("list INBOX"))

    def by_uid(self):
        return {m["uid"]: m for m in self.inbox()}

    def test_all_messages_newest_first(self):
        results = self.inbox()
        uids = [m["uid"] for m in results]
        server = [m["uid"] for m in DC.fetch("alice", "INBOX", "uid")]
        self.assertEqual(uids, sorted(server, reverse=True))

    def test_fields(self):
        for m in self.inbox():
            self.assertEqual(set(m), LIST_KEYS, m)
            self.assertIsInstance(m["uid"], int)
            self.assertIsInstance(m["size"], int)
            self.assertIsInstance(m["flags"], list)
            self.assertIsInstance(m["thread"], str, m)
            parse_iso(m["date"])

    def test_limit(self):
        results = self.assertOk(run("list INBOX --limit 5"))
        top = sorted((m["uid"] for m in DC.fetch("alice", "INBOX", "uid")), reverse=True)[:5]
        self.assertEqual([m["uid"] for m in results], top)

    def test_limit_one_and_zero_results_folder(self):
        self.assertEqual(len(self.assertOk(run("list Drafts --limit 1"))), 1)
        DC.create_folder("alice", "Empty")
        self.assertOk(run("list Empty", cache=False), count=0)

    def test_date_with_offset(self):
        m = self.by_uid()[uid("date-offset")]
        self.assertEqual(m["date"], "2024-01-05T10:00:00+01:00")

    def test_date_falls_back_to_internaldate(self):
        for name in ("no-date", "bad-date"):
            with self.subTest(name=name):
                m = self.by_uid()[uid(name)]
                self.assertEqual(parse_iso(m["date"]), mail(name).expect["internaldate"])

    def test_addresses_subject_message_id(self):
        m = self.by_uid()[uid("date-offset")]
        exp = mail("date-offset").expect
        self.assertEqual(m["from"], exp["from"])
        self.assertEqual(m["to"], exp["to"])
        self.assertEqual(m["subject"], exp["subject"])
        self.assertEqual(m["message_id"], "date-offset@demo.tern.example")
        self.assertIsNone(self.by_uid()[uid("no-msgid")]["message_id"])

    def test_decoded_headers(self):
        for name in ("utf8", "latin1-qp", "koi8r", "sjis", "ew-subject", "headers"):
            exp = mail(name).expect
            m = self.by_uid()[uid(name)]
            with self.subTest(name=name):
                self.assertEqual(m["subject"], exp["subject"])
                if "from" in exp:
                    self.assertEqual(m["from"], exp["from"])

    def test_broken_headers_do_not_fail(self):
        for name in ("ew-broken", "unknown-charset", "escape"):
            with self.subTest(name=name):
                m = self.by_uid()[uid(name)]
                self.assertIsInstance(m["subject"], str)
                self.assertIsInstance(m["from"], str)

    def test_flags(self):
        m = self.by_uid()
        self.assertEqual(flagset(m[uid("keywords")]["flags"]),
                         {"seen", "flagged", "$label1", "$Important"})
        self.assertEqual(flagset(m[uid("date-offset")]["flags"]), {"seen", "answered"})
        self.assertEqual(flagset(m[uid("utf8")]["flags"]), set())
        for f in DC.fetch("alice", "INBOX", "uid flags"):
            with self.subTest(uid=f["uid"]):
                self.assertEqual(flagset(m[f["uid"]]["flags"]),
                                 tern.doveadm_flags(f.get("flags", "").split()))

    def test_sizes(self):
        m = self.by_uid()
        for name in ("attachment", "large", "utf8"):
            with self.subTest(name=name):
                self.assertEqual(m[uid(name)]["size"], len(mail(name).data))

    def test_threads(self):
        m = self.by_uid()
        lunch = {m[uid("thread-lunch-%d" % i)]["thread"] for i in (1, 3, 4, 5)}
        deploy = {m[uid("thread-deploy-%d" % i)]["thread"] for i in (1, 2, 3)}
        self.assertEqual(len(lunch), 1, "one thread for the lunch messages")
        self.assertEqual(len(deploy), 1, "one thread for the deploy messages")
        self.assertNotEqual(lunch, deploy)
        self.assertNotIn(m[uid("utf8")]["thread"], lunch | deploy)

    def test_query(self):
        results = self.assertOk(run("list INBOX from:zed"))
        self.assertEqual([r["uid"] for r in results], [uid("search-zebra")])
        results = self.assertOk(run("list INBOX subject:lunch --limit 2"))
        want = sorted(DC.search("alice", "INBOX", "subject lunch"), reverse=True)[:2]
        self.assertEqual([r["uid"] for r in results], want)

    def test_no_raw_control_bytes(self):
        res = run("list INBOX")
        self.assertOk(res)
        for bad in (b"\x1b", b"\x07", b"\xc2\x9b", b"\xc2\x9d"):
            self.assertNotIn(bad, res.stdout, "raw control sequence %r on stdout" % bad)
            self.assertNotIn(bad, res.stderr.encode(), "raw control sequence on stderr")

    def test_other_folders(self):
        for folder in ("Archive", "Sent", "Projekte/Überblick"):
            with self.subTest(folder=folder):
                results = self.assertOk(run("list %s" % quote(folder)))
                self.assertEqual(len(results), DC.status("alice", folder)["messages"])


class ShowTest(tern.TernCase):
    def show(self, name):
        folder, u, m = INDEX[name]
        results = self.assertOk(run("show %s %d" % (quote(folder), u)), count=1)
        r = results[0]
        self.assertEqual(r["uid"], u)
        for key in ("headers", "text", "parts"):
            self.assertIn(key, r)
        self.assertIsInstance(r["headers"], dict)
        self.assertIsInstance(r["text"], str)
        self.assertIsInstance(r["parts"], list)
        return r

    def check_expect(self, name):
        r = self.show(name)
        exp = mail(name).expect
        if "subject" in exp:
            self.assertEqual(r["headers"].get("subject"), exp["subject"])
        if "from" in exp:
            self.assertEqual(r["headers"].get("from"), exp["from"])
        for text in exp.get("text_contains", []):
            self.assertIn(text, r["text"])
        for text in exp.get("text_absent", []):
            self.assertNotIn(text, r["text"])
        for k, v in exp.get("headers", {}).items():
            self.assertEqual(r["headers"].get(k), v, k)
        return r

    def test_charsets(self):
        for name in ("utf8", "latin1-qp", "koi8r", "sjis", "date-offset"):
            with self.subTest(name=name):
                self.check_expect(name)

    def test_broken_and_unknown_charset(self):
        for name in ("broken-charset", "unknown-charset", "ew-broken"):
            with self.subTest(name=name):
                self.check_expect(name)

    def test_encoded_word_subject(self):
        self.check_expect("ew-subject")

    def test_html_only_rendered(self):
        self.check_expect("html-only")

    def test_alternative_prefers_plain(self):
        r = self.check_expect("alternative")
        types = [p["type"].lower() for p in r["parts"]]
        for t in ("text/plain", "text/html"):
            self.assertIn(t, types)

    def test_header_names_and_repeats(self):
        r = self.check_expect("headers")
        for name in r["headers"]:
            self.assertEqual(name, name.lower())
        self.assertEqual(r["headers"]["message-id"].strip("<>"), "headers@demo.tern.example")

    def test_parts_listed(self):
        r = self.check_expect("attachment")
        for p in r["parts"]:
            self.assertEqual(set(p), {"id", "type", "filename", "size"}, p)
            self.assertIsInstance(p["size"], int)
        named = {p["filename"]: p for p in r["parts"] if p["filename"]}
        for att in mail("attachment").expect["attachments"]:
            self.assertIn(att["filename"], named)
            self.assertEqual(named[att["filename"]]["type"].lower(), att["type"])
        body = [p for p in r["parts"] if p["filename"] is None]
        self.assertTrue(body and body[0]["type"].lower() == "text/plain", r["parts"])

    def test_nested_message(self):
        r = self.check_expect("nested")
        types = [p["type"].lower() for p in r["parts"]]
        self.assertIn("message/rfc822", types)

    def test_escape_sequences_never_raw(self):
        folder, u, m = INDEX["escape"]
        res = run("show INBOX %d" % u)
        self.check_expect("escape")
        for bad in (b"\x1b", b"\x07", b"\xc2\x9b"):
            self.assertNotIn(bad, res.stdout)
            self.assertNotIn(bad, res.stderr.encode())

    def test_large_message(self):
        r = self.check_expect("large")
        self.assertIn("big.bin", [p["filename"] for p in r["parts"]])

    def test_non_ascii_folder(self):
        r = self.show("sent-ru-1")
        self.assertEqual(r["headers"]["subject"], "Ответ: Встреча в пятницу")

    def test_missing_uid(self):
        self.assertFails(run("show INBOX 999999"), "notfound")

    def test_missing_folder(self):
        self.assertFails(run("show \"No Such Folder\" 1"), "notfound")


class SaveTest(tern.TernCase):
    def parts(self, name):
        folder, u, m = INDEX[name]
        r = self.assertOk(run("show %s %d" % (quote(folder), u)), count=1)[0]
        return {p["filename"]: p for p in r["parts"] if p.get("filename")}

    def save(self, name, part, filename):
        folder, u, m = INDEX[name]
        target = WS.path("out", filename)
        res = run("save %s %d %s %s" % (quote(folder), u, part, quote(target)), cache=False)
        result = self.assertOk(res, count=1)[0]
        self.assertEqual(result["saved"], target)
        with open(target, "rb") as f:
            data = f.read()
        self.assertEqual(result["size"], len(data))
        return data

    def test_attachments_byte_exact(self):
        parts = self.parts("attachment")
        for n, att in enumerate(mail("attachment").expect["attachments"]):
            with self.subTest(filename=att["filename"]):
                data = self.save("attachment", parts[att["filename"]]["id"], "att-%d" % n)
                self.assertEqual(hashlib.sha256(data).hexdigest(),
                                 hashlib.sha256(att["data"]).hexdigest())

    def test_large_attachment_byte_exact(self):
        part = self.parts("large")["big.bin"]
        data = self.save("large", part["id"], "big.bin")
        self.assertEqual(data, mail("large").expect["attachments"][0]["data"])

    def test_part_zero_is_raw_message(self):
        for name in ("attachment", "utf8", "escape", "large", "broken-charset"):
            with self.subTest(name=name):
                self.assertEqual(self.save(name, "0", "raw-%s.eml" % name), mail(name).data)

    def test_save_into_directory_uses_the_part_name(self):
        parts = self.parts("attachment")
        att = mail("attachment").expect["attachments"][0]
        folder, u, m = INDEX["attachment"]
        target = WS.path("out", "dir-%d" % u)
        os.makedirs(target, exist_ok=True)
        res = run("save %s %d %s %s" % (quote(folder), u, parts[att["filename"]]["id"],
                                        quote(target)), cache=False)
        result = self.assertOk(res, count=1)[0]
        self.assertEqual(result["saved"], os.path.join(target, att["filename"]))
        with open(result["saved"], "rb") as f:
            self.assertEqual(f.read(), att["data"])
        res = run("save %s %d 0 %s" % (quote(folder), u, quote(target)), cache=False)
        result = self.assertOk(res, count=1)[0]
        self.assertEqual(result["saved"], os.path.join(target, "message-%d.eml" % u))

    def test_file_name_with_spaces_and_umlauts(self):
        data = self.save("utf8", "0", "Grüße aus Köln.eml")
        self.assertEqual(data, mail("utf8").data)

    def test_missing_part(self):
        folder, u, m = INDEX["utf8"]
        target = WS.path("out", "nothing")
        self.assertFails(run("save INBOX %d 9.9 %s" % (u, target), cache=False), "notfound")
        self.assertFalse(os.path.exists(target), "a failed save left a file")


class SearchTest(tern.TernCase):
    # Each query next to the doveadm query that means the same.
    QUERIES = [
        ("from:zed", "from zed"),
        ("from:bob", "from bob"),
        ("to:carol", "to carol"),
        ("subject:lunch", "subject lunch"),
        ("subject:café", "subject café"),
        ("is:unread", "unseen"),
        ("is:flagged", "flagged"),
        ("is:answered", "answered"),
        ("tag:$label1", "keyword $label1"),
        ("pineapple", "text pineapple"),
        ("body:pineapple", "body pineapple"),
        ('"crossing plan"', 'text "crossing plan"'),
        ("from:bob and is:unread", "from bob unseen"),
        ("from:bob is:unread", "from bob unseen"),
        ("subject:lunch or subject:deploy", "subject lunch or subject deploy"),
        ("(from:zed or from:bob) and is:unread", "( from zed or from bob ) unseen"),
        ("not from:bob", "not from bob"),
        ("larger:1M", "larger 1000000"),
        ("smaller:10k", "smaller 10000"),
    ]

    def check(self, folder, query, server_query):
        results = self.assertOk(run("search %s %s" % (quote(folder), query)))
        want = DC.search("alice", folder, server_query)
        self.assertTrue(want, "the server finds nothing for %s" % server_query)
        self.assertEqual([r["uid"] for r in results], sorted(want, reverse=True),
                         "search %s" % query)
        for r in results:
            self.assertEqual(r["folder"], folder)
            self.assertTrue(LIST_KEYS <= set(r), r)

    def test_queries_match_server(self):
        for query, server_query in self.QUERIES:
            with self.subTest(query=query):
                self.check("INBOX", query, server_query)

    def test_date_range(self):
        results = self.assertOk(run("search INBOX date:2024-01-01..2024-02-01"))
        self.assertEqual([r["uid"] for r in results], [uid("date-offset")])

    def test_non_ascii_folder(self):
        self.check("Отправленные", "subject:Ответ", "subject Ответ")

    def test_fields_like_list(self):
        results = self.assertOk(run("search INBOX from:zed"))
        listed = {m["uid"]: m for m in self.assertOk(run("list INBOX"))}
        r = dict(results[0])
        self.assertEqual(r.pop("folder"), "INBOX")
        self.assertEqual(r, listed[r["uid"]])

    def test_unsupported_terms_named(self):
        for query, word in (("thread:x", "thread:x"), ("foo*", "foo*"),
                            ("from:zed thread:abc", "thread:abc")):
            with self.subTest(query=query):
                self.assertFails(run("search INBOX %s" % query), "unsupported", contains=word)

    def test_missing_folder(self):
        self.assertFails(run("search \"No Such Folder\" from:bob"), "notfound")


if __name__ == "__main__":
    unittest.main()
