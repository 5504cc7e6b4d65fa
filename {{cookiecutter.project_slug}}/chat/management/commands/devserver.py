import os

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV


class Command(BaseCommand):
    help = "Apply migrations, then serve HTTP and WebSockets with auto-reload (development)."

    def add_arguments(self, parser):
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")

    def handle(self, *args, addrport: str, **options) -> None:
        # runserver's autoreloader runs this command again in a child process (RUN_MAIN=true),
        # and again after every code change: only the first process migrates.
        if os.environ.get(DJANGO_AUTORELOAD_ENV) != "true":
            call_command("migrate", interactive=False, verbosity=1)
        call_command("runserver", addrport)
