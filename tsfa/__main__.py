"""``python -m tsfa`` runs the command line."""

from tsfa.cli import app

app(prog_name="tsfa")
