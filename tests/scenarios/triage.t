story: Triage the inbox: read the newest, flag one, archive one, delete one, expunge.

setup:
  INBOX: bulk 4 flags=
  Archive: empty

commands:
  list INBOX --limit 2
  flag INBOX 1 +seen +flagged
  move INBOX 2 Archive
  delete INBOX 3
  expunge INBOX
  list INBOX

expect:
  {"uid": 4, "flags": [], "message_id": "bulk-inbox-4@bench.tern.example", "size": "<int>"}
  {"uid": 3, "flags": [], "message_id": "bulk-inbox-3@bench.tern.example"}
  {"uid": 1, "flags": ["seen", "flagged"]}
  {"uid": 2, "dest_uid": 1}
  {"uid": 3}
  {"uid": 3}
  {"uid": 4, "flags": []}
  {"uid": 1, "flags": ["seen", "flagged"]}

exit: 0

server:
  status INBOX messages=2 unseen=1
  status Archive messages=1 unseen=1
  flags INBOX 1 = seen flagged
