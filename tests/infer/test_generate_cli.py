"""`openhermes generate`: a JSONL batch with bad lines reported by number, on a real model folder."""

import json
import os
import subprocess
import sys


def test_generate_answers_good_lines_and_reports_bad_ones(tmp_path, chat_model_dir, engine):
    from openhermes.infer.sampling import PRESETS
    from openhermes.infer.sequence import GenerationRequest

    expected = engine.generate([GenerationRequest(engine.chat_prompt([{"role": "user", "content": "Hi"}]),
                                                  PRESETS["greedy"], 6)])[0]
    piece = expected.text.strip()[:2]
    lines = [json.dumps({"id": "a", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}),
             "{broken json",
             json.dumps({"prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "max_tokens": 6}),
             json.dumps({"messages": [{"role": "user", "content": "Hi"}], "temperature": -1}),
             json.dumps({"messages": [{"role": "user", "content": "Yo"}], "temperature": 0.8, "seed": 3,
                         "max_tokens": 5}),
             json.dumps({"messages": [{"role": "wizard", "content": "Hi"}]}),
             json.dumps({"id": "b", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
                         "banned_strings": [piece]}),
             json.dumps({"messages": [{"role": "user", "content": "Hi"}], "banned_strings": 5})]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "openhermes.cli", "generate", str(chat_model_dir), "--input", str(src),
                           "--output", str(out)], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r.get("id", r.get("line")) for r in rows] == ["a", 2, 3, 4, 5, 6, "b", 8]
    assert "in.jsonl:2" in rows[1]["error"] and "temperature" in rows[3]["error"]
    assert "'wizard'" in rows[5]["error"] and "text" not in rows[5]
    assert "in.jsonl:2" in proc.stderr and "in.jsonl:4" in proc.stderr
    # line 1 through the CLI equals the engine in this process (greedy is the default preset)
    assert rows[0]["text"] == expected.text and rows[0]["completion_tokens"] == expected.completion_tokens
    # raw prompt text written in ChatML reads its control tokens: same prompt as line 1
    assert rows[2]["prompt_tokens"] == rows[0]["prompt_tokens"] and rows[2]["text"] == rows[0]["text"]
    # a banned string is taken back: never in the reply
    assert piece.lower() not in rows[6]["text"].lower() and rows[6]["text"] != expected.text
    assert "banned_strings" in rows[7]["error"]
