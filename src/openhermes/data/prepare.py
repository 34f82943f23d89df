"""The data pipeline: read -> check -> mix -> tokenize -> fit -> split -> pack, cached by content.

The prepared set is a `datasets` Arrow folder (train and, with val_set_size, validation) plus
report.json. Its cache key hashes the input files' bytes, the tokenizer, the formats, every
masking and packing setting and the source code of every module that shapes the rows, so any
change prepares again (axolotl 1265, 341, 462) without anyone bumping a version by hand."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import random
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xxhash
from tqdm.auto import tqdm

from openhermes import outputs
from openhermes.data import checks, dedup, demo, lengths, pack
from openhermes.data.readers import read_records
from openhermes.data.tokenize import ConversationTokenizer, Sample, fit_length
from openhermes.model.load import save_tokenizer

# The modules whose code decides what a prepared row holds: their source is part of the cache key.
ROW_SHAPING_PACKAGES = ("openhermes.formats",)
ROW_SHAPING_MODULES = ("openhermes.data.readers", "openhermes.data.checks", "openhermes.data.tokenize",
                       "openhermes.data.dedup", "openhermes.data.pack", "openhermes.data.prepare",
                       "openhermes.data.demo", "openhermes.data.lengths")
DEFAULT_CACHE = Path(os.environ.get("OPENHERMES_CACHE", Path.home() / ".cache" / "openhermes"))
BATCH = 1000
MAX_PENDING = 8  # chunks in flight


@dataclass
class Prepared:
    path: Path
    key: str
    report: dict
    cache_hit: bool

    def load(self):
        import datasets

        return datasets.load_from_disk(str(self.path))


def resolve_dataset_path(path: str, cache: Path = DEFAULT_CACHE) -> str:
    """`demo:NAME:N` names a bundled demo set; it is written once to a file and read like any other."""
    parsed = demo.parse_demo_path(path)
    if parsed is None:
        return path
    name, n = parsed
    code = xxhash.xxh3_64(Path(demo.__file__).read_bytes()).hexdigest()[:8]  # a change to the generator rewrites
    target = cache / "demo" / f"{name}-{n}-{code}.jsonl"
    if not target.exists():
        demo.write_demo(name, n, target)
    return str(target)


def content_hash(path: str) -> str:
    h = xxhash.xxh3_128()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p] if p.exists() else []
    if not files:  # a hub id: the id names the content (a user pins a revision in the id)
        h.update(("hub:" + path).encode())
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    h = xxhash.xxh3_128()
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    for attr in ("bos_token", "eos_token", "pad_token", "chat_template"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)}".encode())
    return h.hexdigest()


PREP_SETTINGS = (
    "prompt_format", "sequence_len", "sample_packing", "pad_to_sequence_len", "train_on_inputs",
    "roles_to_train", "long_samples", "add_bos", "dedup", "near_dedup_threshold", "refusal_filter",
    "refusal_phrases", "val_set_size", "seed", "limarp_length_modifiers", "limarp_arrangements",
)


def _module_files(name: str) -> list[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find the source of {name}")
    if spec.submodule_search_locations:  # a package: every .py file in it
        return sorted(f for d in spec.submodule_search_locations for f in Path(d).rglob("*.py"))
    return [Path(spec.origin)]


def source_fingerprint(packages: tuple[str, ...] = ROW_SHAPING_PACKAGES,
                       modules: tuple[str, ...] = ROW_SHAPING_MODULES) -> str:
    """A hash of the code that shapes the rows (read from the files, so an edit always counts)."""
    h = xxhash.xxh3_128()
    for name in (*packages, *modules):
        for f in _module_files(name):
            h.update(f"{name}:{f.name}:".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def cache_key(recipe, tokenizer, paths: list[str]) -> str:
    settings = {k: getattr(recipe, k) for k in PREP_SETTINGS}
    settings["datasets"] = [d.model_dump() | {"content": content_hash(p)}
                            for d, p in zip(recipe.datasets, paths, strict=True)]
    settings["tokenizer"] = tokenizer_fingerprint(tokenizer)
    settings["code"] = source_fingerprint()
    return xxhash.xxh3_128(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _mix(per_set: dict[str, list], shares: dict[str, float | None], seed: int,
         report: checks.DropReport) -> list:
    """Subsample data sets to their target shares (the largest mix the data allows)."""
    fixed = {k: s for k, s in shares.items() if s is not None}
    if not fixed:
        return [c for convs in per_set.values() for c in convs]
    free = [k for k in per_set if shares[k] is None]
    free_share = 1 - sum(fixed.values())
    if free and free_share <= 0:
        raise ValueError("shares add up to 1 but some data sets have no share")
    # Largest total N with every set able to give its share of N.
    limits = [len(per_set[k]) / s for k, s in fixed.items()]
    if free:
        limits.append(sum(len(per_set[k]) for k in free) / free_share)
    total = min(limits)
    rng = random.Random(seed)
    out = []
    for k, convs in per_set.items():
        if shares[k] is not None:
            want = round(total * shares[k])
        else:
            want = round(total * free_share * len(convs) / sum(len(per_set[f]) for f in free))
        want = min(want, len(convs))
        keep = set(rng.sample(range(len(convs)), want))
        for i, c in enumerate(convs):
            if i in keep:
                out.append(c)
            else:
                report.drop(c.where, "left out by the mix", f"{k} over its target share", copy=bool(c.variant))
    return out


def _histogram(lengths: list[int], bins: int = 10) -> list[dict]:
    if not lengths:
        return []
    counts, edges = np.histogram(lengths, bins=bins)
    return [{"from": int(edges[i]), "to": int(edges[i + 1]), "count": int(c)} for i, c in enumerate(counts)]


def _to_dataset(samples: list[Sample], recipe, seed: int, fingerprint: str):
    import datasets
    import pyarrow as pa

    lengths = [len(s) for s in samples]
    if recipe.sample_packing:
        bins = pack.best_fit_decreasing(lengths, recipe.sequence_len, seed=seed)
    else:
        bins = [[i] for i in random.Random(seed).sample(range(len(samples)), len(samples))]
    columns = pack.pack_columns([s.input_ids for s in samples], [s.labels for s in samples], bins)
    table = pa.table({k: _list_column(*v) for k, v in columns.items()})
    eff = pack.efficiency(lengths, len(bins), recipe.sequence_len) if recipe.sample_packing else None
    # Our cache key names the content: datasets would otherwise hash the whole table to make one.
    return datasets.Dataset(table, fingerprint=fingerprint), eff


def _list_column(offsets: np.ndarray, values: np.ndarray, rows_per_chunk: int = 8192):
    """An Arrow list<int32> column from flat values and row offsets, in chunks of rows so that no
    chunk's int32 offsets overflow on a big set."""
    import pyarrow as pa

    chunks = []
    for a in range(0, max(len(offsets) - 1, 1), rows_per_chunk):
        off = offsets[a:a + rows_per_chunk + 1]
        chunks.append(pa.ListArray.from_arrays(pa.array((off - off[0]).astype(np.int32)),
                                               pa.array(values[off[0]:off[-1]])))
    return pa.chunked_array(chunks, type=pa.list_(pa.int32()))


