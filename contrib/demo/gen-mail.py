#!/usr/bin/python3
"""Deterministic generator of test and demo mail (RFC 5322 messages, CRLF).

Layer: contrib/demo, also imported by tests/lib and the benchmarks. Nothing
here is random at run time: every message comes from a seeded generator, so a
test can assert counts, UIDs and bytes.

Two sets:

  demo     a few hundred varied messages in INBOX, Archive, Sent, Drafts,
           Trash, Junk, "Entwürfe", "Projekte/Überblick" and "Отправленные":
           threads (In-Reply-To/References), UTF-8, ISO-8859-1 quoted-printable,
           KOI8-R, Shift_JIS, broken and unknown charsets, RFC 2047 encoded-word
           subjects (some broken), HTML-only, multipart/alternative, attachments
           with RFC 2231 names, nested message/rfc822, a subject carrying
           terminal escape sequences, a ~2 MB message, and a mix of flags.
           The special messages have names ("utf8", "attachment", ...) and the
           Message-ID <NAME@demo.tern.example>.
  bulk     N simple, realistic messages for one folder (the 50,000-message
           benchmark), generated fast.

Command line:

  gen-mail.py --out DIR                       the demo set
  gen-mail.py --count N --folder F --out DIR  N bulk messages for folder F
  gen-mail.py --list                          names and folders of the demo set

Each run writes DIR/NNNNNN.eml and DIR/manifest.jsonl, one JSON object per
message: file, folder, name, flags, keywords, internaldate, message_id.
tests/lib/dovecot.py seed reads that directory.

Python use: load this file with importlib and call demo_set(), bulk() or
named(NAME); each Mail carries the bytes and, for the named messages, what a
client should show (Mail.expect).
"""

import argparse
import base64
import datetime
import email.utils
import json
import os
import quopri
import random
import sys

DEFAULT_SEED = 20240105
DOMAIN = "demo.tern.example"
OWNER = ("Alice Example", "alice@example.org")

FOLDERS = ["INBOX", "Archive", "Sent", "Drafts", "Trash", "Junk", "Entwürfe",
           "Projekte/Überblick", "Отправленные"]

_TZ = {
    "+0100": datetime.timezone(datetime.timedelta(hours=1)),
    "+0200": datetime.timezone(datetime.timedelta(hours=2)),
    "-0500": datetime.timezone(datetime.timedelta(hours=-5)),
    "+0900": datetime.timezone(datetime.timedelta(hours=9)),
    "+0000": datetime.timezone.utc,
    "+0530": datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
}


class Mail:
    """One generated message and what a client should make of it."""

    def __init__(self, name, folder, data, flags=(), keywords=(), internaldate=None,
                 message_id=None, expect=None):
        self.name = name
        self.folder = folder
        self.data = data
        self.flags = list(flags)
        self.keywords = list(keywords)
        self.internaldate = internaldate
        self.message_id = message_id
        self.expect = expect or {}

    def manifest(self, filename):
        return {
            "file": filename,
            "folder": self.folder,
            "name": self.name,
            "flags": self.flags,
            "keywords": self.keywords,
            "internaldate": self.internaldate.isoformat() if self.internaldate else None,
            "message_id": self.message_id,
            "size": len(self.data),
        }

    def __repr__(self):
        return "<Mail %s in %s, %d bytes>" % (self.name, self.folder, len(self.data))


# ----- encoding helpers ------------------------------------------------------

