"""`openhermes data prepare` and `openhermes data inspect`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from openhermes.cli.common import OVERWRITE_HELP, SET_HELP, _fail, _recipe, console, data_app


@data_app.command("prepare")
def data_prepare(
    recipe: str = typer.Argument("tiny", help="Recipe file or shipped recipe name."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the prepared set (default: the cache)."),
    strict: bool = typer.Option(False, help="Fail if any row would be dropped."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
) -> None:
    """Read, check, tokenize and pack a recipe's data sets into a cached Arrow folder."""
    r = _recipe(recipe, set_)  # a mistyped key is answered before the imports
    from openhermes.data.checks import StrictError
    from openhermes.data.inspect import inspect
    from openhermes.data.prepare import prepare
    from openhermes.model.load import ModelLoadError, load_tokenizer
    from openhermes.outputs import OutputError
    from openhermes.train.base_model import ensure_base_model

    try:
        tok = load_tokenizer(ensure_base_model(r), r.prompt_format, r.special_tokens, r.tokens, r.add_bos)
        prep = prepare(r, tok, out_dir=out, strict=strict, overwrite=overwrite)
    except (StrictError, ModelLoadError, ValueError, FileNotFoundError, OutputError) as e:
        _fail(str(e))
    console.print(f"{'cache hit' if prep.cache_hit else 'prepared'}: {prep.path}")
    inspect(prep.path, console=Console())
    details = prep.report["rows"]["details"]
    for d in details[:20]:
        typer.echo(f"  dropped {d['where']}: {d['reason']} {d['detail']}", err=True)
    if len(details) > 20:
        typer.echo(f"  … and {len(details) - 20} more (all in {prep.path / 'report.json'})", err=True)


@data_app.command("inspect")
def data_inspect(path: Path = typer.Argument(..., help="A prepared data folder."),
                 row: int = typer.Option(0, help="Which train row to show.")) -> None:
    """Show a prepared row with trained tokens highlighted, and the data statistics."""
    from openhermes.data.inspect import inspect

    try:
        inspect(path, row, Console())
    except (FileNotFoundError, IndexError) as e:
        _fail(str(e))