def _encode_chunk(enc: ConversationTokenizer, convs: list, recipe,
                  deduplicator: dedup.Deduplicator | None) -> list[tuple]:
    """Worker-thread work for one chunk: tokenize, fit to sequence_len, sign for near-dedup.
    (where, sample or None, drop reason, detail, signature) per conversation, in order."""
    fitted = [fit_length(s, recipe.sequence_len, recipe.long_samples) for s in enc.encode_batch(convs)]
    kept = [sample for sample, _, _ in fitted if sample is not None]
    near = deduplicator is not None and deduplicator.near
    sigs = iter(dedup.signatures([s.input_ids for s in kept], deduplicator.num_perm) if near
                else [None] * len(kept))
    return [(conv.where, conv.meta.get("variant", ""), sample, reason, detail,
             None if sample is None else next(sigs))
            for conv, (sample, reason, detail) in zip(convs, fitted, strict=True)]


def _roleplay_sets(recipe, tokenizer, paths: list[str], report: checks.DropReport, phrases, progress: bool,
                   stats: dict) -> dict[int, list]:
    """The LimaRP-format data sets, read and checked up front (they are small): their length
    modifiers are assigned from the whole data's distribution, then each row is copied once per
    arrangement. Fills stats["length_modifiers"]."""
    sets: dict[int, list] = {}
    for i, (spec, path) in enumerate(zip(recipe.datasets, paths, strict=True)):
        if (spec.format or recipe.prompt_format) == "limarp":
            items = read_records(path, spec.type, spec.split, spec.name, spec.data_files, label=spec.report_name)
            bar = tqdm(items, desc=f"read+check {Path(spec.report_name).name}", unit=" rows", disable=not progress)
            sets[i] = list(checks.check_all(bar, report, refusal_phrases=phrases))
    if not sets:
        return sets
    convs = [c for convs in sets.values() for c in convs]
    spec = recipe.limarp_length_modifiers
    unit = spec.unit if spec is not None else "words"
    sizes = lengths.measure(convs, unit, tokenizer)
    assigned = lengths.assign(convs, spec, recipe.seed, sizes) if spec is not None else {}
    stats["length_modifiers"] = assigned | {"unit": unit,
                                            "histogram": lengths.histogram(convs, assigned.get("bins"), sizes)}
    first, *others = recipe.limarp_arrangements
    for i, convs in sets.items():
        rows = []
        for c in convs:
            rows.append(replace(c, meta=c.meta | {"arrangement": first}))
            rows += [replace(c, meta=c.meta | {"arrangement": a, "variant": a}) for a in others]
        sets[i] = rows
    return sets


