"""The `openhermes` command. Each subcommand is a few lines that call the modules."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

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


@data_app.command("prepare")
def data_prepare(
    recipe: str = typer.Argument("tiny", help="Recipe file or shipped recipe name."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the prepared set (default: the cache)."),
    strict: bool = typer.Option(False, help="Fail if any row would be dropped."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
) -> None:
    """Read, check, tokenize and pack a recipe's data sets into a cached Arrow folder."""
    from openhermes.data.checks import StrictError
    from openhermes.data.inspect import inspect
    from openhermes.data.prepare import prepare
    from openhermes.model.load import ModelLoadError, load_tokenizer
    from openhermes.outputs import OutputError
    from openhermes.train.run import ensure_base_model

    r = _recipe(recipe, set_)
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
    from openhermes.train.run import ensure_base_model

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


def _model_or_default(model: str | None) -> str:
    """A model folder or hub id; none given = the embedded default, trained first if missing."""
    if model:
        return model
    from openhermes.train.run import train as run_train

    recipe = _recipe("tiny", None)
    folder = Path(recipe.output_dir) / "model"
    if not (folder / "config.json").exists():
        console.print(f"no model given and {folder} is missing: training the embedded default first (~3 min)")
        run_train(recipe, recipe.output_dir)
    return str(folder)


def _engine(model: str | None, adapter: Path | None, device: str | None, kind: str = "torch",
            prefix_cache_mb: float = 1024, parallel: int = 4, ctx_size: int | None = None,
            threads: int | None = None, gpu: dict | None = None):
    """gpu: the vLLM engine's tensor_parallel_size, gpu_memory_utilization and max_model_len."""
    from openhermes.infer.engine import Engine
    from openhermes.model.load import ModelLoadError

    if kind == "vllm":
        from openhermes.infer.vllm_engine import EngineUnavailable, VllmEngine, require_vllm

        if adapter is not None:
            _fail("--engine vllm runs a model folder without an adapter: merge the adapter first "
                  "(`openhermes merge`) and serve the merged folder")
        try:
            require_vllm()  # before the default model is trained or anything is loaded
            return VllmEngine(_model_or_default(model), **(gpu or {}))
        except (EngineUnavailable, ValueError) as e:
            _fail(str(e))

    if kind == "llama.cpp":
        from openhermes.infer.llamacpp import EngineUnavailable, LlamaCppEngine

        if model is None:
            _fail("--engine llama.cpp runs a GGUF file: give MODEL as a .gguf path (see `openhermes export`)")
        if adapter is not None and adapter.suffix != ".gguf":
            _fail(f"--engine llama.cpp takes a LoRA GGUF as --lora ({adapter} is not one): make it with "
                  f"`openhermes export ADAPTER --to gguf-lora`")
        try:
            return LlamaCppEngine(model, lora=adapter, parallel=parallel, n_ctx=ctx_size, n_threads=threads)
        except (EngineUnavailable, ValueError) as e:
            _fail(str(e))
    if kind != "torch":
        _fail(f"--engine {kind!r}: choose torch, llama.cpp or vllm")
    try:
        return Engine.load(_model_or_default(model), adapter=adapter, device=device, prefix_cache_mb=prefix_cache_mb)
    except ModelLoadError as e:
        _fail(str(e))


def _sampling(preset_name: str, **overrides):
    from openhermes.infer.sampling import preset

    try:
        return preset(preset_name).with_(**overrides)
    except ValueError as e:
        _fail(str(e))


MODEL_HELP = "A model folder or hub id (default: the embedded default, trained first if missing)."
ADAPTER_HELP = ("A LoRA adapter on top of MODEL: a peft adapter folder (torch engine) or a LoRA GGUF from "
                "`export --to gguf-lora` (llama.cpp engine).")
ENGINE_HELP = ("torch (a model folder), llama.cpp (a .gguf file; needs llama-cpp-python) or vllm (a model folder "
               "on NVIDIA GPUs; needs the vllm extra).")
