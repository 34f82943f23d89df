"""The `openhermes` command: one module per kind of work, each subcommand a few lines that call the modules.
The imports register the commands, and `--help` lists them in this order."""

from openhermes.cli.common import app  # noqa: I001
from openhermes.cli import train, inference, export, evaluate, data  # noqa: F401

__all__ = ["app"]
