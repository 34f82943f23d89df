"""`openhermes chat`, `generate` and `serve`."""

from __future__ import annotations

from pathlib import Path

import typer

from openhermes.cli.common import _fail, app, console
from openhermes.cli.engines import (
    ADAPTER_HELP,
    CTX_HELP,
    ENGINE_HELP,
    GPU_MEM_OPTION,
    MAX_LEN_OPTION,
    MODEL_HELP,
    PARALLEL_HELP,
    THREADS_HELP,
    TP_OPTION,
    _engine,
    _gpu,
    _sampling,
)


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