TP_OPTION = typer.Option(1, "--tensor-parallel-size", min=1, help="vLLM engine: GPUs the model is split over.")
GPU_MEM_OPTION = typer.Option(0.9, "--gpu-memory-utilization", min=0.05, max=1.0,
                              help="vLLM engine: share of each GPU's memory vLLM takes (weights and KV cache).")
MAX_LEN_OPTION = typer.Option(None, "--max-model-len", min=16, help="vLLM engine: context window, prompt + reply "
                              "(default: the model's).")


def _gpu(tensor_parallel_size: int, gpu_memory_utilization: float, max_model_len: int | None) -> dict:
    return {"tensor_parallel_size": tensor_parallel_size, "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len}
PARALLEL_HELP = ("llama.cpp engine: sequences decoded together, each with its own KV cache of --ctx-size tokens "
                 "(llama-server's --parallel).")
THREADS_HELP = "llama.cpp engine: CPU threads for the model (default: all cores this process may use)."
CTX_HELP = ("llama.cpp engine: context window of each sequence, prompt + reply (default: the model's, at most "
            "8192). KV memory grows with --ctx-size x --parallel.")


@app.command()
def chat(model: str | None = typer.Argument(None, help=MODEL_HELP),
         adapter: Path | None = typer.Option(None, "--adapter", "--lora", help=ADAPTER_HELP),
         system: str | None = typer.Option(None, help="System prompt (ChatML)."),
         roleplay: Path | None = typer.Option(None, "--roleplay", help="Character card (chara_card_v2 .json or .png): "
                                              "roleplay in the LimaRP format with the limarp preset."),
         persona: str = typer.Option("", help="Your own persona text (roleplay)."),
         user_name: str = typer.Option("User", help="Your name in the roleplay."),
         length: str = typer.Option("medium", help="LimaRP reply length modifier (roleplay); 'none' to omit."),
         preset: str | None = typer.Option(None, help="Sampler preset: greedy, chatml-default, limarp, limarp-dry, "
                                           "creative-xtc, mirostat "
                                           "(default: chatml-default, or limarp with --roleplay)."),
         temperature: float | None = typer.Option(None, help="Override the preset's temperature."),
         seed: int | None = typer.Option(None, help="Sampling seed."),
         max_new_tokens: int = typer.Option(512, help="Longest reply in tokens."),
         device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
         engine: str = typer.Option("torch", help=ENGINE_HELP),
         tensor_parallel_size: int = TP_OPTION, gpu_memory_utilization: float = GPU_MEM_OPTION,
         max_model_len: int | None = MAX_LEN_OPTION) -> None:
    """Talk to a model in the terminal, streamed. /help inside the chat lists the commands."""
    from openhermes.formats import limarp
    from openhermes.infer.cards import CardError, load_card
    from openhermes.infer.chat import ChatSession, Roleplaying, run_terminal

    rp = None
    if roleplay is not None:
        if length != "none" and length not in limarp.LENGTHS:
            _fail(f"--length {length!r}: use one of {', '.join(limarp.LENGTHS)} or none")
        try:
            rp = Roleplaying(load_card(roleplay), user_name, persona, None if length == "none" else length)
        except CardError as e:
            _fail(str(e))
    params = _sampling(preset or ("limarp" if rp else "chatml-default"), temperature=temperature, seed=seed)
    runner = _engine(model, adapter, device, engine, parallel=1,
                     gpu=_gpu(tensor_parallel_size, gpu_memory_utilization, max_model_len))
    session = ChatSession(runner, system=system, params=params,
                          max_new_tokens=max_new_tokens, roleplay=rp)
    run_terminal(session)


@app.command()
def generate(model: str | None = typer.Argument(None, help=MODEL_HELP),
             input: Path = typer.Option(..., "--input", help="JSONL: one {\"messages\": [...]} or {\"prompt\": ...} "
                                        "per line, optional id, max_tokens, stop and sampler fields."),
             output: Path = typer.Option(..., "--output", help="JSONL replies, in input order."),
             adapter: Path | None = typer.Option(None, "--adapter", "--lora", help=ADAPTER_HELP),
             preset: str = typer.Option("greedy", help="Sampler preset for lines that set nothing else."),
             max_new_tokens: int = typer.Option(256, help="Default reply length limit in tokens."),
             batch_size: int = typer.Option(16, help="Requests decoded together (torch engine)."),
             parallel: int = typer.Option(4, min=1, help=PARALLEL_HELP),
             ctx_size: int | None = typer.Option(None, min=16, help=CTX_HELP),
             device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
             engine: str = typer.Option("torch", help=ENGINE_HELP),
             tensor_parallel_size: int = TP_OPTION, gpu_memory_utilization: float = GPU_MEM_OPTION,
             max_model_len: int | None = MAX_LEN_OPTION) -> None:
    """Batch generation from a JSONL file. Bad lines are reported by line number; the rest still run."""
    from openhermes.infer.batchfile import generate_file

    if not input.exists():
        _fail(f"{input}: no such file")
    params = _sampling(preset)
    runner = _engine(model, adapter, device, engine, parallel=parallel, ctx_size=ctx_size,
                     gpu=_gpu(tensor_parallel_size, gpu_memory_utilization, max_model_len))
    if engine == "torch":  # the llama.cpp engine decodes --parallel sequences at once, vLLM as many as fit
        runner.max_batch_size = batch_size
    done, errors = generate_file(runner, input, output, params, max_new_tokens)
    for e in errors:
        console.print(f"[yellow]skipped[/] {e.message}", soft_wrap=True)
    console.print(f"{done} replies written to {output}" + (f"; {len(errors)} bad line(s) reported" if errors else ""))
    if done == 0 and errors:
        raise typer.Exit(1)


@app.command()
def serve(model: str | None = typer.Argument(None, help=MODEL_HELP),
          adapter: Path | None = typer.Option(None, "--adapter", "--lora", help=ADAPTER_HELP),
          host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 exposes it to the network)."),
          port: int = typer.Option(8000, help="Port to listen on."),
          api_key: str | None = typer.Option(None, envvar="OPENHERMES_API_KEY",
                                             help="Require 'Authorization: Bearer KEY' on /v1 routes."),
          model_name: str | None = typer.Option(None, help="Model id the server reports (default: MODEL as given); "
                                                "requests may name any model unless --strict-model-name."),
          strict_model_name: bool = typer.Option(False, help="Answer 404 to a request naming another model (OpenAI's "
                                                 "and vLLM's rule) instead of serving it this one."),
          max_batch_size: int = typer.Option(16, help="Requests decoded together (continuous batching; torch "
                                             "and vllm engines)."),
          parallel: int = typer.Option(4, min=1, help=PARALLEL_HELP),
          ctx_size: int | None = typer.Option(None, min=16, help=CTX_HELP),
          threads: int | None = typer.Option(None, min=1, help=THREADS_HELP),
          max_queue: int = typer.Option(64, help="Requests allowed to wait for a place in the batch (beyond the "
                                        "--max-batch-size decoding); beyond that the server answers 503."),
          device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
          engine: str = typer.Option("torch", help=ENGINE_HELP),
          tensor_parallel_size: int = TP_OPTION, gpu_memory_utilization: float = GPU_MEM_OPTION,
          max_model_len: int | None = MAX_LEN_OPTION,
          prefix_cache_mb: float = typer.Option(1024, help="Memory for the KV of recent prompts and replies, so a "
                                                "client that resends the conversation prefills only the new part "
                                                "(torch engine; 0 turns it off)."),
          stream_interval: int = typer.Option(1, min=1, help="Tokens per streamed chunk after the first (sent at "
                                              "once), as SGLang's and vLLM's option: larger values cost the HTTP "
                                              "side less, for more throughput on a small CPU."),
          reserved_cores: int | None = typer.Option(None, min=0, help="CPU cores decode steps leave to the HTTP "
                                                    "side (torch engine on a CPU; prefills use every core), as vLLM's "
                                                    "VLLM_CPU_NUM_OF_RESERVED_CPU: a step's threads wait for each "
                                                    "other, so one the server preempts stalls them all. Default: 1 "
                                                    "on 4 or more cores, 0 (every core) on fewer."),
          truncate: str = typer.Option("none", help="none: a chat over the context window is a 400 (OpenAI's "
                                       "rule); keep-system: its oldest turns after the system message are dropped "
                                       "until it fits, as SillyTavern and text-generation-webui do, and the "
                                       "response says how many tokens (usage.truncated_prompt_tokens, a header)."),
          max_body_mb: float = typer.Option(4, min=0.01, help="Largest request body in MB; a larger one is answered "
                                            "413 before it is read (a prompt that cannot fit the context window "
                                            "is refused before it is tokenized, whatever its size)."),
          stall_seconds: float = typer.Option(120, min=1, help="/health answers 503 when the scheduler has had work "
                                              "and made no decode step for this long, and the log gets its stack "
                                              "(a long prefill on a slow CPU counts as one step).")) -> None:
    """An OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models), text-generation-webui's,
    llama.cpp's and KoboldCpp's own routes, and a web chat at /."""
    import uvicorn

    from openhermes.serve.app import create_app

    if truncate not in ("none", "keep-system"):
        _fail(f"--truncate {truncate!r}: choose none or keep-system")
    sock = _listening_socket(host, port)  # before the model loads: a busy port is one line, at once
    runner = _engine(model, adapter, device, engine, prefix_cache_mb=prefix_cache_mb, parallel=parallel,
                     ctx_size=ctx_size, threads=threads,
                     gpu=_gpu(tensor_parallel_size, gpu_memory_utilization, max_model_len)
                     | {"max_batch_size": max_batch_size})
    runner.name = model_name or model or "openhermes-tiny"
    console.print(f"serving {runner.name} on http://{host}:{port}/ (API at /v1, metrics at /metrics)")
    batch = runner.max_batch_size if engine == "llama.cpp" else max_batch_size
    app_ = create_app(runner, api_key=api_key, max_batch_size=batch, max_queue=max_queue,
                      stream_interval=stream_interval, reserved_cores=reserved_cores, max_body_mb=max_body_mb,
                      stall_seconds=stall_seconds, strict_model_name=strict_model_name, truncate=truncate)
    uvicorn.Server(uvicorn.Config(app_, log_level="warning")).run(sockets=[sock])


