"""Loading a model for chat, generate, serve and eval: the torch, llama.cpp and vLLM engines, and their options."""

from __future__ import annotations

from pathlib import Path

import typer

from openhermes.cli.common import _fail, _recipe, console


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
    from openhermes.infer.engine import Engine  # here: the other engines answer without torch's 3 s of imports
    from openhermes.model.load import ModelLoadError

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

