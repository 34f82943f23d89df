"""`openhermes eval`: the cards' benchmark suites."""

from __future__ import annotations

from pathlib import Path

import typer

from openhermes.cli.common import _fail, app
from openhermes.cli.engines import (
    ADAPTER_HELP,
    GPU_MEM_OPTION,
    MAX_LEN_OPTION,
    MODEL_HELP,
    TP_OPTION,
    _engine,
    _gpu,
)


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
    from openhermes import outputs
    from openhermes.eval.run import EvalConfig, evaluate, expand, is_results_file
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
    try:  # before the model loads (minutes for a 7B), not after
        if output is not None:
            outputs.check_file(output, is_results_file, "results file", overwrite)
    except OutputError as e:
        _fail(str(e))
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