def _listening_socket(host: str, port: int):
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        console.print(f"[red]error:[/] cannot listen on {host}:{port}: {e.strerror}. Another server holds it "
                      f"(SillyTavern's own default is 8000); choose another with --port.", soft_wrap=True)
        raise typer.Exit(1) from None
    return sock


QUANTIZED_FOLDERS = ("gptq", "awq", "exl2")


@app.command()
def export(model: Path = typer.Argument(..., help="A model folder (full fine-tune, or merged with `openhermes merge`); "
                                        "with --to gguf-lora, a LoRA adapter folder."),
           to: str = typer.Option("gguf", "--to", help="gguf; gguf-lora (a LoRA adapter llama.cpp applies on the "
                                  "base model's GGUF); gptq or awq (a 4-bit folder transformers and vLLM load, "
                                  "quantized by AutoRound, CPU or GPU); exl2 (ExLlamaV2, CUDA GPU only)."),
           type_: str = typer.Option("f16", "--type", help="GGUF only: f16, q8_0, q4_0 (written by openhermes), or a "
                                     "llama.cpp type made by llama.cpp's quantizer: Q4_K_M, Q5_K_M, Q6_K, Q3_K_M, "
                                     "Q2_K, IQ4_XS, ..."),
           out: Path = typer.Option(..., "--out", help="The .gguf file to write; a folder for gptq, awq, exl2."),
           check: Path | None = typer.Option(None, "--check", help="A text file: measure the export's perplexity "
                                             "and KL divergence from the full model on it (GGUF: through llama.cpp "
                                             "against an f16 export; gptq/awq: through transformers)."),
           calibration: str | None = typer.Option(None, "--calibration", help="gptq/awq/exl2: the recipe the model "
                                                  "was trained with (name or YAML; its data is prepared with the "
                                                  "model's tokenizer, cached) or a prepared data folder."),
           bits: float = typer.Option(4, "--bits", help="gptq/awq: bits per weight (gptq 2, 3, 4, 8; awq 4); exl2: "
                                      "the average bits per weight, e.g. 4.65."),
           group_size: int = typer.Option(128, "--group-size", help="gptq/awq: weights sharing one scale."),
           samples: int = typer.Option(128, "--samples", help="gptq/awq/exl2: calibration windows."),
           seq_len: int = typer.Option(2048, "--seq-len", help="gptq/awq/exl2: tokens per calibration window "
                                       "(at most the model's context)."),
           iters: int = typer.Option(200, "--iters", help="gptq/awq: AutoRound's tuning steps per block "
                                     "(0 = round-to-nearest, fast)."),
           card: bool = typer.Option(True, help="GGUF: write README.md (a model card listing the folder's GGUF "
                                     "files). A gptq/awq folder always gets its card."),
           overwrite: bool = typer.Option(False, help="Replace an existing file that openhermes did not write.")) -> None:
    """Write a GGUF file that llama.cpp and LM Studio run (architecture llama, chat template inside), or a
    GPTQ/AWQ/EXL2 folder as the card's quantized releases."""
    from openhermes.export.gguf import ExportError, export_gguf
    from openhermes.outputs import OutputError

    if to not in ("gguf", "gguf-lora", *QUANTIZED_FOLDERS):
        _fail(f"--to {to!r}: choose gguf, gguf-lora, gptq, awq or exl2")
    if check is not None and to == "gguf-lora":
        _fail("--check measures a model's GGUF; a LoRA GGUF has no output of its own: merge the adapter "
              "(`openhermes merge`), export that with --check")
    if check is not None and to == "exl2":
        _fail("--check is not available for exl2 (its kernels are exllamav2's own): measure with exllamav2's test "
              "script, or export gptq/awq with --check")
    if check is not None and not check.is_file():
        _fail(f"--check {check}: no such text file")
    if to in QUANTIZED_FOLDERS:
        if type_ != "f16":
            _fail(f"--type {type_} is for GGUF; {to} takes --bits (and --group-size)")
        _export_quantized_folder(model, to, out, check, calibration, bits, group_size, samples, seq_len, iters,
                                 overwrite)
        return
    try:
        if to == "gguf-lora":
            from openhermes.export.gguf_lora import export_lora_gguf

            path = export_lora_gguf(model, out, overwrite=overwrite)
            console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                # A quantized export's f16 input is kept as the check's reference (not written twice).
                is_f16 = type_.lower() == "f16"
                reference = Path(tmp) / "reference-f16.gguf" if check is not None and not is_f16 else None
                path = export_gguf(model, out, type_, overwrite=overwrite, keep_f16=reference)
                console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
                if check is not None:
                    _check_quality(path, reference or path, check)
        if card:
            from openhermes.export.card import write_card

            written = write_card(path.parent)
            if written is not None:
                console.print(f"model card: {written}")
    except (ExportError, OSError, OutputError, ValueError) as e:
        _fail(str(e))


