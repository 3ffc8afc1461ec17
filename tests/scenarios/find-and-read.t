story: Find a message by sender with a server-side search, then read it.

setup:
  INBOX: bulk 3 flags=seen
  INBOX: demo search-zebra utf8 flags=
  INBOX: bulk 2 flags=seen

commands:
  search INBOX from:zed
  show INBOX 4
  search INBOX is:unread
  show INBOX 5

expect:
  {"uid": 4, "folder": "INBOX", "subject": "Zebra crossing plan", "from": "Zed Zebra <zed@example.net>", "message_id": "search-zebra@demo.tern.example", "date": "2024-03-05T04:00:00+01:00"}
  {"uid": 4, "headers": {"subject": "Zebra crossing plan", "from": "Zed Zebra <zed@example.net>"}, "text": "re:The pineapple delivery arrives on Thursday\\.", "parts": [{"id": "1", "type": "text/plain"}]}
  {"uid": 5, "folder": "INBOX", "subject": "Grüße aus Köln ☕"}
  {"uid": 4, "folder": "INBOX", "subject": "Zebra crossing plan"}
  {"uid": 5, "headers": {"subject": "Grüße aus Köln ☕", "from": "Jörg Müller <joerg@example.org>"}, "text": "re:schöne Grüße aus Köln! Preis: 12 € — Straße\\.\\r?\\n日本語のテキスト ✓"}

exit: 0
