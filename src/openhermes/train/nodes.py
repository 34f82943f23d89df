"""What every rank of a several-node run must agree on before training starts: the recipe, the openhermes code, and
the output folder (one folder that every node sees, so that rank 0's saves and every rank's RNG states meet there).
Checked once, through torch.distributed's object collectives on the group the Trainer has set up."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from pathlib import Path

import openhermes
from openhermes.config import Recipe


def code_fingerprint() -> str:
    """The package version and a hash of its Python sources: a checkout edited on one node differs."""
    root = Path(openhermes.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"{openhermes.__version__}+{digest.hexdigest()[:16]}"


def recipe_differences(theirs: dict, reference: dict, who: str) -> list[str]:
    """`key: value on node N, value on rank 0` for each top-level recipe key that differs."""
    return [f"{k}: {theirs.get(k)!r} on {who}, {reference.get(k)!r} on rank 0"
            for k in sorted(set(theirs) | set(reference)) if theirs.get(k) != reference.get(k)]


def where(info: dict) -> str:
    return f"node {info['node']} ({info['host']}, rank {info['rank']})"


def agree(recipe: Recipe, out: Path) -> None:
    """Raise the same ValueError on every rank when a rank's recipe, code or output folder is not rank 0's."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    token = secrets.token_hex(8) if rank == 0 else None  # rank 0's marker in its --out
    if token is not None:
        (out / f".nodes-{token}").write_text(token)
    info = {"rank": rank, "node": int(os.environ.get("GROUP_RANK", "0")), "host": socket.gethostname(),
            "recipe": recipe.model_dump(mode="json"), "code": code_fingerprint(), "token": token,
            "out": str(out.resolve())}
    everyone: list = [None] * world
    dist.all_gather_object(everyone, info)
    reference = everyone[0]
    problems = []
    first_of_each_node = {info["node"]: info for info in reversed(everyone[1:])}  # one report per node
    for other in sorted(first_of_each_node.values(), key=lambda info: info["rank"]):
        if other["code"] != reference["code"]:
            problems.append(f"{where(other)} runs openhermes {other['code']}, rank 0 runs {reference['code']}")
        if diff := recipe_differences(other["recipe"], reference["recipe"], f"node {other['node']}"):
            problems.append(f"{where(other)} has another recipe than rank 0: {'; '.join(diff)}")
    marker = out / f".nodes-{reference['token']}"  # each rank looks for it under its own --out
    seen: list = [None] * world
    dist.all_gather_object(seen, marker.exists())  # also the barrier before rank 0 removes its marker
    if rank == 0:
        marker.unlink(missing_ok=True)
    blind = [f"{where(everyone[r])} in its --out {everyone[r]['out']}" for r in range(world) if not seen[r]]
    if blind:
        problems.append(f"the output folder is not shared: rank 0 writes in {reference['out']}, and its files "
                        f"there cannot be seen from {', '.join(blind)}. Rank 0 writes the model and the checkpoints "
                        f"and every rank writes its RNG state in that folder, so every node must mount it at the "
                        f"same path (NFS or a cluster file system); node-local folders would each hold half a run")
    if problems:
        raise ValueError("the nodes disagree, so training does not start:\n  " + "\n  ".join(problems))