def _read_check_tokenize(recipe, tokenizer, paths: list[str], report: checks.DropReport,
                         progress: bool, stats: dict) -> dict[str, list[Sample]]:
    """Every data set's usable samples, by report name; every other row is recorded in `report`."""
    phrases = (recipe.refusal_phrases or checks.DEFAULT_REFUSALS) if recipe.refusal_filter else ()
    # One deduplicator for all data sets, so duplicates across them are found too; one per LimaRP
    # arrangement, so a row's rearranged copy is not taken for a near-duplicate of the row.
    dedups: dict[str, dedup.Deduplicator] = {}
    deduplicator = dedup.Deduplicator(recipe.near_dedup_threshold) if recipe.dedup else None
    encoders: dict[str, ConversationTokenizer] = {}
    per_set: dict[str, list[Sample]] = {spec.report_name: [] for spec in recipe.datasets}
    pending: deque[tuple[str, Future]] = deque()
    roleplay = _roleplay_sets(recipe, tokenizer, paths, report, phrases, progress, stats)

    def finish(name: str, future: Future) -> None:
        # In input order, so the first of two duplicates is the one kept.
        for where, variant, sample, reason, detail, signature in future.result():
            if sample is None:
                report.drop(where, reason, detail, copy=bool(variant))
                continue
            if deduplicator is not None:
                d = deduplicator if not variant else dedups.setdefault(
                    variant, dedup.Deduplicator(recipe.near_dedup_threshold))
                if (bad := d.check(sample, signature)) is not None:
                    report.drop(sample.where, *bad, copy=bool(variant))
                    continue
            per_set[name].append(sample)

    # Chunks are tokenized on worker threads (the Rust tokenizer releases the GIL) while this thread
    # reads and checks the next chunk: the Python work hides behind the tokenizer's.
    with ThreadPoolExecutor(max_workers=2) as pool:
        def submit(name: str, enc: ConversationTokenizer, chunk: list) -> None:
            pending.append((name, pool.submit(_encode_chunk, enc, chunk, recipe, deduplicator)))
            # Finish chunks as they come back; a bounded queue keeps memory flat on big sets.
            while pending and (pending[0][1].done() or len(pending) > MAX_PENDING):
                finish(*pending.popleft())

        for i, (spec, path) in enumerate(zip(recipe.datasets, paths, strict=True)):
            fmt = spec.format or recipe.prompt_format
            enc = encoders.setdefault(fmt, ConversationTokenizer(
                tokenizer, fmt, tuple(recipe.roles_to_train), recipe.train_on_inputs, recipe.add_bos))
            if i in roleplay:
                convs = tqdm(roleplay[i], desc=f"tokenize {Path(spec.report_name).name}", unit=" rows",
                             disable=not progress)
            else:
                items = read_records(path, spec.type, spec.split, spec.name, spec.data_files,
                                     label=spec.report_name)
                bar = tqdm(items, desc=f"read+check+tokenize {Path(spec.report_name).name}", unit=" rows",
                           disable=not progress)
                convs = checks.check_all(bar, report, refusal_phrases=phrases)
            chunk: list = []
            for conv in convs:
                chunk.append(conv)
                if len(chunk) == BATCH:
                    submit(spec.report_name, enc, chunk)
                    chunk = []
            if chunk:
                submit(spec.report_name, enc, chunk)
        while pending:
            finish(*pending.popleft())
    return per_set