def _export_quantized_folder(model: Path, to: str, out: Path, check: Path | None, calibration: str | None,
                             bits: float, group_size: int, samples: int, seq_len: int, iters: int,
                             overwrite: bool) -> None:
    """--to gptq|awq|exl2: calibration windows from the recipe's data, then the quantizer."""
    from transformers import AutoConfig, AutoTokenizer

    from openhermes.export.calibration import calibration_windows
    from openhermes.export.exl2 import exl2_unavailable, export_exl2
    from openhermes.export.gguf import ExportError
    from openhermes.export.weight_only import export_weight_only
    from openhermes.model.load import ModelLoadError
    from openhermes.outputs import OutputError

    if to == "exl2" and (why := exl2_unavailable()) is not None:
        _fail(why)  # before any work
    if to != "exl2" and bits != int(bits):
        _fail(f"--bits {bits}: {to} takes a whole number of bits")
    if calibration is None:
        _fail(f"--to {to} needs --calibration: the recipe the model was trained with (e.g. --calibration tiny), or "
              "a prepared data folder (`openhermes data prepare RECIPE --out DIR`)")
    if samples < 1 or seq_len < 2:
        _fail("--samples must be at least 1 and --seq-len at least 2")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
        config = AutoConfig.from_pretrained(str(model))
    except (OSError, ValueError) as e:
        _fail(f"cannot load a model from {model}: {e}")
    seq_len = min(seq_len, int(getattr(config, "max_position_embeddings", seq_len)))
    try:
        windows = calibration_windows(calibration, tokenizer, int(config.vocab_size), samples, seq_len)
        if len(windows) < samples:
            console.print(f"[yellow]calibration: the data gives {len(windows)} windows of {seq_len} tokens, "
                          f"fewer than --samples {samples}[/yellow]")
        if to == "exl2":
            texts = [tokenizer.decode(w) for w in windows]
            path = export_exl2(model, out, texts, bits=bits, seq_len=seq_len, overwrite=overwrite)
            console.print(f"wrote {path}")
            return
        path, measured = export_weight_only(model, out, to, windows, calibration=calibration, bits=int(bits),
                                            group_size=group_size, iters=iters,
                                            check_text=check.read_text(encoding="utf-8") if check else None,
                                            overwrite=overwrite)
    except (ExportError, ModelLoadError, OSError, OutputError, ValueError) as e:
        _fail(str(e))
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    console.print(f"wrote {path} ({size / 1e6:.1f} MB of weights; model card README.md)")
    if measured:
        console.print(f"perplexity {measured['perplexity']:.4f} (full model {measured['reference_perplexity']:.4f}), "
                      f"mean KL {measured['kl_mean']:.5f} nats, same top token {measured['top1_agreement']:.1%}")


