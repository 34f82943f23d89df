"""`python -m openhermes.cli` (torchrun starts the ranks this way)."""

from openhermes.cli import app

app()
