"""``python -m tsfa`` runs the command line."""

from .cli import app

app(prog_name="tsfa")
