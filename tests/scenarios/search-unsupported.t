story: A search with a term the server cannot evaluate is refused by name, not widened.

setup:
  INBOX: bulk 3 flags=
  INBOX: demo search-zebra flags=flagged

commands:
  search INBOX is:flagged
  search INBOX from:zed thread:x

expect:
  {"uid": 4, "folder": "INBOX", "flags": ["flagged"]}
  {"error": {"code": "unsupported", "message": "re:thread:x"}}

exit: 1
