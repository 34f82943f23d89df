"""Several nodes through torchrun's rendezvous, as two launchers on loopback (gloo, one CPU process each): the run
equals one node of two processes, tensor for tensor; node 1 killed with SIGKILL after a checkpoint and both resumed
end with an uninterrupted run's weights; a node with another recipe and an output folder of its own is refused before
training, naming both differences; the launcher's own checks say what is wrong before anything starts."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.serve.conftest import free_port
from tests.train.conftest import ONE_THREAD as ENV
from tests.train.conftest import TWO_PROCESS_STEPS as STEPS
from tests.train.conftest import kill_when


def _train(recipe, out, *args, cache=None):
    env = ENV | ({"OPENHERMES_CACHE": str(cache)} if cache else {})
    return subprocess.Popen([sys.executable, "-m", "openhermes.cli", "train", str(recipe), "--out", str(out),
                             "--no-report", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)


def _node(recipe, out, rank, port, *args, cache=None):
    return _train(recipe, out, "--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                  "--master-port", str(port), *args, cache=cache)


def _finish(*procs, ok=True):
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        errs.append(err.decode(errors="replace"))
        if ok:
            assert p.returncode == 0, errs[-1][-3000:]
    return errs


def _losses(d):
    return [r["loss"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines()) if "loss" in r]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model" / "model.safetensors")


def _equal(a, b):
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_nodes_train_as_one_node_of_two_processes_and_resume_after_node_1_is_killed(small_recipe, two_process_run,
                                                                                         tmp_path):
    one_node = two_process_run  # one node of two processes, the same recipe

    # Each node with a cache of its own: each launcher prepares the data and the base model's tokens itself.
    recipe = small_recipe(**STEPS, dataset_prepared_path=None)
    two = tmp_path / "two-nodes"
    port = free_port()
    _finish(_node(recipe, two, 0, port, cache=tmp_path / "cache0"), _node(recipe, two, 1, port, cache=tmp_path / "cache1"))
    assert (tmp_path / "cache0" / "prepared").is_dir() and (tmp_path / "cache1" / "prepared").is_dir()
    assert len(_losses(two)) == 12 and _losses(two) == _losses(one_node)
    assert _equal(_weights(two), _weights(one_node))
    assert sorted(p.name for p in two.iterdir() if p.name.startswith(".")) == [".openhermes.json"]  # no markers left

    # A shared cache (the fixture's dataset_prepared_path), node 1 killed after a checkpoint: node 0's rank fails
    # on its next collective; both restarted with --resume end where an uninterrupted run ends.
    recipe = small_recipe(**STEPS)
    cut = tmp_path / "cut"
    port = free_port()
    node0, node1 = _node(recipe, cut, 0, port), _node(recipe, cut, 1, port)
    kill_when(node1, cut / "checkpoint-4", lambda: os.killpg(node1.pid, signal.SIGKILL))
    _finish(node0, ok=False)
    assert node0.returncode != 0 and not (cut / "model").exists()
    assert {p.name for p in cut.glob("checkpoint-4/rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    port = free_port()
    _finish(_node(recipe, cut, 0, port, "--resume"), _node(recipe, cut, 1, port, "--resume"))
    assert _equal(_weights(cut), _weights(one_node))


@pytest.mark.slow
def test_a_node_with_another_recipe_and_its_own_output_folder_is_refused(small_recipe, tmp_path):
    """Through the c10d rendezvous, which picks rank 0 itself, so either node may be "node 1". Node 1's --out stands
    for a node-local folder that node 0's files are not in; each node says both problems, and neither trains."""
    recipe = small_recipe(**STEPS)
    endpoint = f"127.0.0.1:{free_port()}"
    procs = [_train(recipe, tmp_path / out, "--nnodes", "2", "--rdzv-endpoint", endpoint, "--rdzv-id", "t", *extra)
             for out, extra in (("shared", ()), ("local", ("--set", "learning_rate=0.001")))]
    errs = _finish(*procs, ok=False)
    assert all(p.returncode != 0 for p in procs)
    for err in errs:
        assert "the nodes disagree, so training does not start" in err, err[-3000:]
        assert re.search(r"learning_rate: (0\.001 on node 1, 0\.003|0\.003 on node 1, 0\.001) on rank 0", err), err
        assert "the output folder is not shared" in err
        assert str(tmp_path / "local") in err and str(tmp_path / "shared") in err
    for out in ("shared", "local"):
        assert not (tmp_path / out / "model").exists() and not list((tmp_path / out).glob("checkpoint-*"))


@pytest.mark.parametrize(("nodes", "message"), [
    ({"nnodes": "2", "node_rank": 1}, "--nnodes 2 needs --master-addr"),
    ({"nnodes": "1:4", "master_addr": "127.0.0.1"}, "needs torchrun's c10d rendezvous"),
    ({"nnodes": "two", "master_addr": "127.0.0.1"}, "--nnodes 'two'"),
    ({"nnodes": "2", "rdzv_endpoint": "somewhere"}, "--rdzv-endpoint 'somewhere': give HOST:PORT"),
])
def test_launcher_options_that_cannot_work_are_refused(nodes, message):
    from openhermes.train.launch import Nodes

    with pytest.raises(ValueError, match=re.escape(message)):
        Nodes(**nodes).check()


def test_a_node_rank_outside_nnodes_is_refused_before_anything_is_written(small_recipe, tmp_path):
    proc = _train(small_recipe(max_steps=1), tmp_path / "run", "--nnodes", "2", "--node-rank", "2",
                  "--master-addr", "127.0.0.1")
    err = _finish(proc, ok=False)[0]
    assert proc.returncode != 0 and "--node-rank 2 is outside --nnodes 2" in err, err[-2000:]
    assert not (tmp_path / "run").exists() and not (tmp_path / "prepared").exists()


def test_an_unreachable_master_is_named_after_the_join_timeout(small_recipe, tmp_path):
    """torchrun itself waited without a word for over 6 minutes here (an unreachable master at the same address)."""
    with socket.socket() as closed:  # a port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    start = time.monotonic()
    proc = _train(small_recipe(max_steps=1), tmp_path / "run", "--nnodes", "2", "--node-rank", "1",
                  "--master-addr", "127.0.0.1", "--master-port", str(port), "--join-timeout", "3")
    err = _finish(proc, ok=False)[0]
    assert proc.returncode != 0
    assert f"could not reach the master at 127.0.0.1:{port} for 3 s" in err and "waiting for node 0" in err
    assert time.monotonic() - start < 120
