"""Two launchers preparing the same recipe into one shared folder at once (two nodes on an NFS
`dataset_prepared_path`): both succeed, the folder is written once and whole, and nothing is left half-done."""

import multiprocessing as mp

from tests.data.test_prepare import _recipe, _write


def _prepare(base: str, data: str, shared: str, barrier, results) -> None:
    from openhermes.data.prepare import prepare
    from openhermes.model.load import load_tokenizer

    tok = load_tokenizer(base, "chatml")
    barrier.wait()  # both start reading at the same moment
    prep = prepare(_recipe(data, dataset_prepared_path=shared), tok, progress=False)
    results.put((str(prep.path), prep.cache_hit))


def test_two_concurrent_prepares_of_one_key_write_it_once(tmp_path, tiny_base, chatml_tokenizer):
    import datasets

    from openhermes.data.prepare import prepare

    data = _write(tmp_path / "d.jsonl", 20000)
    shared = tmp_path / "shared"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_prepare, args=(str(tiny_base), str(data), str(shared), barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes[0][0] == outcomes[1][0]
    assert [hit for _, hit in outcomes] == [False, True]  # the second found the first one's folder
    assert sorted(p.name for p in shared.iterdir()) == sorted([f".{outcomes[0][0].rsplit('/', 1)[1]}.lock",
                                                              outcomes[0][0].rsplit("/", 1)[1]])  # no staging left

    alone = prepare(_recipe(data), chatml_tokenizer, cache_dir=tmp_path / "alone", progress=False)
    ours, reference = datasets.load_from_disk(outcomes[0][0]), datasets.load_from_disk(str(alone.path))
    assert ours["train"].to_dict() == reference["train"].to_dict()
