story: A batch that hits a missing folder stops there, reports it, and exits 1.

setup:
  INBOX: bulk 2 flags=

commands:
  list INBOX --limit 1
  flag INBOX 1 +seen
  list "No Such Folder"
  flag INBOX 1 +flagged

expect:
  {"uid": 2}
  {"uid": 1, "flags": ["seen"]}
  {"error": {"command": "re:^list ", "code": "notfound", "message": "re:No Such Folder"}}

exit: 1

server:
  flags INBOX 1 = seen
  status INBOX messages=2 unseen=1
