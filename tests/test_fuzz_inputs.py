"""Property-based fuzzing (hypothesis) of what users feed openhermes: recipes and --set values,
character cards, and `generate` batch files. Every input gives a result or a clear error of the
documented kind: never a traceback."""

import base64
import io
import json
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openhermes.config import Recipe, RecipeError, load_recipe
from openhermes.infer.cards import Card, CardError, load_card
from tests.fuzzing import CASES

# derandomized: CI sees the same cases every run (raise max_examples locally to search further)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                derandomize=True)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=12)
RECIPE_KEYS = sorted(set(Recipe.model_fields) | {"chat_template", "neftune_noise_alpha", "wandb_project"})
recipe_like = st.dictionaries(st.sampled_from(RECIPE_KEYS) | st.text(max_size=12), documents, max_size=6)
overrides = st.lists(st.text(max_size=30) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(RECIPE_KEYS),
                                                      st.text(max_size=20)), max_size=3)


def _load(text: str, sets: list[str]):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipe.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                assert isinstance(load_recipe(path, sets), Recipe)
            except RecipeError as e:
                assert str(e)


@FUZZ
@given(text=st.text(max_size=200), sets=overrides)
def test_recipe_loader_on_any_text(text, sets):
    CASES["recipe loader (text)"] += 1
    _load(text, sets)


@FUZZ
@given(doc=recipe_like | documents, sets=overrides)
def test_recipe_loader_on_any_document(doc, sets):
    CASES["recipe loader (YAML documents)"] += 1
    _load(yaml.safe_dump(doc, allow_unicode=True), sets)


def _png_card(chunk: str | None) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if chunk is not None:
        info.add_text("chara", chunk)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


VALID_CARD = {"spec": "chara_card_v2", "data": {"name": "Aria", "description": "A bard.", "first_mes": "Hi!"}}
VALID_PNG = _png_card(base64.b64encode(json.dumps(VALID_CARD).encode()).decode())


def _read_card(data: bytes, suffix: str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"card{suffix}"
        path.write_bytes(data)
        try:
            assert isinstance(load_card(path), Card)
        except CardError as e:
            assert str(path) in str(e)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".png", ".json", ".PNG", ".txt"]))
def test_card_reader_on_random_bytes(data, suffix):
    CASES["card reader (random bytes)"] += 1
    _read_card(data, suffix)


@FUZZ
@given(cut=st.integers(0, len(VALID_PNG)), flip=st.integers(0, len(VALID_PNG) - 1), bit=st.integers(0, 7))
def test_card_reader_on_truncated_and_damaged_pngs(cut, flip, bit):
    CASES["card reader (truncated/damaged PNG)"] += 1
    damaged = bytearray(VALID_PNG)
    damaged[flip] ^= 1 << bit
    _read_card(VALID_PNG[:cut], ".png")
    _read_card(bytes(damaged), ".png")


@FUZZ
@given(doc=documents, as_chunk=st.booleans(), raw=st.text(max_size=40))
def test_card_reader_on_any_json_card(doc, as_chunk, raw):
    CASES["card reader (JSON documents)"] += 1
    text = json.dumps({"spec": "chara_card_v2", "data": doc} if isinstance(doc, dict) else doc)
    if as_chunk:
        _read_card(_png_card(base64.b64encode(text.encode()).decode()), ".png")
        _read_card(_png_card(raw), ".png")
    else:
        _read_card(text.encode(), ".json")


def test_a_valid_card_still_reads():
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "c.png").write_bytes(VALID_PNG)
        assert load_card(Path(d) / "c.png").name == "Aria"


SAMPLER_KEYS = ["temperature", "top_p", "top_k", "min_p", "typical_p", "tfs", "tfs_z", "repetition_penalty",
                "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty", "seed", "max_tokens",
                "stop", "id", "mirostat"]
values = (st.none() | st.booleans() | st.integers(-3, 3) | st.integers() | st.floats(-3, 3)
          | st.floats(allow_nan=False) | st.text(max_size=5) | st.lists(st.text(max_size=3), max_size=2))
line_objects = st.fixed_dictionaries(
    {}, optional={"messages": st.just([{"role": "user", "content": "Hi"}]) | documents,
                  "prompt": st.text(max_size=20) | documents}
).flatmap(lambda base: st.dictionaries(st.sampled_from(SAMPLER_KEYS), values, max_size=4).map(lambda d: base | d))
lines = st.lists(line_objects.map(json.dumps) | st.text(max_size=30) | st.binary(max_size=20).map(
    lambda b: b.decode("latin-1")), min_size=1, max_size=5)


@pytest.fixture(scope="module")
def short_engine(chat_model, chatml_tokenizer):
    """A 48-token context window: any line's max_tokens ends quickly."""
    from openhermes.infer.engine import Engine

    return Engine(chat_model, chatml_tokenizer, context_window=48)


@FUZZ
@given(rows=lines)
def test_generate_batch_file_on_any_lines(short_engine, rows):
    from openhermes.infer.batchfile import generate_file
    from openhermes.infer.sampling import PRESETS

    CASES["generate batch file"] += 1
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "in.jsonl", Path(d) / "out.jsonl"
        body = "\n".join(r.replace("\n", " ") for r in rows) + "\n"
        src.write_bytes(body.encode("utf-8", "surrogatepass") + b"\xff\xfe\n")  # and one line that is not UTF-8
        done, errors = generate_file(short_engine, src, out, PRESETS["greedy"], 3, progress=False)
        written = [json.loads(x) for x in out.read_text().splitlines()]
        expected = [n for n, r in enumerate(body.split("\n")[:-1] + ["\xff"], 1) if r.strip()]
        assert sorted(r.get("line", -1) for r in written if "error" in r) == sorted(e.line for e in errors)
        assert len(written) == done + len(errors) == len(expected)
        assert all(f"{src}:{e.line}:" in e.message for e in errors)
