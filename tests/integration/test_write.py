"""Headless commands that change the server: flag, copy, move, delete, expunge, folders.

Layer: tests/integration. One Dovecot for the module; every test works in
folders of its own, so the tests do not depend on each other's order. Each
change tern reports is checked twice: by tern's own later `list` or `folders`,
and by Dovecot (doveadm), which is the truth.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import dovecot  # noqa: E402
import tern  # noqa: E402
from tern import doveadm_flags, flagset, quote  # noqa: E402

DC = WS = CONFIG = None


def setUpModule():
    global DC, WS, CONFIG
    DC = dovecot.Dovecot()
    DC.start()
    WS = tern.Workspace(prefix="tern-write-")
    CONFIG = WS.write_config({"main": WS.account(DC, "alice")})


def tearDownModule():
    if DC:
        DC.cleanup()
    if WS:
        WS.cleanup()


def seed(folder, count, flags=()):
    """COUNT bulk messages into FOLDER (UIDs 1..COUNT); returns the Mail objects."""
    mails = list(tern.gen_mail().bulk(count, folder))
    DC.add_messages("alice", folder, [(m.data, list(flags), (), m.internaldate)
                                      for m in mails])
    return mails


def run(*commands):
    return WS.run(CONFIG, *commands, timeout=120)


def server_flags(folder, uid):
    return doveadm_flags(DC.flags("alice", folder, uid))


class FlagTest(tern.TernCase):
    def test_add_and_remove_seen(self):
        seed("FlagSeen", 2)
        res = self.assertOk(run("flag FlagSeen 1 +seen"), count=1)
        self.assertEqual(res[0]["uid"], 1)
        self.assertEqual(flagset(res[0]["flags"]), {"seen"})
        self.assertEqual(server_flags("FlagSeen", 1), {"seen"})
        self.assertEqual(server_flags("FlagSeen", 2), set())
        res = self.assertOk(run("flag FlagSeen 1 -seen"), count=1)
        self.assertEqual(flagset(res[0]["flags"]), set())
        self.assertEqual(server_flags("FlagSeen", 1), set())

    def test_several_changes_and_keyword(self):
        seed("FlagMany", 3, flags=("seen",))
        res = self.assertOk(run("flag FlagMany 1:2 +flagged -seen +$label"), count=2)
        self.assertEqual(sorted(r["uid"] for r in res), [1, 2])
        for r in res:
            self.assertEqual(flagset(r["flags"]), {"flagged", "$label"})
        for u in (1, 2):
            self.assertEqual(server_flags("FlagMany", u), {"flagged", "$label"})
        self.assertEqual(server_flags("FlagMany", 3), {"seen"})
        listed = {m["uid"]: m for m in self.assertOk(run("list FlagMany"))}
        self.assertEqual(flagset(listed[1]["flags"]), {"flagged", "$label"})
        self.assertEqual(flagset(listed[3]["flags"]), {"seen"})

    def test_answered_draft_and_sets(self):
        seed("FlagSets", 5)
        res = self.assertOk(run("flag FlagSets 1,3,5 +answered"), count=3)
        self.assertEqual(sorted(r["uid"] for r in res), [1, 3, 5])
        self.assertEqual([u for u in range(1, 6) if "answered" in server_flags("FlagSets", u)],
                         [1, 3, 5])
        # As in IMAP, "*" alone is the highest UID; "1:*" is all of them.
        res = self.assertOk(run("flag FlagSets * +draft"), count=1)
        self.assertEqual(res[0]["uid"], 5)
        self.assertEqual([u for u in range(1, 6) if "draft" in server_flags("FlagSets", u)],
                         [5])
        res = self.assertOk(run("flag FlagSets 1:* +draft"), count=5)
        for u in range(1, 6):
            self.assertIn("draft", server_flags("FlagSets", u))

    def test_flags_survive_in_list(self):
        seed("FlagList", 1)
        self.assertOk(run("flag FlagList 1 +flagged"))
        m = self.assertOk(run("list FlagList"), count=1)[0]
        self.assertEqual(flagset(m["flags"]), {"flagged"})

    def test_missing_folder_and_uid(self):
        self.assertFails(run("flag \"No Such Folder\" 1 +seen"), "notfound")


class CopyMoveTest(tern.TernCase):
    def test_copy(self):
        mails = seed("CopySrc", 3)
        DC.create_folder("alice", "CopyDest")
        res = self.assertOk(run("copy CopySrc 2 CopyDest"), count=1)
        self.assertEqual(res[0]["uid"], 2)
        dest = res[0]["dest_uid"]
        self.assertIsInstance(dest, int)
        self.assertEqual(DC.uid_of("alice", "CopyDest", mails[1].message_id), dest)
        self.assertEqual(DC.uid_of("alice", "CopySrc", mails[1].message_id), 2)
        self.assertEqual(DC.status("alice", "CopySrc")["messages"], 3)

    def test_move_several(self):
        mails = seed("MoveSrc", 4)
        DC.create_folder("alice", "MoveDest")
        res = self.assertOk(run("move MoveSrc 2:3 MoveDest"), count=2)
        self.assertEqual(sorted(r["uid"] for r in res), [2, 3])
        for r in res:
            m = mails[r["uid"] - 1]
            self.assertEqual(DC.uid_of("alice", "MoveDest", m.message_id), r["dest_uid"])
            self.assertIsNone(DC.uid_of("alice", "MoveSrc", m.message_id))
        self.assertEqual(DC.status("alice", "MoveSrc")["messages"], 2)
        listed = [m["uid"] for m in self.assertOk(run("list MoveSrc"))]
        self.assertEqual(listed, [4, 1])

    def test_move_to_non_ascii_folder(self):
        mails = seed("MoveSrc2", 1)
        DC.create_folder("alice", "Archiv/Ältere Jahre")
        res = self.assertOk(run('move MoveSrc2 1 "Archiv/Ältere Jahre"'), count=1)
        self.assertEqual(DC.uid_of("alice", "Archiv/Ältere Jahre", mails[0].message_id),
                         res[0]["dest_uid"])

    def test_copy_to_missing_folder(self):
        mails = seed("CopySrc3", 1)
        res = run('copy CopySrc3 1 "Nowhere At All"')
        self.assertFails(res, "notfound")
        self.assertEqual(DC.uid_of("alice", "CopySrc3", mails[0].message_id), 1)
        self.assertNotIn("Nowhere At All", DC.folders("alice"))


class DeleteExpungeTest(tern.TernCase):
    def test_delete_marks_then_expunge_removes(self):
        mails = seed("DelTest", 3)
        res = self.assertOk(run("delete DelTest 1,3"), count=2)
        self.assertEqual(sorted(r["uid"] for r in res), [1, 3])
        self.assertEqual(DC.status("alice", "DelTest")["messages"], 3)
        self.assertIn("deleted", server_flags("DelTest", 1))
        self.assertIn("deleted", server_flags("DelTest", 3))
        self.assertNotIn("deleted", server_flags("DelTest", 2))
        listed = {m["uid"]: m for m in self.assertOk(run("list DelTest"))}
        self.assertIn("deleted", listed[1]["flags"])
        res = self.assertOk(run("expunge DelTest"), count=2)
        self.assertEqual(sorted(r["uid"] for r in res), [1, 3])
        self.assertEqual(DC.status("alice", "DelTest")["messages"], 1)
        self.assertEqual(DC.uid_of("alice", "DelTest", mails[1].message_id), 2)

    def test_expunge_nothing(self):
        seed("DelNone", 2)
        self.assertOk(run("expunge DelNone"), count=0)
        self.assertEqual(DC.status("alice", "DelNone")["messages"], 2)

    def test_expunge_only_deleted(self):
        seed("DelSeeded", 2, flags=("deleted",))
        seed("DelSeeded", 1)
        res = self.assertOk(run("expunge DelSeeded"), count=2)
        self.assertEqual(sorted(r["uid"] for r in res), [1, 2])
        self.assertEqual([m["uid"] for m in DC.fetch("alice", "DelSeeded", "uid")], [3])


class FolderManagementTest(tern.TernCase):
    def folders(self):
        return {f["name"]: f for f in self.assertOk(run("folders"))}

    def test_mkdir_rename_rmdir(self):
        name = "Neu/Ünterordner"
        self.assertEqual(self.assertOk(run("mkdir %s" % quote(name)), count=1),
                         [{"folder": name}])
        self.assertIn(name, DC.folders("alice"))
        self.assertIn(name, self.folders())
        new = "Neu/Umbenannt äöü"
        self.assertEqual(self.assertOk(run("rename %s %s" % (quote(name), quote(new))),
                                       count=1), [{"folder": new}])
        server = DC.folders("alice")
        self.assertIn(new, server)
        self.assertNotIn(name, server)
        folders = self.folders()
        self.assertIn(new, folders)
        self.assertNotIn(name, folders)
        self.assertEqual(self.assertOk(run("rmdir %s" % quote(new)), count=1),
                         [{"folder": new}])
        self.assertNotIn(new, DC.folders("alice"))
        self.assertNotIn(new, self.folders())

    def test_cyrillic_and_cjk_names(self):
        for name in ("Отчёты 2024", "日本語フォルダ", "Ελληνικά & more"):
            with self.subTest(name=name):
                self.assertOk(run("mkdir %s" % quote(name)), count=1)
                self.assertIn(name, DC.folders("alice"))
                folders = self.folders()
                self.assertIn(name, folders)
                self.assertEqual(folders[name]["total"], 0)

    def test_subscribe_unsubscribe(self):
        DC.create_folder("alice", "Subs Test", subscribe=False)
        self.assertNotIn("Subs Test", DC.folders("alice", subscribed=True))
        self.assertEqual(self.assertOk(run('subscribe "Subs Test"'), count=1),
                         [{"folder": "Subs Test"}])
        self.assertIn("Subs Test", DC.folders("alice", subscribed=True))
        self.assertIs(self.folders()["Subs Test"]["subscribed"], True)
        self.assertEqual(self.assertOk(run('unsubscribe "Subs Test"'), count=1),
                         [{"folder": "Subs Test"}])
        self.assertNotIn("Subs Test", DC.folders("alice", subscribed=True))
        self.assertIs(self.folders()["Subs Test"]["subscribed"], False)

    def test_rename_keeps_messages(self):
        mails = seed("RenameMe", 2)
        self.assertOk(run("rename RenameMe Renamed"), count=1)
        self.assertEqual(DC.status("alice", "Renamed")["messages"], 2)
        self.assertEqual(DC.uid_of("alice", "Renamed", mails[0].message_id), 1)
        self.assertEqual(len(self.assertOk(run("list Renamed"))), 2)

    def test_rmdir_missing(self):
        self.assertFails(run('rmdir "Does Not Exist"'), "notfound")

    def test_mkdir_existing_fails(self):
        DC.create_folder("alice", "Exists Already")
        self.assertFails(run('mkdir "Exists Already"'))


if __name__ == "__main__":
    unittest.main()