def _stats(key: str, recipe, report: checks.DropReport, samples: list[Sample], train_rows: int, n_val: int,
           efficiency: float | None, shares: dict[str, float | None]) -> dict:
    lengths = [len(s) for s in samples]
    tokens_by_set, convs_by_set = Counter(), Counter()
    for s in samples:
        tokens_by_set[s.dataset] += len(s)
        convs_by_set[s.dataset] += 1
    return {
        "key": key,
        "rows": report.to_dict(),
        "samples": len(samples),
        "train_rows": train_rows,
        "validation_samples": n_val,
        "tokens": int(sum(lengths)),
        "trained_tokens": int(sum(s.n_trained for s in samples)),
        "packing_efficiency": efficiency,
        "sequence_len": recipe.sequence_len,
        "length_histogram": _histogram(lengths),
        "mix": {k: {"conversations": convs_by_set[k], "share": convs_by_set[k] / len(samples),
                    "token_share": tokens_by_set[k] / max(1, sum(lengths)), "target": shares.get(k)}
                for k in sorted(convs_by_set)},
    }


def _write(out: Path, parts: dict, stats: dict, tokenizer, key: str, overwrite: bool) -> None:
    """Write next to `out`, then move into place: a reader never sees half a prepared set, and only
    files openhermes wrote are ever replaced (outputs.py)."""
    import datasets

    def fill(tmp: Path) -> None:
        datasets.DatasetDict(parts).save_to_disk(str(tmp))
        (tmp / "report.json").write_text(json.dumps(stats, indent=1))
        save_tokenizer(tokenizer, tmp / "tokenizer")  # so `data inspect` can decode the rows
        (tmp / "key.txt").write_text(key)

    outputs.write_folder(out, "prepared-data", fill, overwrite=overwrite)


@contextmanager
def _gc_paused():
    """Reading builds millions of small objects that all live on; each of the collections they
    trigger walks every one of them (a third of the reading time). Nothing here makes cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def prepared_folder(recipe, key: str, out_dir: str | Path | None, cache_dir: Path) -> Path:
    """`--out` is the folder itself; `dataset_prepared_path` is, as in axolotl, a parent folder
    holding one sub-folder per cache key; without either, the cache."""
    if out_dir is not None:
        return Path(out_dir)
    return Path(recipe.dataset_prepared_path or cache_dir / "prepared") / key


def prepare(recipe, tokenizer, out_dir: str | Path | None = None, strict: bool = False,
            cache_dir: Path = DEFAULT_CACHE, progress: bool = True, overwrite: bool = False) -> Prepared:
    if not recipe.datasets:
        raise ValueError("the recipe lists no datasets")
    paths = [resolve_dataset_path(d.path, cache_dir) for d in recipe.datasets]
    key = cache_key(recipe, tokenizer, paths)
    out = prepared_folder(recipe, key, out_dir, cache_dir)
    if (out / "key.txt").exists() and (out / "key.txt").read_text().strip() == key:
        return Prepared(out, key, json.loads((out / "report.json").read_text()), cache_hit=True)
    outputs.check_folder(out, "prepared-data", overwrite)  # refuse before the work, not after

    report = checks.DropReport()
    roleplay_stats: dict = {}
    with _gc_paused():
        per_set = _read_check_tokenize(recipe, tokenizer, paths, report, progress, roleplay_stats)
    shares = {d.report_name: d.share for d in recipe.datasets}
    samples = _mix(per_set, shares, recipe.seed, report)
    report.kept = sum(1 for s in samples if not s.variant)
    assert report.balanced(), "row accounting is off: a row was lost"
    if strict and report.n_dropped:
        first = "; ".join(f"{w}: {r} {d}".strip() for w, r, d in report.details[:5])
        raise checks.StrictError(f"--strict: {report.n_dropped} rows would be dropped ({first})")
    if not samples:
        raise ValueError(f"no usable rows: every row was dropped ({dict(report.dropped)})")

    n_val = int(recipe.val_set_size if recipe.val_set_size >= 1 else round(recipe.val_set_size * len(samples)))
    order = random.Random(recipe.seed).sample(range(len(samples)), len(samples))
    val = [samples[i] for i in order[:n_val]]
    train = [samples[i] for i in sorted(order[n_val:])]
    train_ds, efficiency = _to_dataset(train, recipe, recipe.seed, f"{key}-train")
    parts = {"train": train_ds}
    if val:
        parts["validation"] = _to_dataset(val, recipe, recipe.seed, f"{key}-validation")[0]
    stats = _stats(key, recipe, report, samples, len(train_ds), len(val), efficiency, shares) | roleplay_stats
    roleplay = {d.report_name for d in recipe.datasets if (d.format or recipe.prompt_format) == "limarp"}
    if roleplay:  # samples per arrangement, over the LimaRP-format sets
        first = recipe.limarp_arrangements[0]
        stats["arrangements"] = dict(Counter(s.variant or first for s in samples if s.dataset in roleplay))
    _write(out, parts, stats, tokenizer, key, overwrite)
    return Prepared(out, key, stats, cache_hit=False)
