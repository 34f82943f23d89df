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
import shutil
from array import array
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xxhash
from tqdm.auto import tqdm

from openhermes import outputs
from openhermes.data import checks, dedup, demo, lengths, pack
from openhermes.data.readers import read_records
from openhermes.data.store import SampleStore
from openhermes.data.tokenize import ConversationTokenizer, fit_length
from openhermes.model.load import save_tokenizer

# The modules whose code decides what a prepared row holds: their source is part of the cache key.
ROW_SHAPING_PACKAGES = ("openhermes.formats",)
ROW_SHAPING_MODULES = ("openhermes.data.readers", "openhermes.data.checks", "openhermes.data.tokenize",
                       "openhermes.data.dedup", "openhermes.data.pack", "openhermes.data.prepare",
                       "openhermes.data.demo", "openhermes.data.lengths", "openhermes.data.store")
DEFAULT_CACHE = Path(os.environ.get("OPENHERMES_CACHE", Path.home() / ".cache" / "openhermes"))
BATCH = 1000
MAX_PENDING = 8  # chunks in flight
MAX_SHARD_BYTES = 500 * 10**6  # datasets' save_to_disk default: a split this big is written shard by shard


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


def _mix(per_set: dict[str, array], shares: dict[str, float | None], seed: int,
         report: checks.DropReport, store: SampleStore) -> list[int]:
    """Subsample data sets to their target shares (the largest mix the data allows): the samples' ids."""
    fixed = {k: s for k, s in shares.items() if s is not None}
    if not fixed:
        return [i for ids in per_set.values() for i in ids]
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
    for k, ids in per_set.items():
        if shares[k] is not None:
            want = round(total * shares[k])
        else:
            want = round(total * free_share * len(ids) / sum(len(per_set[f]) for f in free))
        want = min(want, len(ids))
        keep = set(rng.sample(range(len(ids)), want))
        for j, i in enumerate(ids):
            if j in keep:
                out.append(i)
            else:
                report.drop(store.wheres[i], "left out by the mix", f"{k} over its target share",
                            copy=bool(store.variant_index[i]))
    return out


def _histogram(lengths: np.ndarray, bins: int = 10) -> list[dict]:
    if not len(lengths):
        return []
    counts, edges = np.histogram(lengths, bins=bins)
    return [{"from": int(edges[i]), "to": int(edges[i + 1]), "count": int(c)} for i, c in enumerate(counts)]


def _pack(lengths: list[int], recipe, seed: int) -> tuple[list[list[int]], float | None]:
    """Rows as bins of sample positions, and the packing efficiency."""
    if recipe.sample_packing:
        bins = pack.best_fit_decreasing(lengths, recipe.sequence_len, seed=seed)
    else:
        bins = [[i] for i in random.Random(seed).sample(range(len(lengths)), len(lengths))]
    eff = pack.efficiency(lengths, len(bins), recipe.sequence_len) if recipe.sample_packing else None
    return bins, eff


def _rows_table(store: SampleStore, ids: list[int], bins: list[list[int]]):
    """The Arrow table of these rows, the samples read back from the store."""
    import pyarrow as pa

    order = [ids[p] for b in bins for p in b]
    samples = [store.read(i) for i in order]
    local, n = [], 0
    for b in bins:
        local.append(list(range(n, n + len(b))))
        n += len(b)
    columns = pack.pack_columns([s[0] for s in samples], [s[1] for s in samples], local)
    return pa.table({k: _list_column(*v) for k, v in columns.items()})


