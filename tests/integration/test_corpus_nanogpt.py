"""nanoGPT from a config file of the corpus, end to end: its own lines, the model it reports, ckpt.pt."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.conftest import Runner

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "nanogpt"


def test_config_file_run_reports_and_saves(runner: Runner) -> None:
    """small_char.py without its meta.pkl: GPT-2's padded vocabulary; a save after each evaluation but 0 that
    improves the val loss (always_save_checkpoint = False), and ckpt.pt then."""
    shutil.copy(CORPUS / "small_char.py", runner.tmp / "small_char.py")
    args = ["train.py", "small_char.py", "--eval_interval=2", "--eval_iters=2", "--max_iters=4"]
    result = runner.run(["--nproc-per-node", "2", "--fake-speed", "400", *args], timeout=120)
    assert result.code == 0, result.stderr[-2000:]
    out = result.stdout
    # get_num_params(): 4 blocks of 12 C^2 (no biases), 9 LayerNorm weights, 50304 x 256 embeddings.
    c = 256
    n = 4 * 12 * c * c + 9 * c + 50304 * c
    assert f"\nnumber of parameters: {n / 1e6:.2f}M\n" in out
    assert "defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)" in out
    # 32 sequences of 128 tokens x gradient_accumulation_steps 4 (over both ranks).
    assert out.count(f"tokens per iteration will be: {32 * 128 * 4:,}\n") == 2
    assert re.search(r"^step 2: train loss \d+\.\d{4}, val loss \d+\.\d{4}$", out, re.M)
    # always_save_checkpoint = False: a save right after each evaluation past 0 with the best val loss yet.
    evals = re.findall(
        r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)\n(saving checkpoint to \S+\n)?", out, re.M
    )
    assert [int(e[0]) for e in evals] == [0, 2, 4]
    best, saved = 1e9, []
    for it, val, save in evals:
        if float(val) < best:
            best = float(val)
            saved.append(int(it) > 0)
        else:
            saved.append(False)
        assert bool(save) == saved[-1] and (not save or save == "saving checkpoint to out-small-char\n")
    assert out.count("saving checkpoint to") == sum(saved)
    ckpt = runner.tmp / "out-small-char" / "ckpt.pt"
    if any(saved):
        # fp32 weights and AdamW's two moments: 12 bytes per parameter (the position table too), and more.
        assert ckpt.stat().st_size > 12 * (n + 128 * c)
        assert ckpt.read_bytes()[:4] == b"PK\x03\x04"  # torch.save's zip
