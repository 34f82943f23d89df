"""`openhermes train` (one process, several, several machines) and `openhermes merge`."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer
from rich.console import Console

from openhermes.cli.common import OVERWRITE_HELP, SET_HELP, _fail, _recipe, app, console


@app.command()
def train(
    recipe: str = typer.Argument("tiny", help="Recipe file or shipped recipe name; default: the embedded tiny model."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: the recipe's output_dir)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in the output folder."),
    nproc: int = typer.Option(1, min=1, help="Processes on this machine (data parallel / FSDP via torchrun)."),
    nnodes: str = typer.Option("1", help="Machines in the run (torchrun's --nnodes): K, or MIN:MAX for an elastic "
                               "start with --rdzv-endpoint. Start `openhermes train` on each, with the same recipe."),
    node_rank: int = typer.Option(0, min=0, help="This machine's place among --nnodes (0 hosts the rendezvous)."),
    master_addr: str | None = typer.Option(None, help="Node 0's address, which every node reaches."),
    master_port: int = typer.Option(29500, help="Node 0's rendezvous port."),
    rdzv_endpoint: str | None = typer.Option(None, help="HOST:PORT of torchrun's c10d rendezvous instead of "
                                             "--master-addr: node ranks are assigned as nodes join."),
    rdzv_id: str = typer.Option("openhermes", help="The c10d rendezvous' run id (e.g. $SLURM_JOB_ID)."),
    join_timeout: float = typer.Option(900, help="Seconds a node waits for node 0 (or the rendezvous) to open."),
    report: bool = typer.Option(True, help="For the tiny default: compare trained and untrained on held-out items."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
) -> None:
    """Fine-tune a base model from a recipe (full or LoRA); with no recipe, the embedded default."""
    import os

    from openhermes.model.load import ModelLoadError
    from openhermes.outputs import OutputError

    r = _recipe(recipe, set_)
    out_dir = out or Path(r.output_dir)
    from openhermes.train.launch import Nodes

    nodes = Nodes(nnodes, node_rank, master_addr, master_port, rdzv_endpoint, rdzv_id, join_timeout)
    if nproc > 1 or nodes.several:
        from openhermes.train.launch import launch

        try:
            code = launch(r, recipe, out_dir, list(set_ or []), nproc, resume, overwrite=overwrite, nodes=nodes)
        except (ModelLoadError, ValueError, OutputError) as e:
            _fail(str(e))
        raise typer.Exit(code)
    from openhermes.train.run_folder import claim_run_folder

    try:  # refused before the Trainer stack is imported (seconds) and the model loads (minutes for a 7B)
        claim_run_folder(out_dir, r, overwrite, claim=False)
    except OutputError as e:
        _fail(str(e))
    from openhermes.train.run import train as run_train

    warnings.filterwarnings("ignore", message=".*mean_resizing.*")
    try:
        result = run_train(r, out_dir, resume=resume, overwrite=overwrite)
    except (ModelLoadError, ValueError, OutputError) as e:
        _fail(str(e))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    console.print(f"model: {result.model_dir}\nlog: {result.log_path}\nloss curve: {result.plot_path}")
    if report and r.base_model == "tiny":
        _demo_report(r, result)


def _demo_report(recipe, result) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openhermes.data import demo
    from openhermes.model.load import load_model
    from openhermes.train import demo_report
    from openhermes.train.base_model import ensure_base_model

    sizes = dict(p for d in recipe.datasets if (p := demo.parse_demo_path(d.path)))
    items = demo.held_out(train_chat=sizes.get("chat", 0), train_roleplay=sizes.get("roleplay", 0))
    model_dir = result.model_dir
    if result.is_adapter:
        from openhermes.export.merge import merge_adapter

        model_dir = merge_adapter(result.model_dir, result.out_dir / "merged")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    trained = demo_report.score(AutoModelForCausalLM.from_pretrained(str(model_dir)), tok, items)
    untrained_model, _ = load_model(ensure_base_model(recipe), tok)
    untrained = demo_report.score(untrained_model, tok, items)
    Console().print(demo_report.table(trained, untrained))
    demo_report.save(result.out_dir / "demo_report.json", trained, untrained)


@app.command()
def merge(adapter: Path = typer.Argument(..., help="A peft adapter folder from `openhermes train`."),
          out: Path = typer.Option(..., "--out", help="Folder for the merged full model."),
          base: str | None = typer.Option(None, help="Base model (default: the one named in the adapter)."),
          overwrite: bool = typer.Option(False, help=OVERWRITE_HELP)) -> None:
    """Fold a LoRA adapter into full weights (safetensors) that plain transformers loads."""
    from openhermes.export.merge import merge_adapter
    from openhermes.outputs import OutputError

    try:
        console.print(f"merged: {merge_adapter(adapter, out, base, overwrite=overwrite)}")
    except (FileNotFoundError, OSError, OutputError) as e:
        _fail(str(e))