def _save_split(folder: Path, store: SampleStore, ids: list[int], recipe, seed: int, fingerprint: str,
                progress: bool) -> tuple[int, float | None]:
    """Pack one split and save it as datasets' save_to_disk does: (rows, packing efficiency). A split over
    MAX_SHARD_BYTES is built and saved one shard at a time (the shards save_to_disk would cut), so memory holds
    one shard, never the split."""
    import datasets

    lengths = [store.lengths[i] for i in ids]
    bins, eff = _pack(lengths, recipe, seed)
    # Our cache key names the content: datasets would otherwise hash the whole table to make one.
    n_tokens, n_rows = sum(lengths), len(bins)
    nbytes = 12 * n_tokens + 4 * len(lengths) + 16 * n_rows  # ids, labels, positions, seq_lens; offsets
    n_shards = min(n_rows, nbytes // MAX_SHARD_BYTES + 1)
    with _datasets_bars_off():
        if n_shards == 1:
            datasets.Dataset(_rows_table(store, ids, bins), fingerprint=fingerprint).save_to_disk(str(folder))
            return n_rows, eff
        folder.mkdir(parents=True)
        names = [f"data-{k:05d}-of-{n_shards:05d}.arrow" for k in range(n_shards)]
        div, mod = divmod(n_rows, n_shards)  # save_to_disk's contiguous shards
        bar = tqdm(total=n_rows, desc=f"write {folder.name}", unit=" rows", disable=not progress)
        for k, name in enumerate(names):
            a = div * k + min(k, mod)
            shard = bins[a:a + div + (k < mod)]
            scratch = folder / f".shard-{k}"
            datasets.Dataset(_rows_table(store, ids, shard), fingerprint=fingerprint).save_to_disk(str(scratch))
            os.rename(scratch / "data-00000-of-00001.arrow", folder / name)
            if k == 0:
                os.rename(scratch / "dataset_info.json", folder / "dataset_info.json")
                state = json.loads((scratch / "state.json").read_text())
            shutil.rmtree(scratch)
            bar.update(len(shard))
        bar.close()
    state["_data_files"] = [{"filename": name} for name in names]
    with open(folder / "state.json", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)  # as save_to_disk writes it
    return n_rows, eff


@contextmanager
def _datasets_bars_off():
    """datasets' "Saving the dataset" bar, once per shard, says nothing our own bar does not."""
    import datasets

    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


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
    """Worker-thread work for one chunk: tokenize, fit to sequence_len, make the dedup keys.
    (where, variant, sample or None, drop reason, detail, dedup keys) per conversation, in order."""
    fitted = [fit_length(s, recipe.sequence_len, recipe.long_samples) for s in enc.encode_batch(convs)]
    kept = [sample for sample, _, _ in fitted if sample is not None]
    keys = iter(deduplicator.keys(kept) if deduplicator is not None else [None] * len(kept))
    return [(conv.where, conv.meta.get("variant", ""), sample, reason, detail,
             None if sample is None else next(keys))
            for conv, (sample, reason, detail) in zip(convs, fitted, strict=True)]


def _dedup_verdicts(results: list[tuple], deduplicator: dedup.Deduplicator,
                    dedups: dict[str, dedup.Deduplicator], threshold: float | None) -> list[tuple[str, str] | None]:
    """Each kept sample's (reason, detail) as a duplicate, or None; a LimaRP arrangement's copies are judged
    among themselves (one deduplicator per arrangement)."""
    groups: dict[str, list[int]] = {}
    for j, (_, variant, sample, *_rest) in enumerate(results):
        if sample is not None:
            groups.setdefault(variant, []).append(j)
    verdicts: list[tuple[str, str] | None] = [None] * len(results)
    for variant, js in groups.items():
        d = deduplicator if not variant else dedups.setdefault(variant, dedup.Deduplicator(threshold))
        found = d.check_many([results[j][5] for j in js], [results[j][2].where for j in js])
        for j, verdict in zip(js, found, strict=True):
            verdicts[j] = verdict
    return verdicts


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
                         progress: bool, stats: dict, store: SampleStore) -> dict[str, array]:
    """Every data set's usable samples, added to `store`: their ids by report name; every other row is
    recorded in `report`."""
    phrases = (recipe.refusal_phrases or checks.DEFAULT_REFUSALS) if recipe.refusal_filter else ()
    # One deduplicator for all data sets, so duplicates across them are found too; one per LimaRP
    # arrangement, so a row's rearranged copy is not taken for a near-duplicate of the row.
    dedups: dict[str, dedup.Deduplicator] = {}
    deduplicator = dedup.Deduplicator(recipe.near_dedup_threshold) if recipe.dedup else None
    encoders: dict[str, ConversationTokenizer] = {}
    per_set: dict[str, array] = {spec.report_name: array("i") for spec in recipe.datasets}
    pending: deque[tuple[str, Future]] = deque()
    roleplay = _roleplay_sets(recipe, tokenizer, paths, report, phrases, progress, stats)

    def finish(name: str, future: Future) -> None:
        # In input order, so the first of two duplicates is the one kept.
        results = future.result()
        verdicts = (_dedup_verdicts(results, deduplicator, dedups, recipe.near_dedup_threshold)
                    if deduplicator is not None else [None] * len(results))
        for (where, variant, sample, reason, detail, _), verdict in zip(results, verdicts, strict=True):
            if sample is None:
                report.drop(where, reason, detail, copy=bool(variant))
            elif verdict is not None:
                report.drop(sample.where, *verdict, copy=bool(variant))
            else:
                per_set[name].append(store.add(sample))

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
    store.finish()
    return per_set


