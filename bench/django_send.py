"""The original app's sending loop, as a baseline for `skychimpd send`.

The Django app this project replaces sent a mailing with `django.core.mail.send_mail` in a
loop: one SMTP connection per message (send_mail opens and closes its own connection), and,
in its logging variant, one ORM row per message. This program reproduces both against any
SMTP server and prints one line: `django <variant>: M messages in S s = R messages/s`.

Usage:
    python bench/django_send.py --port PORT [--count M] [--size BYTES]
                                [--database-url postgres://user@host:port/db]

With --database-url every message also saves one `SendLog` row (the table is created on
start, dropped at the end), as the original app did. Needs `django` (and `psycopg` for the
database variant) in the interpreter that runs it; bench/send.sh makes a venv under target/.
"""

import argparse
import sys
import time
from urllib.parse import urlparse


def configure(port, database_url):
    import django
    from django.conf import settings

    databases = {}
    if database_url:
        u = urlparse(database_url)
        databases["default"] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": u.path.lstrip("/"),
            "USER": u.username or "postgres",
            "PASSWORD": u.password or "",
            "HOST": u.hostname or "127.0.0.1",
            "PORT": str(u.port or 5432),
        }
    settings.configure(
        DEBUG=False,
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=port,
        EMAIL_USE_TLS=False,
        EMAIL_TIMEOUT=30,
        DEFAULT_FROM_EMAIL="news@example.com",
        DATABASES=databases,
        INSTALLED_APPS=["django.contrib.contenttypes"],
        USE_TZ=True,
    )
    django.setup()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--size", type=int, default=2000, help="body bytes")
    p.add_argument("--database-url", default="")
    a = p.parse_args()
    configure(a.port, a.database_url)

    from django.core.mail import send_mail
    from django.db import connection, models
    from django.utils import timezone

    log_model = None
    if a.database_url:

        class SendLog(models.Model):
            address = models.CharField(max_length=254)
            subject = models.CharField(max_length=200)
            status = models.CharField(max_length=16)
            sent_at = models.DateTimeField()

            class Meta:
                app_label = "bench"

        log_model = SendLog
        with connection.schema_editor() as editor:
            editor.create_model(SendLog)

    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"
    body = (line * (a.size // len(line) + 1))[: a.size]
    variant = "send_mail + ORM row" if log_model else "send_mail"
    start = time.monotonic()
    try:
        for i in range(a.count):
            to = f"client{i:07d}@example.com"
            subject = f"News for Client {i}"
            send_mail(subject, body, None, [to], fail_silently=False)
            if log_model:
                log_model.objects.create(
                    address=to, subject=subject, status="sent", sent_at=timezone.now()
                )
        elapsed = time.monotonic() - start
    finally:
        if log_model:
            with connection.schema_editor() as editor:
                editor.delete_model(log_model)
    rate = a.count / elapsed
    print(f"django {variant}: {a.count} messages in {elapsed:.2f} s = {rate:.0f} messages/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
