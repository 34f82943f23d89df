"""Progress bar (loss, lr, tokens/s, ETA), JSON-lines log, and the loss-curve PNG."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback


class TokenCounter:
    """Trained tokens (labels != -100) seen so far, counted by the trainer."""

    def __init__(self) -> None:
        self.trained = 0
        self.total = 0


class ProgressAndLog(TrainerCallback):
    def __init__(self, log_path: Path, counter: TokenCounter, show: bool = True):
        self.log_path = log_path
        self.counter = counter
        self.show = show
        self.bar = None
        self.t0 = 0.0
        self.tokens0 = 0

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            disable=not self.show, dynamic_ncols=True)
        self.t0, self.tokens0 = time.perf_counter(), self.counter.trained

    def tokens_per_second(self) -> float:
        dt = time.perf_counter() - self.t0
        return (self.counter.trained - self.tokens0) / dt if dt > 0 else 0.0

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs,
                  "trained_tokens": self.counter.trained, "trained_tokens_per_s": round(self.tokens_per_second(), 1)}
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{logs.get('learning_rate', 0):.2e}",
                                 tok_s=f"{record['trained_tokens_per_s']:.0f}")

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()


def plot_loss(log_path: Path, png_path: Path) -> Path | None:
    """The training-loss graph, like the LimaRP card's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.exists():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    pts = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.5, label="training loss")
    if evals:  # val_set_size: the held-out loss, like the cards' eval curves
        ax.plot([p[0] for p in evals], [p[1] for p in evals], "o-", lw=1.5, label="evaluation loss")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss" + (" and evaluation loss" if evals else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