def _stats(key: str, recipe, report: checks.DropReport, store: SampleStore, samples: list[int], train_rows: int,
           n_val: int, efficiency: float | None, shares: dict[str, float | None]) -> dict:
    lengths = np.asarray(store.lengths, dtype=np.int64)[samples]
    set_index = np.asarray(store.set_index, dtype=np.int64)[samples]
    n_sets = len(store.sets)
    tokens_by_set = np.bincount(set_index, weights=lengths, minlength=n_sets)
    convs_by_set = np.bincount(set_index, minlength=n_sets)
    by_name = {store.sets[k]: k for k in range(n_sets) if convs_by_set[k]}
    total = int(lengths.sum())
    return {
        "key": key,
        "rows": report.to_dict(),
        "samples": len(samples),
        "train_rows": train_rows,
        "validation_samples": n_val,
        "tokens": total,
        "trained_tokens": int(np.asarray(store.n_trained, dtype=np.int64)[samples].sum()),
        "packing_efficiency": efficiency,
        "sequence_len": recipe.sequence_len,
        "length_histogram": _histogram(lengths),
        "mix": {name: {"conversations": int(convs_by_set[k]), "share": int(convs_by_set[k]) / len(samples),
                       "token_share": int(tokens_by_set[k]) / max(1, total), "target": shares.get(name)}
                for name, k in sorted(by_name.items())},
    }


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
    # Two launchers (nodes sharing a dataset_prepared_path or a cache, or two runs at once) preparing the same key
    # take turns: the second finds the first one's folder, and neither clears the other's staging folder. The lock
    # file stays beside the key's folder, so only there: an --out folder is the user's to give once.
    with outputs.folder_lock(out) if out_dir is None else nullcontext():
        if (out / "key.txt").exists() and (out / "key.txt").read_text().strip() == key:
            return Prepared(out, key, json.loads((out / "report.json").read_text()), cache_hit=True)
        outputs.check_folder(out, "prepared-data", overwrite)  # refuse before the work, not after

        # Everything happens inside the staging folder (outputs.py): the samples spilled to disk on the way are
        # cleared with it, whatever stops the run, and a full disk is one message.
        stats: dict = {}
        outputs.write_folder(out, "prepared-data", lambda tmp: stats.update(
            _prepare_into(tmp, recipe, tokenizer, paths, key, strict, progress)), overwrite=overwrite)
    return Prepared(out, key, stats, cache_hit=False)


def _prepare_into(folder: Path, recipe, tokenizer, paths: list[str], key: str, strict: bool, progress: bool) -> dict:
    """Read, check, tokenize, mix, split, pack and save into `folder` (the DatasetDict layout: a folder
    per split and dataset_dict.json, then report.json, tokenizer/ and key.txt): the report's stats."""
    store = SampleStore(folder / ".samples")
    try:
        report = checks.DropReport()
        roleplay_stats: dict = {}
        with _gc_paused():
            per_set = _read_check_tokenize(recipe, tokenizer, paths, report, progress, roleplay_stats, store)
        shares = {d.report_name: d.share for d in recipe.datasets}
        samples = _mix(per_set, shares, recipe.seed, report, store)
        del per_set
        report.kept = sum(1 for i in samples if not store.variant_index[i])
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
        del order
        train_rows, efficiency = _save_split(folder / "train", store, train, recipe, recipe.seed, f"{key}-train",
                                             progress)
        splits = ["train"]
        if val:
            _save_split(folder / "validation", store, val, recipe, recipe.seed, f"{key}-validation", progress)
            splits.append("validation")
        with open(folder / "dataset_dict.json", "w", encoding="utf-8") as f:
            json.dump({"splits": splits}, f)  # as DatasetDict.save_to_disk writes it
        stats = _stats(key, recipe, report, store, samples, train_rows, len(val), efficiency, shares) | roleplay_stats
        roleplay = {d.report_name for d in recipe.datasets if (d.format or recipe.prompt_format) == "limarp"}
        if roleplay:  # samples per arrangement, over the LimaRP-format sets
            first = recipe.limarp_arrangements[0]
            stats["arrangements"] = dict(Counter(store.variant(i) or first for i in samples
                                                 if store.dataset(i) in roleplay))
    finally:
        store.close()
        shutil.rmtree(folder / ".samples", ignore_errors=True)
    (folder / "report.json").write_text(json.dumps(stats, indent=1))
    save_tokenizer(tokenizer, folder / "tokenizer")  # so `data inspect` can decode the rows
    (folder / "key.txt").write_text(key)
    return stats