def crlf(data):
    """Normalizes every line ending of DATA (bytes) to CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def ew_b(text, charset="UTF-8"):
    """An RFC 2047 encoded-word, B encoding."""
    raw = text.encode(_py_charset(charset))
    return "=?%s?B?%s?=" % (charset, base64.b64encode(raw).decode("ascii"))


def ew_q(text, charset="UTF-8"):
    """An RFC 2047 encoded-word, Q encoding."""
    out = []
    for byte in text.encode(_py_charset(charset)):
        c = chr(byte)
        if c == " ":
            out.append("_")
        elif c.isalnum() and byte < 128:
            out.append(c)
        else:
            out.append("=%02X" % byte)
    return "=?%s?Q?%s?=" % (charset, "".join(out))


def _py_charset(charset):
    return {"Shift_JIS": "shift_jis"}.get(charset, charset.lower())


def addr(name, address, charset="UTF-8"):
    """A mailbox for a header: plain when ASCII, encoded-word otherwise."""
    if not name:
        return "<%s>" % address
    try:
        name.encode("ascii")
        if any(c in name for c in ',.;:"()<>@[]'):
            return '"%s" <%s>' % (name.replace('"', '\\"'), address)
        return "%s <%s>" % (name, address)
    except UnicodeEncodeError:
        return "%s <%s>" % (ew_b(name, charset), address)


def b64_body(data):
    return crlf(base64.encodebytes(data))


def qp_body(data):
    return crlf(quopri.encodestring(data.replace(b"\r\n", b"\n")))


def rfc2231_param(name, value, split=None):
    """An RFC 2231 extended parameter (charset UTF-8, percent-encoded).

    SPLIT gives the lengths of the continuations (RFC 2231 §3) when set.
    """
    raw = value.encode("utf-8")
    enc = "".join(chr(b) if (chr(b).isalnum() and b < 128) or chr(b) in "-_.!~"
                  else "%%%02X" % b for b in raw)
    if not split:
        return "%s*=UTF-8''%s" % (name, enc)
    parts = []
    pos = 0
    for i, n in enumerate(split):
        end = len(enc) if i == len(split) - 1 else min(pos + n, len(enc))
        # A continuation never splits a %XX escape.
        while end < len(enc) and "%" in enc[max(pos, end - 2):end]:
            end -= 1
        prefix = "UTF-8''" if i == 0 else ""
        parts.append("%s*%d*=%s%s" % (name, i, prefix, enc[pos:end]))
        pos = end
    return ";\r\n ".join(parts)


def build(headers, body):
    """Joins HEADERS [(name, value)] and BODY (bytes) into a CRLF message."""
    out = []
    for name, value in headers:
        if value is None:
            continue
        if isinstance(value, str):
            value = value.encode("utf-8")
        out.append(name.encode("ascii") + b": " + value + b"\r\n")
    return b"".join(out) + b"\r\n" + crlf(body)


def fmt_date(dt):
    return email.utils.format_datetime(dt)


def pseudo_bytes(rng, n):
    """N deterministic pseudo-random bytes (fast)."""
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def fake_pdf(rng, pages=2):
    body = [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"]
    for i in range(pages):
        body.append(b"%d 0 obj\n<< /Type /Page /Contents (Invoice page %d) >>\nendobj\n" % (
            i + 1, i + 1))
        body.append(b"stream\n" + pseudo_bytes(rng, 1200) + b"\nendstream\n")
    body.append(b"trailer\n<< /Root 1 0 R >>\n%%EOF\n")
    return b"".join(body)


def tiny_png():
    """A valid 1x1 PNG."""
    return base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


# ----- word pools -------------------------------------------------------------

_FIRST = ["Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory",
          "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Zoë",
          "Jörg", "Chloé", "Søren", "Łukasz", "Ana"]
_LAST = ["Builder", "Jones", "Miller", "Nguyen", "Schmidt", "Okafor", "Tanaka", "Rossi",
         "García", "Müller", "Kowalski", "Dubois", "Smith", "Larsen", "Petrov"]
_DOMAINS = ["example.org", "example.com", "example.net", "lists.example.org",
            "corp.example.com"]
_TOPICS = ["budget", "release", "offsite", "roadmap", "invoice", "backup", "hiring",
           "server migration", "quarterly review", "design doc", "on-call rota", "newsletter",
           "travel plans", "security audit", "team lunch", "conference talk", "bug triage",
           "customer call", "license renewal", "performance numbers"]
_SUBJECT_FORMS = ["{topic} update", "Question about the {topic}", "{topic}: next steps",
                  "Re: {topic}", "Fwd: {topic} notes", "Reminder: {topic} on {day}",
                  "Draft {topic} for review", "{topic} ({n}/{m})", "Thoughts on the {topic}?",
                  "[team] {topic}"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
_SENTENCES = [
    "Thanks for the quick turnaround on this.",
    "I have attached the numbers we talked about yesterday.",
    "Could you take a look before the meeting on {day}?",
    "The {topic} is mostly done; two open questions remain.",
    "Let me know if the proposed time works for you.",
    "We should keep the scope small and ship it early.",
    "I moved the {topic} discussion to next week.",
    "The server was restarted at noon and everything looks fine.",
    "Please review the comments in the shared document.",
    "I am out of office until {day}, reply expected after that.",
    "The numbers for the {topic} are higher than expected.",
    "Can we decide on this by the end of the week?",
    "Here is a short summary of where we stand.",
    "Nothing urgent, just keeping you in the loop.",
    "I agree with most of the points above.",
]
_GERMAN = ["Übersicht der Meilensteine", "Größenänderung im Plan", "Prüfung der Änderungen",
           "Zwischenstand für März", "Grüße und offene Fragen", "Abstimmung zur Straßenführung"]
_RUSSIAN = ["Отчёт за неделю", "Встреча в пятницу", "Новый план", "Счёт за март",
            "Вопрос по проекту"]


def _person(rng):
    first = rng.choice(_FIRST)
    last = rng.choice(_LAST)
    domain = rng.choice(_DOMAINS)
    local = (first + "." + last).lower()
    for a, b in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss"), ("ë", "e"), ("é", "e"),
                 ("í", "i"), ("ø", "oe"), ("ł", "l")):
        local = local.replace(a, b)
    local = "".join(c for c in local.encode("ascii", "ignore").decode() if c.isalnum() or c == ".")
    return "%s %s" % (first, last), "%s@%s" % (local or "someone", domain)


def _paragraphs(rng, topic, count):
    paras = []
    for _ in range(count):
        sentences = [rng.choice(_SENTENCES).format(topic=topic, day=rng.choice(_DAYS))
                     for _ in range(rng.randint(2, 5))]
        paras.append(_wrap(" ".join(sentences)))
    return "\n\n".join(paras)


def _wrap(text, width=72):
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = (line + " " + word) if line else word
    if line:
        lines.append(line)
    return "\n".join(lines)


def _flags_for(rng, folder):
    if folder == "Drafts" or folder == "Entwürfe":
        return ["draft"]
    if folder in ("Sent", "Отправленные"):
        return ["seen"]
    flags = []
    r = rng.random()
    if r < 0.7:
        flags.append("seen")
    if rng.random() < 0.12:
        flags.append("flagged")
    if "seen" in flags and rng.random() < 0.2:
        flags.append("answered")
    if folder == "Trash" and rng.random() < 0.5:
        flags.append("deleted")
    return flags


def _generic(rng, folder, index, when, tz="+0100"):
    """A plain, realistic message for FOLDER."""
    topic = rng.choice(_TOPICS)
    sender = _person(rng)
    recipients = [OWNER]
    if folder in ("Sent", "Отправленные", "Drafts", "Entwürfe"):
        recipients = [_person(rng) for _ in range(rng.randint(1, 2))]
        sender = OWNER
    if folder == "Projekte/Überblick":
        subject = rng.choice(_GERMAN)
    elif folder == "Отправленные":
        subject = rng.choice(_RUSSIAN)
    else:
        subject = rng.choice(_SUBJECT_FORMS).format(
            topic=topic, day=rng.choice(_DAYS), n=rng.randint(1, 3), m=3)
        subject = subject[0].upper() + subject[1:]
    body = "Hi,\n\n%s\n\n-- \n%s\n" % (_paragraphs(rng, topic, rng.randint(1, 4)),
                                       sender[0])
    date = when.astimezone(_TZ[tz])
    slug = "".join(c if c.isalnum() else "-" for c in
                   folder.encode("ascii", "ignore").decode().lower()) or "x"
    mid = "gen-%s-%d@%s" % (slug, index, DOMAIN)
    subject_hdr = subject
    try:
        subject.encode("ascii")
    except UnicodeEncodeError:
        subject_hdr = ew_b(subject) if index % 2 else ew_q(subject)
    headers = [
        ("Return-Path", "<%s>" % sender[1]),
        ("Received", "from mx%d.example.org (mx%d.example.org [127.0.0.1])\r\n"
         "\tby imap.example.org with ESMTPS id %08x\r\n\tfor <%s>; %s" % (
             1 + index % 4, 1 + index % 4, rng.getrandbits(32), OWNER[1], fmt_date(date))),
        ("Date", fmt_date(date)),
        ("From", addr(*sender)),
        ("To", ", ".join(addr(*r) for r in recipients)),
        ("Subject", subject_hdr),
        ("Message-ID", "<%s>" % mid),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ]
    if rng.random() < 0.2:
        headers.insert(5, ("Cc", addr(*_person(rng))))
    return Mail("gen-%s-%d" % (slug, index), folder, build(headers, body.encode("utf-8")),
                flags=_flags_for(rng, folder), internaldate=date, message_id=mid,
                expect={"subject": subject})


# ----- the named messages -------------------------------------------------------

def _special(rng, base):
    """The named messages of the demo set, in INBOX unless said otherwise."""
    mails = []
    alice = addr(*OWNER)
    t = [base]

    def when(hours=5, tz="+0100"):
        t[0] = t[0] + datetime.timedelta(hours=hours)
        return t[0].astimezone(_TZ[tz])

    def mid(name):
        return "%s@%s" % (name, DOMAIN)

    def add(name, headers, body, flags=("seen",), keywords=(), folder="INBOX", expect=None,
            date=None, with_mid=True):
        date = date or when()
        hdrs = list(headers)
        names = [h[0].lower() for h in hdrs]
        if "date" not in names and not name.startswith("no-date"):
            hdrs.insert(0, ("Date", fmt_date(date)))
        if with_mid and "message-id" not in names:
            hdrs.append(("Message-ID", "<%s>" % mid(name)))
        if "mime-version" not in names:
            hdrs.append(("MIME-Version", "1.0"))
        e = dict(expect or {})
        mails.append(Mail(name, folder, build(hdrs, body), flags=flags, keywords=keywords,
                          internaldate=date, message_id=mid(name) if with_mid else None,
                          expect=e))

    # A fixed Date with an offset: the date format of list.
    fixed = datetime.datetime(2024, 1, 5, 10, 0, 0, tzinfo=_TZ["+0100"])
    add("date-offset", [
        ("Date", "Fri, 05 Jan 2024 10:00:00 +0100"),
        ("From", "Bob Builder <bob@example.org>"),
        ("To", "Alice Example <alice@example.org>, Carol Jones <carol@example.net>"),
        ("Subject", "Quarterly numbers"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ], b"Hi Alice,\n\nthe quarterly numbers are in the shared folder.\n\nBob\n",
        flags=("seen", "answered"), date=fixed, expect={
            "date": "2024-01-05T10:00:00+01:00",
            "from": "Bob Builder <bob@example.org>",
            "to": "Alice Example <alice@example.org>, Carol Jones <carol@example.net>",
            "subject": "Quarterly numbers",
            "flags": ["seen", "answered"],
            "text_contains": ["the quarterly numbers are in the shared folder"],
        })

    add("utf8", [
        ("From", addr("Jörg Müller", "joerg@example.org")),
        ("To", alice),
        ("Subject", ew_b("Grüße aus Köln ☕")),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ], "Hallo Alice,\n\nschöne Grüße aus Köln! Preis: 12 € — Straße.\n"
       "日本語のテキスト ✓\n\nJörg\n".encode("utf-8"), flags=(), expect={
            "from": "Jörg Müller <joerg@example.org>",
            "subject": "Grüße aus Köln ☕",
            "text_contains": ["schöne Grüße aus Köln! Preis: 12 € — Straße.",
                              "日本語のテキスト ✓"],
        })

    add("latin1-qp", [
        ("From", "%s <chloe@example.org>" % ew_q("Chloé Dubois", "ISO-8859-1")),
        ("To", alice),
        ("Subject", ew_q("Menü für Freitag", "ISO-8859-1")),
        ("Content-Type", "text/plain; charset=ISO-8859-1"),
        ("Content-Transfer-Encoding", "quoted-printable"),
    ], qp_body("Bonjour Alice,\n\nCafé crème brûlée, naïve façade, Ærø: ½ prix, 3 × 4 = 12.\n"
               .encode("iso-8859-1")), expect={
            "from": "Chloé Dubois <chloe@example.org>",
            "subject": "Menü für Freitag",
            "text_contains": ["Café crème brûlée, naïve façade, Ærø: ½ prix, 3 × 4 = 12."],
        })

    add("koi8r", [
        ("From", addr("Иван Петров", "ivan@example.org", "KOI8-R")),
        ("To", alice),
        ("Subject", ew_b("Встреча в пятницу", "KOI8-R")),
        ("Content-Type", "text/plain; charset=KOI8-R"),
        ("Content-Transfer-Encoding", "8bit"),
    ], "Привет, Алиса!\n\nВстреча перенесена на пятницу, 15:00.\n\nИван\n".encode("koi8-r"),
        expect={
            "from": "Иван Петров <ivan@example.org>",
            "subject": "Встреча в пятницу",
            "text_contains": ["Привет, Алиса!", "Встреча перенесена на пятницу, 15:00."],
        })

    add("sjis", [
        ("From", addr("田中 花子", "hanako@example.org", "Shift_JIS")),
        ("To", alice),
        ("Subject", ew_b("会議の件", "Shift_JIS")),
        ("Content-Type", "text/plain; charset=Shift_JIS"),
        ("Content-Transfer-Encoding", "base64"),
    ], b64_body("アリスさん\n\nこんにちは。会議は明日の十時です。\n\n田中\n".encode("shift_jis")),
        expect={
            "from": "田中 花子 <hanako@example.org>",
            "subject": "会議の件",
            "text_contains": ["こんにちは。会議は明日の十時です。"],
        })

    add("broken-charset", [
        ("From", "Mallory Rossi <mallory@example.com>"),
        ("To", alice),
        ("Subject", "Broken bytes inside"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ], b"Start BROKEN-CHARSET-OK \xff\xfe\xc3( \xed\xa0\x80 \xc0\xaf end of the line\n",
        flags=(), expect={
            "subject": "Broken bytes inside",
            "text_contains": ["BROKEN-CHARSET-OK", "end of the line"],
        })

    add("unknown-charset", [
        ("From", "Trent Okafor <trent@example.net>"),
        ("To", alice),
        ("Subject", "=?x-tern-unknown?Q?Unknown_charset_subject?="),
        ("Content-Type", 'text/plain; charset="x-tern-unknown"'),
        ("Content-Transfer-Encoding", "8bit"),
    ], b"UNKNOWN-CHARSET-OK plain ascii text, then a high byte: \xe9.\n", flags=(), expect={
            "text_contains": ["UNKNOWN-CHARSET-OK plain ascii text"],
        })

    add("ew-subject", [
        ("From", "Sybil Larsen <sybil@example.org>"),
        ("To", alice),
        ("Subject", "=?UTF-8?Q?Re:_Caf=C3=A9?= =?UTF-8?B?IOKYlQ==?="),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ], b"Two adjacent encoded-words, Q then B.\n", expect={
            "subject": "Re: Café ☕",
        })

    add("ew-broken", [
        ("From", "=?UTF-8?B?!!!notbase64?= <broken@example.com>"),
        ("To", alice),
        ("Subject", "=?UTF-8?B?!!!notbase64?= =?x-unknown?Q?abc?= =?UTF-8?Q?unterminated"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ], b"EW-BROKEN-OK: the subject holds malformed encoded-words.\n", flags=(), expect={
            "text_contains": ["EW-BROKEN-OK"],
        })

    add("html-only", [
        ("From", "Reports <reports@example.com>"),
        ("To", alice),
        ("Subject", "Quarterly report (HTML)"),
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Transfer-Encoding", "quoted-printable"),
    ], qp_body(
        "<!DOCTYPE html>\n<html><head><title>Report</title>\n"
        "<style>p { color: red; } .hidden-style-rule { display: none; }</style>\n"
        "<script>var hiddenScriptMarker = 1;</script></head>\n"
        "<body><h1>Quarterly report</h1>\n"
        "<p>Revenue is <b>up</b> at Caf&eacute; &amp; Co.</p>\n"
        "<ul><li>First item</li><li>Second item</li></ul>\n"
        "<p>Visit <a href=\"https://example.com/report\">the report</a>.</p>\n"
        "</body></html>\n".encode("utf-8")), expect={
            "subject": "Quarterly report (HTML)",
            "text_contains": ["Quarterly report", "Café & Co.", "First item", "Second item"],
            "text_absent": ["<p>", "<b>", "&amp;", "hiddenScriptMarker",
                            "hidden-style-rule"],
        })

    boundary = "=_alt_boundary_1"
    add("alternative", [
        ("From", "Newsletter <news@lists.example.org>"),
        ("To", alice),
        ("Subject", "Newsletter: plain and HTML"),
        ("Content-Type", 'multipart/alternative; boundary="%s"' % boundary),
    ], ("This is a multi-part message in MIME format.\n"
        "--{b}\nContent-Type: text/plain; charset=utf-8\n\n"
        "PLAIN-VERSION of the newsletter.\n"
        "--{b}\nContent-Type: text/html; charset=utf-8\n\n"
        "<html><body><p>HTML-VERSION of the newsletter.</p></body></html>\n"
        "--{b}--\n").format(b=boundary).encode("utf-8"), expect={
            "text_contains": ["PLAIN-VERSION of the newsletter."],
            "text_absent": ["HTML-VERSION"],
            "part_types": ["text/plain", "text/html"],
        })

    pdf = fake_pdf(rng)
    png = tiny_png()
    csv = b"date,amount\r\n2024-03-01,12.50\r\n2024-03-02,7.25\r\n"
    b = "=_mixed_boundary_2"
    add("attachment", [
        ("From", "Billing <billing@example.com>"),
        ("To", alice),
        ("Subject", "Your invoice for March"),
        ("Content-Type", 'multipart/mixed; boundary="%s"' % b),
    ], b"".join([
        b"--" + b.encode() + b"\nContent-Type: text/plain; charset=utf-8\n\n"
        b"Please find the invoice attached.\n",
        b"--" + b.encode() + b"\nContent-Type: application/pdf\n"
        b"Content-Disposition: attachment;\n "
        + rfc2231_param("filename", "Rechnung März 2024.pdf").encode() +
        b"\nContent-Transfer-Encoding: base64\n\n" + b64_body(pdf),
        b"--" + b.encode() + b"\nContent-Type: image/png\n"
        b"Content-Disposition: attachment;\n "
        + rfc2231_param("filename", "Grüße aus Köln.png", split=[21, 40]).encode() +
        b"\nContent-Transfer-Encoding: base64\n\n" + b64_body(png),
        b"--" + b.encode() + b"\nContent-Type: text/csv; name=\"data.csv\"\n"
        b"Content-Disposition: attachment; filename=\"data.csv\"\n"
        b"Content-Transfer-Encoding: base64\n\n" + b64_body(csv),
        b"--" + b.encode() + b"--\n",
    ]), flags=("seen", "flagged"), expect={
            "text_contains": ["Please find the invoice attached."],
            "attachments": [
                {"filename": "Rechnung März 2024.pdf", "type": "application/pdf", "data": pdf},
                {"filename": "Grüße aus Köln.png", "type": "image/png", "data": png},
                {"filename": "data.csv", "type": "text/csv", "data": csv},
            ],
        })

    inner_b = "=_inner_boundary_3"
    inner = build([
        ("Date", "Mon, 01 Jan 2024 08:00:00 +0000"),
        ("From", "Olivia Tanaka <olivia@example.net>"),
        ("To", "Bob Builder <bob@example.org>"),
        ("Subject", "Inner subject"),
        ("Message-ID", "<inner-of-nested@%s>" % DOMAIN),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'multipart/mixed; boundary="%s"' % inner_b),
    ], ("--{b}\nContent-Type: text/plain; charset=utf-8\n\nINNER-BODY text of the forwarded "
        "message.\n--{b}\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Disposition: attachment; filename=\"inner.txt\"\n\ninner attachment\n"
        "--{b}--\n").format(b=inner_b).encode())
    outer_b = "=_outer_boundary_4"
    add("nested", [
        ("From", "Bob Builder <bob@example.org>"),
        ("To", alice),
        ("Subject", "Fwd: Inner subject"),
        ("Content-Type", 'multipart/mixed; boundary="%s"' % outer_b),
    ], b"--" + outer_b.encode() + b"\nContent-Type: text/plain; charset=utf-8\n\n"
       b"See the forwarded message below.\n"
       b"--" + outer_b.encode() + b"\nContent-Type: message/rfc822\n"
       b"Content-Disposition: inline\n\n" + inner +
       b"\n--" + outer_b.encode() + b"--\n", expect={
            "text_contains": ["See the forwarded message below."],
            "part_types": ["message/rfc822"],
        })

    add("escape", [
        ("From", "Evil \x1b[31mRed\x1b[0m <evil@example.com>"),
        ("To", alice),
        ("Subject", "Invoice \x1b[2J\x1b]0;owned\x07 due =?UTF-8?Q?=1B]2;title=07?="),
        ("Content-Type", "text/plain; charset=utf-8"),
    ], "ESCAPE-BODY \x1b[2J\x1b]0;owned\x07 \x1bP+q\x1b\\ \u009b31m \u202eevil\u202c end\n"
        .encode("utf-8"), flags=(), expect={
            "text_contains": ["ESCAPE-BODY"],
        })

    big = pseudo_bytes(rng, 1_500_000)
    bb = "=_big_boundary_5"
    add("large", [
        ("From", "Backup Robot <backup@example.com>"),
        ("To", alice),
        ("Subject", "Nightly backup archive (2 MB)"),
        ("Content-Type", 'multipart/mixed; boundary="%s"' % bb),
    ], b"--" + bb.encode() + b"\nContent-Type: text/plain; charset=utf-8\n\n"
       b"LARGE-MESSAGE: the archive is attached.\n"
       b"--" + bb.encode() + b"\nContent-Type: application/octet-stream\n"
       b"Content-Disposition: attachment; filename=\"big.bin\"\n"
       b"Content-Transfer-Encoding: base64\n\n" + b64_body(big) +
       b"--" + bb.encode() + b"--\n", expect={
            "text_contains": ["LARGE-MESSAGE: the archive is attached."],
            "attachments": [{"filename": "big.bin", "type": "application/octet-stream",
                             "data": big}],
        })

    add("no-msgid", [
        ("From", "Walter Smith <walter@example.org>"),
        ("To", alice),
        ("Subject", "A message without a Message-ID"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ], b"There is no Message-ID header in this message.\n", with_mid=False, expect={
            "subject": "A message without a Message-ID",
            "message_id": None,
        })

    nd = datetime.datetime(2024, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)
    add("no-date", [
        ("From", "Victor Nguyen <victor@example.com>"),
        ("To", alice),
        ("Subject", "A message without a Date header"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ], b"The list date comes from INTERNALDATE.\n", date=nd, expect={
            "internaldate": nd,
        })
    bd = datetime.datetime(2024, 2, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
    add("bad-date", [
        ("Date", "not a date at all"),
        ("From", "Victor Nguyen <victor@example.com>"),
        ("To", alice),
        ("Subject", "A message with an unparseable Date header"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ], b"The list date comes from INTERNALDATE.\n", date=bd, expect={
            "internaldate": bd,
        })

    add("headers", [
        ("From", "Heidi Schmidt <heidi@example.org>"),
        ("To", alice),
        ("Cc", "Peggy Miller <peggy@example.com>"),
        ("Subject", "A long subject that is\r\n folded over two lines"),
        ("X-Tern-Tag", "one"),
        ("X-Tern-Tag", "two"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ], b"Repeated and folded headers.\n", expect={
            "subject": "A long subject that is folded over two lines",
            "headers": {"x-tern-tag": "one\ntwo", "cc": "Peggy Miller <peggy@example.com>"},
        })

    add("keywords", [
        ("From", "Grace Kowalski <grace@example.net>"),
        ("To", alice),
        ("Subject", "Tagged with keywords"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ], b"This message carries the keywords $label1 and $Important.\n",
        flags=("seen", "flagged"), keywords=("$label1", "$Important"), expect={
            "flags": ["seen", "flagged", "$label1", "$Important"],
        })

    add("search-zebra", [
        ("From", "Zed Zebra <zed@example.net>"),
        ("To", alice),
        ("Subject", "Zebra crossing plan"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ], b"The pineapple delivery arrives on Thursday.\n", flags=(), expect={
            "subject": "Zebra crossing plan",
        })

    # A thread of five (RFC 5322 §3.6.4), one reply from the owner in Sent.
    ids = []
    people = [("Dave Rossi", "dave@example.com"), OWNER, ("Erin Larsen", "erin@example.org"),
              ("Dave Rossi", "dave@example.com"), ("Frank Petrov", "frank@example.net")]
    for i, who in enumerate(people):
        name = "thread-lunch-%d" % (i + 1)
        headers = [
            ("From", addr(*who)),
            ("To", "Team <team@lists.example.org>"),
            ("Subject", "Lunch on Friday?" if i == 0 else "Re: Lunch on Friday?"),
            ("Content-Type", "text/plain; charset=us-ascii"),
        ]
        if ids:
            headers.append(("In-Reply-To", "<%s>" % ids[-1]))
            headers.append(("References", " ".join("<%s>" % x for x in ids)))
        body = "Message %d of the lunch thread.\n\n%s\n" % (i + 1, _paragraphs(rng, "team lunch", 1))
        add(name, headers, body.encode(), folder="Sent" if who == OWNER else "INBOX",
            flags=("seen",) if i < 3 else (), expect={"thread_root": "thread-lunch-1"})
        ids.append(mid(name))

    ids = []
    for i in range(3):
        name = "thread-deploy-%d" % (i + 1)
        headers = [
            ("From", addr(*[("Rupert Jones", "rupert@example.org"),
                            ("Judy Miller", "judy@example.com")][i % 2])),
            ("To", alice),
            ("Subject", "Deploy window" if i == 0 else "Re: Deploy window"),
            ("Content-Type", "text/plain; charset=us-ascii"),
        ]
        if ids:
            headers.append(("In-Reply-To", "<%s>" % ids[-1]))
            headers.append(("References", " ".join("<%s>" % x for x in ids)))
        add(name, headers, ("Deploy thread, message %d.\n" % (i + 1)).encode(),
            expect={"thread_root": "thread-deploy-1"})
        ids.append(mid(name))

    add("draft-1", [
        ("From", alice),
        ("To", "Bob Builder <bob@example.org>"),
        ("Subject", "Unfinished reply"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ], b"I still need to finish this.\n", folder="Drafts", flags=("draft", "seen"))
    add("entwurf-1", [
        ("From", alice),
        ("To", addr("Jörg Müller", "joerg@example.org")),
        ("Subject", ew_q("Entwurf: Änderungen")),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ], "Noch nicht fertig – bitte nicht senden.\n".encode(), folder="Entwürfe",
        flags=("draft",), expect={"subject": "Entwurf: Änderungen"})
    add("sent-ru-1", [
        ("From", alice),
        ("To", addr("Иван Петров", "ivan@example.org")),
        ("Subject", ew_b("Ответ: Встреча в пятницу")),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ], "Иван, пятница подходит.\n".encode(), folder="Отправленные", expect={
        "subject": "Ответ: Встреча в пятницу"})
    add("junk-1", [
        ("From", "Prize Office <winner@example.com>"),
        ("To", alice),
        ("Subject", "=?UTF-8?B?8J+SsCBZT1UgV09OIPCfkrA=?="),
        ("Content-Type", "text/html; charset=utf-8"),
    ], b"<p>Click <a href=\"https://example.com/\">here</a>!</p>\n", folder="Junk", flags=())
    return mails


# ----- the sets ---------------------------------------------------------------

# Generic messages per folder in the demo set, on top of the named ones.
_DEMO_COUNTS = [("INBOX", 120), ("Archive", 80), ("Sent", 30), ("Drafts", 2), ("Trash", 6),
                ("Junk", 5), ("Entwürfe", 3), ("Projekte/Überblick", 12),
                ("Отправленные", 6)]


def demo_set(seed=DEFAULT_SEED):
    """The demo set: a list of Mail, deterministic for SEED.

    Within a folder, the list order is the order to store them in, so that UIDs
    rise with it; generic messages come first (older), the named ones last.
    """
    rng = random.Random(seed)
    start = datetime.datetime(2023, 9, 1, 8, 0, 0, tzinfo=datetime.timezone.utc)
    mails = []
    tzs = list(_TZ)
    for folder, count in _DEMO_COUNTS:
        when = start
        for i in range(count):
            when = when + datetime.timedelta(minutes=rng.randint(30, 1440))
            mails.append(_generic(rng, folder, i + 1, when, tz=rng.choice(tzs)))
    special_base = datetime.datetime(2024, 3, 1, 9, 0, 0, tzinfo=datetime.timezone.utc)
    mails.extend(_special(random.Random(seed + 1), special_base))
    # Stable order: by folder as in FOLDERS, keeping generation order inside one.
    order = {f: i for i, f in enumerate(FOLDERS)}
    mails.sort(key=lambda m: order[m.folder])
    return mails


def named(name, seed=DEFAULT_SEED):
    """The named message NAME of the demo set."""
    for m in demo_set(seed):
        if m.name == name:
            return m
    raise KeyError(name)


def bulk(count, folder="INBOX", seed=DEFAULT_SEED, start_index=0):
    """COUNT simple messages for FOLDER, oldest first (a generator)."""
    rng = random.Random("%s/%s/%d" % (seed, folder, start_index))
    when = datetime.datetime(2020, 1, 1, 0, 0, 0, tzinfo=datetime.timezone.utc)
    slug = "".join(c if c.isalnum() else "-" for c in
                   folder.encode("ascii", "ignore").decode().lower()) or "x"
    tzs = list(_TZ)
    for i in range(start_index, start_index + count):
        when = when + datetime.timedelta(seconds=rng.randint(60, 3600))
        m = _generic(rng, folder, i + 1, when, tz=tzs[i % len(tzs)])
        m.name = "bulk-%s-%d" % (slug, i + 1)
        # Bulk messages carry their own id namespace so sets can be combined.
        old = m.message_id
        m.message_id = "bulk-%s-%d@bench.tern.example" % (slug, i + 1)
        m.data = m.data.replace(old.encode(), m.message_id.encode(), 1)
        if rng.random() < 0.3:
            m.flags = [f for f in m.flags if f != "seen"]
        yield m


def write(mails, out):
    """Writes MAILS into OUT as NNNNNN.eml plus manifest.jsonl; returns the count."""
    os.makedirs(out, exist_ok=True)
    n = 0
    with open(os.path.join(out, "manifest.jsonl"), "w", encoding="utf-8") as manifest:
        for n, m in enumerate(mails, 1):
            filename = "%06d.eml" % n
            with open(os.path.join(out, filename), "wb") as f:
                f.write(m.data)
            manifest.write(json.dumps(m.manifest(filename), ensure_ascii=False) + "\n")
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description="Generate deterministic demo or bulk mail.")
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--count", type=int, help="bulk mode: this many simple messages")
    ap.add_argument("--folder", default="INBOX", help="bulk mode: the folder")
    ap.add_argument("--list", action="store_true", help="print the demo set's messages")
    args = ap.parse_args(argv)
    if args.list:
        for m in demo_set(args.seed):
            print("%-22s %-20s %8d %s" % (m.folder, m.name, len(m.data), ",".join(m.flags)))
        return 0
    if not args.out:
        ap.error("--out is required")
    if args.count is not None:
        if args.count < 0:
            ap.error("--count must not be negative")
        n = write(bulk(args.count, args.folder, args.seed), args.out)
    else:
        n = write(demo_set(args.seed), args.out)
    print("wrote %d messages to %s" % (n, args.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
