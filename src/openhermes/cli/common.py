"""What every subcommand shares: the app, the error line, recipes, the common option texts."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(help="openhermes: reproduce OpenHermes 2.5 / LimaRP Mistral 7B end to end.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Prepare and inspect training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)

SET_HELP = "Override a recipe key: --set key=value (repeatable; values are YAML)."
OVERWRITE_HELP = ("Write into an output that openhermes did not create. Only openhermes's own files are "
                  "replaced there; every other file is kept.")


def _fail(msg: str) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True)
    raise typer.Exit(2)


def _recipe(recipe: str, overrides: list[str] | None):
    from openhermes.config import RecipeError, load_recipe

    try:
        return load_recipe(recipe, overrides or [])
    except RecipeError as e:
        _fail(str(e))

