story: Look at an invoice's parts, save the PDF under its own name, and keep the raw message.

setup:
  INBOX: demo attachment

commands:
  show INBOX 1
  save INBOX 1 2 "$OUT/Rechnung März 2024.pdf"
  save INBOX 1 0 $OUT/raw.eml

expect:
  {"uid": 1, "headers": {"subject": "Your invoice for March"}, "text": "re:Please find the invoice attached\\.", "parts": [{"id": "1", "type": "text/plain", "filename": null}, {"id": "2", "type": "application/pdf", "filename": "Rechnung März 2024.pdf"}, {"id": "3", "type": "image/png", "filename": "Grüße aus Köln.png"}, {"id": "4", "type": "text/csv", "filename": "data.csv"}]}
  {"saved": "$OUT/Rechnung März 2024.pdf", "size": 2603}
  {"saved": "$OUT/raw.eml", "size": 4651}

exit: 0

files:
  "$OUT/Rechnung März 2024.pdf" size=2603 sha256=3215ad81ec89b600d108bbc25748fe40085821a0adf31d30f94630a8d3876d85
  $OUT/raw.eml size=4651 same_as=demo:attachment
