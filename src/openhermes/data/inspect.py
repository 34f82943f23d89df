"""`data inspect`: a prepared row with its trained tokens highlighted, and the stats."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

IGNORE = -100


def render_row(row: dict, tokenizer, max_tokens: int = 400) -> Text:
    """Trained tokens in green, the rest dim; a bar marks each packed sample's start."""
    text = Text()
    ids, labels, pos = row["input_ids"][:max_tokens], row["labels"][:max_tokens], row["position_ids"][:max_tokens]
    for tid, lab, p in zip(ids, labels, pos, strict=True):
        if p == 0 and text:
            text.append("▌", style="bold magenta")
        piece = tokenizer.convert_ids_to_tokens(int(tid)).replace("▁", " ")
        text.append(piece, style="bold green" if lab != IGNORE else "dim")
    if len(row["input_ids"]) > max_tokens:
        text.append(f" … ({len(row['input_ids']) - max_tokens} more tokens)", style="italic")
    return text


def modifier_table(stats: dict) -> Table:
    """LimaRP: replies per length modifier, with its bin and the replies' mean length."""
    lm = stats["length_modifiers"]
    unit = lm["unit"]
    arr = stats.get("arrangements") or {}
    title = f"LimaRP length modifiers (reply length in {unit})"
    if "omitted" in lm:
        title += f"; assigned {lm['assigned']}, left out {lm['omitted']}"
    if len(arr) > 1:
        title += "; samples per arrangement: " + ", ".join(f"{k} {v}" for k, v in arr.items())
    t = Table(title=title)
    for col in ("modifier", "bin", "replies", f"mean {unit}", ""):
        t.add_column(col, justify="right" if col not in ("modifier", "") else "left")
    top = max((b["replies"] for b in lm["histogram"]), default=1)
    for b in lm["histogram"]:
        span = "-" if b["from"] is None else f"{b['from']}–{'' if b['to'] is None else b['to'] - 1}"
        t.add_row(b["modifier"], span, str(b["replies"]), f"{b['mean_length']:.1f}",
                  "█" * round(30 * b["replies"] / top))
    return t


def inspect(path: str | Path, row: int = 0, console: Console | None = None) -> dict:
    import datasets
    from transformers import AutoTokenizer

    console = console or Console()
    path = Path(path)
    if not (path / "report.json").exists():
        raise FileNotFoundError(f"{path} is not a prepared data folder (no report.json); run `openhermes data prepare`")
    stats = json.loads((path / "report.json").read_text())
    data = datasets.load_from_disk(str(path))["train"]
    if not 0 <= row < len(data):
        raise IndexError(f"row {row} is out of range: the train split has {len(data)} rows")
    tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    console.rule(f"train row {row} (green = trained, dim = masked, ▌ = next packed sample)")
    console.print(render_row(data[row], tokenizer))
    rows = stats["rows"]
    t = Table(title="prepared data", show_header=False)
    t.add_row("rows in", str(rows["rows_in"]))
    t.add_row("kept", str(rows["kept"]))
    for reason, n in rows["dropped"].items():
        t.add_row(f"dropped: {reason}", str(n))
    t.add_row("tokens", f"{stats['tokens']:,}")
    t.add_row("trained tokens", f"{stats['trained_tokens']:,} ({stats['trained_tokens'] / max(1, stats['tokens']):.1%})")
    t.add_row("train rows", str(stats["train_rows"]))
    if stats["packing_efficiency"] is not None:
        t.add_row("packing efficiency", f"{stats['packing_efficiency']:.4f}")
    console.print(t)
    h = Table(title="sample length histogram (tokens)")
    h.add_column("range")
    h.add_column("count", justify="right")
    h.add_column("")
    top = max((b["count"] for b in stats["length_histogram"]), default=1)
    for b in stats["length_histogram"]:
        h.add_row(f"{b['from']}–{b['to']}", str(b["count"]), "█" * round(30 * b["count"] / top))
    console.print(h)
    if "length_modifiers" in stats:
        console.print(modifier_table(stats))
    if len(stats["mix"]) > 1:
        m = Table(title="mix")
        for col in ("data set", "conversations", "share", "token share", "target"):
            m.add_column(col)
        for k, v in stats["mix"].items():
            m.add_row(k, str(v["conversations"]), f"{v['share']:.1%}", f"{v['token_share']:.1%}",
                      "-" if v["target"] is None else f"{v['target']:.1%}")
        console.print(m)
    return stats