def _check_quality(path: Path, reference: Path, text_file: Path) -> None:
    """Perplexity and KL divergence of `path` against the f16 file `reference` on a text, printed and recorded
    in the folder's quality.json (the model card reads it)."""
    from openhermes.export.card import record_quality
    from openhermes.export.quality import measure, table

    (result,) = measure([path], reference, text_file.read_text(encoding="utf-8"))
    console.print(table([result]))
    record_quality(path.parent, [{"file": path.name, "perplexity": result.perplexity, "kl_mean": result.kl_mean,
                                  "kl_p99": result.kl_p99, "top1_agreement": result.top1_agreement,
                                  "tokens": result.tokens}])


@app.command("eval")
def eval_(model: str | None = typer.Argument(None, help=MODEL_HELP),
          suite: list[str] = typer.Option(..., "--suite", help="gpt4all, agieval, bigbench, truthfulqa, humaneval, "
                                          "or openhermes (all five); repeatable."),
          data_dir: Path | None = typer.Option(None, help="Local data: <task>.jsonl/.json/.parquet in the hub's "
                                               "schema (default: the Hugging Face dataset ids of SPEC §7)."),
          bigbench_dir: Path | None = typer.Option(None, help="BIG-bench's benchmark_tasks/ folder."),
          output: Path | None = typer.Option(None, "--output", help="results.json with every per-example score."),
          adapter: Path | None = typer.Option(None, "--adapter", "--lora", help=ADAPTER_HELP),
          add_bos: bool = typer.Option(False, help="Prepend BOS to every context (the card's runs did not)."),
          chat_template: bool = typer.Option(False, help="Wrap contexts in a ChatML user turn (the card did not)."),
          quirks: bool = typer.Option(False, help="Reproduce the card harness's known quirks (BigBench's "
                                      "tracking_shuffled_objects_three_objects = logical_deduction_three_objects)."),
          mc2: str = typer.Option("harness", help="TruthfulQA mc2's true answers: harness (the card's: those "
                                  "before the first label 0) or labels (every answer labelled 1)."),
          limit: int | None = typer.Option(None, help="At most N questions per task (quick checks)."),
          task: list[str] | None = typer.Option(None, "--task", help="Only these tasks, e.g. navigate or "
                                                "bigbench_navigate (repeatable)."),
          batch_size: int = typer.Option(32, help="Continuations scored together."),
          humaneval_mode: str = typer.Option("completion", help="completion (base models) or chat (ChatML)."),
          samples: int = typer.Option(1, help="HumanEval samples per problem (pass@k for k <= samples)."),
          temperature: float = typer.Option(0.0, help="HumanEval sampling temperature (0 = greedy)."),
          device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
          engine: str = typer.Option("torch", help="torch, or vllm (log-likelihoods from vLLM's prompt "
                                     "log-probabilities, as lm-evaluation-harness's vLLM backend)."),
          tensor_parallel_size: int = TP_OPTION, gpu_memory_utilization: float = GPU_MEM_OPTION,
          max_model_len: int | None = MAX_LEN_OPTION,
          overwrite: bool = typer.Option(False, help="Replace an --output file that openhermes did not write."),
          unsafe_no_sandbox: bool = typer.Option(False, "--unsafe-no-sandbox", help="Run HumanEval's model-written "
                                                 "code even where no OS sandbox (bubblewrap or user namespaces) "
                                                 "is available: the code then runs with only Python-level guards.")
          ) -> None:
    """Run the card's benchmark suites and print its tables (lm-evaluation-harness v0.3 method, SPEC §7)."""
    from openhermes.eval.run import EvalConfig, evaluate, expand
    from openhermes.eval.sandbox import SandboxUnavailable
    from openhermes.outputs import OutputError

    try:
        cfg = EvalConfig(expand(suite), data_dir, bigbench_dir, add_bos, chat_template, quirks, limit, batch_size,
                         humaneval_mode, samples, temperature, tuple(task or ()), allow_unsandboxed=unsafe_no_sandbox,
                         mc2=mc2)
    except ValueError as e:
        _fail(str(e))
    if humaneval_mode not in ("completion", "chat"):
        _fail(f"--humaneval-mode {humaneval_mode!r}: choose completion or chat")
    from openhermes.eval.metrics import MC2_RULES

    if mc2 not in MC2_RULES:
        _fail(f"--mc2 {mc2!r}: choose {' or '.join(MC2_RULES)}")
    if engine not in ("torch", "vllm"):
        _fail(f"--engine {engine!r}: eval runs on torch or vllm")
    runner = _engine(model, adapter, device, engine, gpu=_gpu(tensor_parallel_size, gpu_memory_utilization,
                                                               max_model_len))
    try:
        if engine == "vllm":
            from openhermes.eval.vllm_score import VllmScorer

            evaluate(None, runner.tokenizer, cfg, output, echo=print, overwrite=overwrite, engine=runner,
                     scorer=VllmScorer(runner, add_bos=add_bos, batch_size=batch_size))
        else:
            evaluate(runner.model, runner.tokenizer, cfg, output, echo=print, overwrite=overwrite)
    except (FileNotFoundError, ValueError, OutputError, SandboxUnavailable) as e:
        _fail(str(e))


if __name__ == "__main__":
    app()
