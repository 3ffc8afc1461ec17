story: Organise folders with non-ASCII names: create, rename, unsubscribe and remove.

setup:
  INBOX: bulk 1 flags=seen
  Отправленные: demo sent-ru-1

commands:
  mkdir "Projekte/Überblick 2024"
  mkdir Отчёты
  rename Отчёты "Отчёты 2024"
  unsubscribe "Projekte/Überblick 2024"
  subscribe "Projekte/Überblick 2024"
  mkdir Müll
  rmdir Müll
  folders
  list Отправленные

expect:
  {"folder": "Projekte/Überblick 2024"}
  {"folder": "Отчёты"}
  {"folder": "Отчёты 2024"}
  {"folder": "Projekte/Überblick 2024"}
  {"folder": "Projekte/Überblick 2024"}
  {"folder": "Müll"}
  {"folder": "Müll"}
  ...
  {"name": "Отправленные", "delimiter": "/", "special": null, "total": 1, "unseen": 0, "subscribed": true}
  ...
  {"uid": 1, "subject": "Ответ: Встреча в пятницу", "to": "Иван Петров <ivan@example.org>", "flags": ["seen"]}

exit: 0

server:
  folder "Projekte/Überblick 2024" exists
  folder "Projekte/Überblick 2024" subscribed
  folder "Отчёты 2024" exists
  folder Отчёты absent
  folder Müll absent
