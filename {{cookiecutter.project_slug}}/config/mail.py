"""Development mail on the console, printed as it was written, so its links can be copied.

Django's console backend prints a message as it would go to an SMTP server: Django 6 builds
it with Python's ``email.policy.default``, whose lines are at most 78 characters, so a text
body with a longer line (a verification or password-reset link is one) is encoded
quoted-printable, its lines split with "=" and non-ASCII text escaped as "=C3=BC". This backend
prints the same message built with a policy whose lines may have RFC 5322's 998 characters
and whose headers may hold UTF-8: text bodies are then 7bit or 8bit, their text unchanged.

https://docs.djangoproject.com/en/6.1/topics/email/#console-backend
https://docs.python.org/3/library/email.policy.html#email.policy.Policy.max_line_length
https://www.rfc-editor.org/rfc/rfc5322#section-2.1.1
"""

import email.policy

from django.core.mail import EmailMessage
from django.core.mail.backends import console

READABLE = email.policy.default.clone(max_line_length=998, utf8=True)


class EmailBackend(console.EmailBackend):
    """Django's console backend (MAILERS OPTIONS: ``stream``, default sys.stdout)."""

    def write_message(self, message: EmailMessage) -> None:
        self.stream.write(message.message(policy=READABLE).as_bytes().decode() + "\n")
        self.stream.write("-" * 79 + "\n")
