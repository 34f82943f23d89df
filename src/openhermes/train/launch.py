"""Several processes: data-parallel (or FSDP, from the recipe) training through torchrun, on one machine or on
several (torchrun's static rendezvous at node 0's address, or its c10d rendezvous for elastic starts).

Each node's launcher prepares the data and the base model first, so every worker finds them cached."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from openhermes.config import Recipe
from openhermes.data.prepare import DEFAULT_CACHE, prepare
from openhermes.model.load import load_tokenizer
from openhermes.train.base_model import ensure_base_model
from openhermes.train.run_folder import claim_run_folder


@dataclass(frozen=True)
class Nodes:
    """Where this launcher's processes sit among the nodes, in torchrun's own terms."""

    nnodes: str = "1"  # K, or MIN:MAX for an elastic start (c10d rendezvous only)
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500
    rdzv_endpoint: str | None = None  # HOST:PORT of a c10d rendezvous; the nodes' ranks are then assigned
    rdzv_id: str = "openhermes"
    join_timeout_s: float = 900

    @property
    def several(self) -> bool:
        return self.nnodes != "1" or self.rdzv_endpoint is not None

    @property
    def assigned_by_rendezvous(self) -> bool:
        return self.rdzv_endpoint is not None

    def check(self) -> None:
        """The combinations torchrun would accept and then hang on, or reject deep in its agent, refused here."""
        m = re.fullmatch(r"(\d+)(?::(\d+))?", self.nnodes)
        low, high = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
        if not m or low < 1 or high < low:
            raise ValueError(f"--nnodes {self.nnodes!r}: give a node count (2) or, with --rdzv-endpoint, a range "
                             f"MIN:MAX (1:4)")
        if m[2] and not self.rdzv_endpoint:
            raise ValueError(f"--nnodes {self.nnodes} (an elastic range) needs torchrun's c10d rendezvous: "
                             f"add --rdzv-endpoint HOST:PORT (a node every node reaches)")
        if self.rdzv_endpoint:
            if not re.fullmatch(r"[^\s:]+:\d+", self.rdzv_endpoint):
                raise ValueError(f"--rdzv-endpoint {self.rdzv_endpoint!r}: give HOST:PORT")
            return
        if not 0 <= self.node_rank < high:
            raise ValueError(f"--node-rank {self.node_rank} is outside --nnodes {self.nnodes}: "
                             f"node ranks run from 0 to {high - 1}")
        if high > 1 and not self.master_addr:
            raise ValueError(f"--nnodes {self.nnodes} needs --master-addr (node 0's address, which every node "
                             f"reaches) or --rdzv-endpoint HOST:PORT")

    def torchrun_args(self) -> list[str]:
        if not self.several:
            return ["--standalone"]
        if self.rdzv_endpoint:
            return [f"--nnodes={self.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={self.rdzv_endpoint}",
                    f"--rdzv-id={self.rdzv_id}", f"--rdzv-conf=join_timeout={int(self.join_timeout_s)}"]
        return [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}"]


def torchrun_command(nproc: int, recipe_arg: str, out: Path, overrides: list[str], resume: bool,
                     overwrite: bool = False, nodes: Nodes = Nodes()) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", *nodes.torchrun_args(), f"--nproc-per-node={nproc}",
           "-m", "openhermes.cli", "train", recipe_arg, "--out", str(out), "--no-report"]
    for o in overrides:
        cmd += ["--set", o]
    if resume:
        cmd.append("--resume")
    if overwrite:
        cmd.append("--overwrite")
    return cmd


def check_processes(nproc: int, gpus: int) -> None:
    """On a machine with CUDA GPUs each process trains on its own GPU (LOCAL_RANK): more processes than GPUs would
    share one, which NCCL refuses mid-start ("invalid usage"). Said here, before anything is written."""
    if gpus and nproc > gpus:
        raise ValueError(f"--nproc {nproc} runs one process per GPU, and this machine has {gpus} CUDA GPU"
                         f"{'s' if gpus > 1 else ''}: use --nproc {gpus} or fewer (CUDA_VISIBLE_DEVICES chooses "
                         f"which), or hide the GPUs (CUDA_VISIBLE_DEVICES=) to run {nproc} CPU processes")


# Looked up once, at import: die_with_parent also runs between fork and exec, where loading a library could hang.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent dies (Linux's PR_SET_PDEATHSIG; elsewhere
    nothing). torchrun starts each rank in a session of its own, so a launcher killed with SIGKILL (the OOM killer,
    `kill -9`, a scheduler's cleanup) would leave its ranks training on, writing into the run folder beside a
    --resume."""
    if _PRCTL is None:
        return
    parent = os.getppid()
    _PRCTL(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent was gone before the call took effect
        os.kill(os.getpid(), sig)


def wait_for_master(host: str, port: int, timeout_s: float, poll_s: float = 1.0) -> None:
    """Node 0's launcher opens the rendezvous once its own data is prepared, which may take a while; torchrun on
    another node waits without a word (over 6 minutes, measured with an unreachable master). Said and bounded here."""
    deadline, told = time.monotonic() + timeout_s, False
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(poll_s, 5)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ValueError(f"could not reach the master at {host}:{port} for {timeout_s:g} s ({e}): is node "
                                 f"0 started, and does it listen on that address? (its launcher opens the port "
                                 f"after preparing its data; --join-timeout waits longer)") from None
            if not told:
                print(f"waiting for node 0 at {host}:{port} (its launcher opens it once its data is prepared)",
                      file=sys.stderr, flush=True)
                told = True
            time.sleep(poll_s)


def launch(recipe: Recipe, recipe_arg: str, out: Path, overrides: list[str], nproc: int, resume: bool,
           cache: Path = DEFAULT_CACHE, overwrite: bool = False, nodes: Nodes = Nodes()) -> int:
    import torch

    nodes.check()
    check_processes(nproc, torch.cuda.device_count())
    # Claimed before the workers start, so none of them races to it, by node 0's launcher only: the others check
    # it (the workers then check that every node sees node 0's folder). Under c10d, global rank 0 claims it.
    claim_run_folder(out, recipe, overwrite, claim=not nodes.assigned_by_rendezvous and nodes.node_rank == 0)
    base = ensure_base_model(recipe, cache)
    tok = load_tokenizer(base, recipe.prompt_format, recipe.special_tokens, recipe.tokens, recipe.add_bos)
    prepare(recipe, tok, cache_dir=cache)
    if nodes.several and not nodes.assigned_by_rendezvous and nodes.node_rank > 0:
        wait_for_master(nodes.master_addr or "", nodes.master_port, nodes.join_timeout_s)
    # torchrun ends its ranks (SIGTERM, then SIGKILL) when it is told to; it is told when this launcher dies.
    return subprocess.call(torchrun_command(nproc, recipe_arg, out, overrides, resume, overwrite, nodes),
                           preexec_fn=lambda: die_with_parent(signal.SIGTERM))
