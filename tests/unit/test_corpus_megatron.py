"""Megatron-LM launch scripts of tests/corpus/megatron read as Megatron reads them: model sizes against
published counts or the architecture's own formula, batch, schedule, precision, refusals and save layout."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.dialects.base import Seat
from fakerun.dialects.files import SaveRequest
from fakerun.dialects.megatron import MegatronDialect, argument_rows
from fakerun.dialects.megatron_ds import MegatronDeepSpeedDialect
from fakerun.frameworks import megatron_args, pytrace
from fakerun.hints import Hints, parse_hints
from fakerun.jobconfig import build_run
from fakerun.sim import compute, memory, schedule
from fakerun.sim.collectives import comm_plan
from fakerun.sim.job import JobSpec, make_job
from fakerun.sim.run import RunPlan
from fakerun.worker.main import die_at_start

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "megatron"


def script_command(name: str) -> tuple[int, str, list[str]]:
    """(--nproc_per_node, the training script, its arguments) of a corpus launch script's torchrun line."""
    text = (CORPUS / name).read_text().replace("\\\n", " ")
    # The script's plain `NAME=value` assignments, expanded as the shell would in the torchrun line.
    names = dict(re.findall(r"^([A-Z_]+)=(\S+)$", text, flags=re.MULTILINE))
    line = next(x for x in text.splitlines() if x.lstrip().startswith("torchrun"))
    line = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: names[m[1]], line)
    words = shlex.split(line, comments=True)
    at = next(i for i, w in enumerate(words) if w.endswith(".py"))
    nproc = int(words[words.index("--nproc_per_node") + 1])
    return nproc, words[at], words[at + 1 :]


def hints_of(name: str) -> Hints:
    """parse_hints over a corpus script's arguments."""
    _, script, args = script_command(name)
    return parse_hints(script, args)


def run_of(script: str, args: list[str], nproc: int) -> tuple[RunPlan, Hints]:
    """build_run for a one-node launch of `script` with `args`."""
    cmd = parse_command_line(["--nproc-per-node", str(nproc), script, *args], {})
    bundle = presets.resolve(cmd.fake.model or "llama3-8b", cmd.fake.gpu, cmd.fake.cluster)
    return build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=False)


def padded(vocab: int, multiple: int) -> int:
    """Megatron's padded vocabulary: up to a multiple of 128 x TP."""
    return math.ceil(vocab / multiple) * multiple


def test_gpt2_small_is_gpt2_with_megatron_padding() -> None:
    h = hints_of("gpt2_124m.sh")
    m = h.model
    assert m is not None
    # openai-community/gpt2 has 124,439,808 parameters; Megatron pads 50257 to 50304 tokens (x 768, tied).
    assert m.params == 124_439_808 + (padded(50257, 128) - 50257) * 768
    shape = (m.position, m.mlp, m.norm, m.bias, m.tied_embeddings)
    assert shape == ("learned", "gelu", "layernorm", "all", True)
    assert h.settings["megatron.vocab"] == "50257"
    assert h.job["micro_batch"] == 4 and h.job["global_batch"] == 32 and h.job["total_steps"] == 100
    assert h.job["lr_schedule"] == "cosine" and h.job["warmup_steps"] == 1 and h.job["min_lr"] == 6e-5
    assert h.job["decay_steps"] == 30  # --lr-decay-iters: min_lr from iteration 30 to the run's end (100)
    assert h.cadence == {"log_interval": 10, "save_interval": 20, "eval_interval": 50, "eval_iters": 5}
    assert h.settings["save"] == "checkpoints/gpt2_124m" and h.script_exit is None


def test_llama3_8b_is_the_published_model_with_its_samples_schedule() -> None:
    h = hints_of("llama3_8b.sh")
    m = h.model
    assert m is not None and m.name == "llama3-8b"
    assert m.params == 8_030_261_248  # Meta-Llama-3-8B's published count; 128256 is a multiple of 256
    # 1280 samples in global batches of 128: 10 iterations, the first a warm-up (128 samples).
    assert h.job["total_steps"] == 10 and h.job["warmup_steps"] == 1
    assert h.job["tp"] == 2 and h.job["zero_stage"] == 1
    assert h.settings["megatron.fp8"] == "hybrid" and h.settings["megatron.fp8_recipe"] == "tensorwise"
    assert h.job["cp"] == 2 and h.settings["megatron.sequence_parallel"] == "1"
    assert h.cadence["save_interval"] == 0  # no --save: nothing saved


def test_mixtral_counts_experts_and_active_parameters() -> None:
    m = hints_of("mixtral_8x7b.sh").model
    assert m is not None and m.name == "mixtral-8x7b"
    assert m.params == 46_702_792_704  # mistralai/Mixtral-8x7B-v0.1's published count
    # Two experts of eight are active: six SwiGLU experts (3 x 4096 x 14336) per layer idle, 32 layers.
    assert m.active_params == m.params - 32 * 6 * 3 * 4096 * 14336


def test_mamba_hybrid_counts_each_layer_kind() -> None:
    h = hints_of("mamba_hybrid.sh")
    m = h.model
    assert m is not None
    pattern = m.hybrid
    # allocate_layers: round(24 x 0.08) attention and round(24 x 0.5) MLP layers, Mamba for the rest.
    assert (pattern.count("*"), pattern.count("-"), pattern.count("M")) == (2, 12, 10)
    assert pattern == megatron_args.hybrid_pattern(24, 0.08, 0.5, None)
    assert m.params == hybrid_params(10, 2, 12, hid=1024, heads=16, groups=8) and m.position == "none"
    assert h.job["total_steps"] == 6400 // 64 and h.job["warmup_steps"] == 640 // 64


def hybrid_params(n_mamba: int, n_attention: int, n_mlp: int, *, hid: int, heads: int, groups: int) -> int:
    """A Mamba-2 hybrid's parameters: Mamba-2 mixers (state 128, 8 groups, head dim 64), GQA attention and
    GeLU 4h MLPs without biases, each with its RMSNorm, the final norm and untied 256,000-token tables."""
    state, ssm_groups, head_dim = 128, 8, 64
    inner = 2 * hid
    mamba_heads = inner // head_dim
    conv_dim = inner + 2 * ssm_groups * state
    mamba = (
        hid * (2 * inner + 2 * ssm_groups * state + mamba_heads)  # in_proj: z, x, B, C, dt
        + conv_dim * 4
        + conv_dim  # conv1d weight and bias
        + 3 * mamba_heads  # dt_bias, A_log, D
        + inner  # the gated RMSNorm
        + inner * hid  # out_proj
    )
    head = hid // heads
    attention = hid * heads * head + 2 * hid * groups * head + heads * head * hid  # q, k and v, out
    mlp = 2 * hid * 4 * hid  # GeLU, 4h
    vocab = padded(256000, 128)
    layers = n_mamba * (mamba + hid) + n_attention * (attention + hid) + n_mlp * (mlp + hid)
    return layers + hid + 2 * vocab * hid


def test_hybrid_layer_pattern_of_pretrain_hybrid_gives_the_layers() -> None:
    # Megatron's later form: pretrain_hybrid.py, no --num-layers, the pattern's length is the depth.
    h = hints_of("hybrid_layer_pattern.sh")
    assert h.style == "megatron" and h.script_exit is None and h.notices == ()
    m = h.model
    assert m is not None and m.layers == 32 and m.hybrid == "M-M-*M-M-M-M*-M-M-M-*M-M-M-M-*M-"
    assert m.params == hybrid_params(14, 4, 14, hid=768, heads=12, groups=4)
    # --train-samples 640,000 and --lr-warmup-samples 6,400 of 64 sequences per iteration.
    assert h.job["total_steps"] == 640_000 // 64 and h.job["warmup_steps"] == 6_400 // 64
    # The old names read the same: pretrain_mamba.py's --hybrid-override-pattern; MTP depths after `/` and
    # pipeline separators `|` are not decoder layers (get_hybrid_total_layer_count).
    _, _, args = script_command("hybrid_layer_pattern.sh")
    old = [("--hybrid-override-pattern" if a == "--hybrid-layer-pattern" else a) for a in args]
    assert parse_hints("pretrain_mamba.py", old).model == m
    at = args.index("--hybrid-layer-pattern") + 1
    mtp = [*args[:at], "M-M*|M-M*/MM/MM", *args[at + 1 :], "--pipeline-model-parallel-size", "2"]
    other = parse_hints("pretrain_hybrid.py", mtp).model
    assert other is not None and other.layers == 8 and other.hybrid == "M-M*M-M*"


def test_hybrid_override_pattern_wins_and_sets_the_stack() -> None:
    args = str.split(
        "--num-layers 8 --hidden-size 512 --num-attention-heads 8 --seq-length 1024 "
        "--max-position-embeddings 1024 --hybrid-override-pattern M-M*M-M* "
        "--micro-batch-size 1 --train-iters 10"
    )
    m = parse_hints("pretrain_mamba.py", args).model
    assert m is not None and m.hybrid == "M-M*M-M*" and m.layers == 8 and m.attention_layers == 2


@pytest.mark.parametrize(
    ("extra", "vocab"),
    [
        (["--tokenizer-type", "NullTokenizer", "--vocab-size", "32000"], 32001),  # its end-of-document id
        (["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "Llama-3.1-8B"], 128256),
        (["--tokenizer-type", "TikTokenizer", "--tokenizer-model", "multiMixV8.gpt4o.json"], 2**17),
        (["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", "llama2/tok.model"], 32000),
        ([], 50257),  # pretrain_gpt.py's args_defaults: GPT2BPETokenizer
    ],
)
def test_tokenizer_vocabulary_and_padding(extra: list[str], vocab: int) -> None:
    base = "--num-layers 2 --hidden-size 256 --num-attention-heads 4 --max-position-embeddings 512"
    args = [*base.split(), "--tensor-model-parallel-size", "2", *extra]
    h = parse_hints("pretrain_gpt.py", args)
    assert h.settings["megatron.vocab"] == str(vocab)
    assert h.model is not None and h.model.vocab == padded(vocab, 128 * 2)


def test_defaults_fill_what_the_arguments_leave_out() -> None:
    args = str.split(
        "--num-layers 2 --hidden-size 256 --num-attention-heads 4 --max-position-embeddings 512 "
        "--seq-length 512 --micro-batch-size 2 --train-iters 50 --lr 1e-3 --swiglu"
    )
    h = parse_hints("pretrain_gpt.py", args)
    m = h.model
    assert m is not None
    assert m.ffn_hidden == int(4 * 256 * 2 / 3 / 64) * 64 and m.kv_heads == 4 and m.tied_embeddings
    # linear decay to 0 with no warm-up; one micro batch per data-parallel rank (no --global-batch-size)
    assert (h.job["lr_schedule"], h.job["warmup_steps"], h.job["min_lr"], h.job["grad_accum"]) == (
        "linear",
        0,
        0.0,
        1,
    )
    assert h.cadence == {"log_interval": 100, "eval_interval": 1000, "eval_iters": 100, "save_interval": 0}
    run, _ = run_of("pretrain_gpt.py", args, 4)
    assert run.job.global_batch == 2 * 4 and run.job.grad_accum == 1 and not run.saves


def test_no_model_arguments_warn_and_fall_back() -> None:
    h = parse_hints("pretrain_gpt.py", ["--micro-batch-size", "1", "--train-iters", "10"])
    assert h.model is None and len(h.notices) == 1 and "--num-layers" in h.notices[0]


def test_save_without_interval_dies_in_validate_args() -> None:
    args = "--num-layers 2 --hidden-size 256 --num-attention-heads 4 --max-position-embeddings 512 --save ck"
    h = parse_hints("pretrain_gpt.py", args.split())
    assert h.script_exit is not None
    text, code = h.script_exit
    assert code == 1 and text.endswith("    assert args.save_interval is not None\nAssertionError\n")
    assert text.startswith("Traceback (most recent call last):\n")


@pytest.mark.parametrize(
    ("extra", "nproc", "message"),
    [
        (
            ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
            6,
            "AssertionError: world size (6) is not divisible by total_model_size (total_model_size=4)",
        ),
        (
            ["--global-batch-size", "6"],
            4,
            "AssertionError: global batch size (6) is not divisible by micro batch size (1) times data "
            "parallel size (4)",
        ),
        (
            ["--num-experts", "6", "--expert-model-parallel-size", "4"],
            4,
            "AssertionError: Number of experts should be a multiple of expert model parallel_size.",
        ),
        (
            ["--seq-length", "1024"],
            4,
            "AssertionError: max_position_embeddings (512) must be greater than or equal to "
            "seq_length (1024).",
        ),
    ],
)
def test_megatron_refusals_are_raised_by_the_ranks(extra: list[str], nproc: int, message: str) -> None:
    base = "--num-layers 2 --hidden-size 256 --num-attention-heads 4 --max-position-embeddings 512"
    args = [*base.split(), "--micro-batch-size", "1", "--train-iters", "10", *extra]
    run, hints = run_of("pretrain_gpt.py", args, nproc)
    assert hints.script_exit is not None
    text, code = hints.script_exit
    assert code == 1 and text.splitlines()[-1] == message
    assert '/pretrain_gpt.py", line 233, in <module>' in text.splitlines()[1]
    assert run.job.world_size == nproc  # the launcher still starts every rank, which dies of it


def save_request(save: str, rank: int, *, fmt: str = "torch_dist", legacy: bool = False) -> SaveRequest:
    """Rank `rank`'s part of the save after iteration 20 of a 4-rank TP=2 job."""
    args = str.split(
        "--num-layers 2 --hidden-size 256 --num-attention-heads 4 --max-position-embeddings 512 "
        "--micro-batch-size 1 --train-iters 40 --tensor-model-parallel-size 2 --save-interval 20"
    )
    args += ["--save", save, "--ckpt-format", fmt, *(["--checkpoint-activations"] if legacy else [])]
    run, hints = run_of("pretrain_gpt.py", args, 4)
    return SaveRequest(run, hints.settings, 20, rank, 4, "checkpoint")


def test_torch_dist_save_layout_and_tracker() -> None:
    r0 = MegatronDialect.artifacts(save_request("out/ck", 0))
    r1 = MegatronDialect.artifacts(save_request("out/ck", 1))
    assert [a.path for a in r1] == ["out/ck/iter_0000020/__1_0.distcp", "out/ck/iter_0000020/__1_1.distcp"]
    names = [a.path.removeprefix("out/ck/") for a in r0]
    assert names == [
        "iter_0000020/common.pt",
        "iter_0000020/__0_0.distcp",
        "iter_0000020/__0_1.distcp",
        "iter_0000020/.metadata",
        "iter_0000020/metadata.json",
        "latest_checkpointed_iteration.txt",  # last: once every rank has saved
    ]
    assert r0[-1].head == b"20"
    assert json.loads(r0[-2].head)["sharded_backend"] == "torch_dist"


def test_torch_format_writes_one_file_per_model_parallel_shard() -> None:
    requests = [save_request("ck", rank, fmt="torch") for rank in range(4)]
    files = [a.path for r in requests for a in MegatronDialect.artifacts(r)]
    # TP=2 on 4 ranks: ranks 0 and 1 are data-parallel rank 0 of tensor ranks 0 and 1.
    assert files == [
        "ck/iter_0000020/mp_rank_00/model_optim_rng.pt",
        "ck/latest_checkpointed_iteration.txt",
        "ck/iter_0000020/mp_rank_01/model_optim_rng.pt",
    ]


def test_megatron_deepspeed_saves_deepspeed_global_step_layout() -> None:
    request = save_request("ck", 0, legacy=True)
    paths = [a.path for a in MegatronDeepSpeedDialect.artifacts(request)]
    assert paths[0] == "ck/global_step20/mp_rank_00_model_states.pt"
    assert paths[-2:] == ["ck/latest", "ck/latest_checkpointed_iteration.txt"]


# ----------------------------------------------------------------------------------------------------
# Context parallelism, FP8, the schedule's end, deaths in the model config, what rank 0 printed first


def test_context_parallel_splits_each_sequence_over_its_ranks() -> None:
    nproc, script, args = script_command("llama3_8b.sh")
    run, hints = run_of(script, args, nproc)
    job = run.job
    # --tensor-model-parallel-size 2, --context-parallel-size 2 on 8 GPUs: DP = 8 / (2 x 1 x 2).
    assert (job.tp, job.cp, job.pp, job.dp) == (2, 2, 1, 2)
    # Megatron's rank order tp-cp-dp-pp: ranks 0, 1 are TP ranks of CP rank 0; 2, 3 of CP rank 1.
    assert [(c.tp_rank, c.cp_rank, c.dp_rank) for c in map(job.coords, range(4))] == [
        (0, 0, 0),
        (1, 0, 0),
        (0, 1, 0),
        (1, 1, 0),
    ]
    dialect = MegatronDialect(Seat(rank=0, local_rank=0, world_size=8, nproc_per_node=8, hosts=("node-a",)))
    dialect.settings = dict(hints.settings)
    text = "\n".join(dialect.startup(run))
    assert (
        "data-parallel size: 2, context-parallel size: 2, hierarchical context-parallel sizes: None" in text
    )
    assert re.search(r"^  context_parallel_size \.+ 2$", text, flags=re.MULTILINE)
    assert re.search(r"^  fp8 \.+ hybrid$", text, flags=re.MULTILINE)
    assert re.search(r"^  fp8_recipe \.+ tensorwise$", text, flags=re.MULTILINE)


def _job(**kw: object) -> JobSpec:
    """A Llama 3 8B job on one 8 x H100 node with explicit parallelism (memory unchecked)."""
    bundle = presets.resolve("llama3-8b", "h100", None)
    base: dict[str, Any] = dict(
        nnodes=1,
        nproc_per_node=8,
        tp=2,
        pp=1,
        micro_batch=1,
        global_batch=16,
        seq_len=8192,
        recompute="selective",
    )
    return make_job(bundle.model, bundle.cluster, bundle.storage, check_memory=False, **{**base, **kw})


def test_context_parallel_physics() -> None:
    one, two = _job(), _job(cp=2)
    assert one.cp == 1 and one.dp == 4 and two.dp == 2 and two.dp_cp == 4
    # Each rank holds half of each sequence: half the saved activations (no s x s term under selective).
    assert memory.layer_activation_bytes(two) == memory.layer_activation_bytes(one) / 2
    assert not [o for o in comm_plan(one).ops if o.group == "cp"]
    (ring,) = [o for o in comm_plan(two).ops if o.group == "cp"]
    m = two.model
    # A rank's K and V chunk (bf16, its 8/2 query groups of 128, 4096 tokens), cp - 1 hops forward and two
    # chunks (K/V and their gradient) per hop backward, per layer and micro batch.
    assert ring.op == "send_recv" and ring.ranks == 2
    assert ring.nbytes == 2 * 2 * 4096 * 1 * m.kv_heads * m.head_dim / 2
    assert ring.count == 3 * 1 * m.layers * two.grad_accum
    # Gradients are reduced over the 4 ranks holding the same weights (data x context parallel).
    assert {o.ranks for o in comm_plan(two).ops if o.group == "dp"} == {4}
    # The same tokens per step over the same GPUs: no faster, and slower only by the exposed K/V exchange.
    assert compute.expected_step_time(two) >= compute.expected_step_time(one) * 0.98


def test_fp8_gemms_run_faster_where_the_gpu_has_an_fp8_rate() -> None:
    bf16, fp8 = _job(), _job(fp8=True)
    h100 = bf16.gpu
    assert h100.peak_fp8_tflops > h100.peak_bf16_tflops
    faster = compute.expected_step_time(bf16) / compute.expected_step_time(fp8)
    # Some of the step runs at twice the rate, never all of it.
    assert 1.0 < faster < h100.peak_fp8_tflops / h100.peak_bf16_tflops
    a100 = presets.resolve("llama3-8b", "a100-80gb", None)
    plain = make_job(a100.model, a100.cluster, a100.storage, tp=2, check_memory=False)
    assert compute.expected_step_time(dataclasses.replace(plain, fp8=True)) == compute.expected_step_time(
        plain
    )


def _megatron_lr(
    i: int,
    gbs: int,
    *,
    style: str,
    peak: float,
    low: float,
    warmup: int,
    decay: int,
    wsd: int = 0,
    wsd_style: str = "exponential",
) -> float:
    """OptimizerParamScheduler.get_lr (core v0.15) after iteration i: its steps are samples."""
    n, w, d = i * gbs, warmup * gbs, decay * gbs
    if w > 0 and n <= w:
        return peak * n / w
    if style == "constant":
        return peak
    if n > d:
        return low
    if style == "inverse-square-root":
        return max(low, peak * max(w, 1) ** 0.5 / max(n, 1) ** 0.5)
    ratio = (n - w) / (d - w)
    if style == "linear":
        coeff = 1.0 - ratio
    elif style == "cosine":
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    else:
        start = d - wsd * gbs
        x = (n - start) / (wsd * gbs)
        coeff = (
            1.0
            if n <= start
            else {
                "linear": 1.0 - x,
                "cosine": 0.5 * (math.cos(math.pi * x) + 1.0),
                "exponential": 2.0 * 0.5**x - 1.0,
                "minus_sqrt": 1.0 - math.sqrt(x),
            }[wsd_style]
        )
    return low + coeff * (peak - low)


@pytest.mark.parametrize(
    ("extra", "style", "warmup", "wsd", "wsd_style"),
    [
        (["--lr-decay-style", "cosine", "--lr-warmup-iters", "5"], "cosine", 5, 0, ""),
        (["--lr-decay-style", "linear"], "linear", 0, 0, ""),
        (["--lr-decay-style", "inverse-square-root"], "inverse-square-root", 0, 0, ""),
        (
            ["--lr-decay-style", "inverse-square-root", "--lr-warmup-iters", "4"],
            "inverse-square-root",
            4,
            0,
            "",
        ),
        *(
            (
                ["--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "20", "--lr-wsd-decay-style", s],
                "wsd",
                0,
                20,
                s,
            )
            for s in ("exponential", "linear", "cosine", "minus_sqrt")
        ),
    ],
)
def test_lr_follows_megatron_and_holds_min_lr_after_the_decay(
    extra: list[str], style: str, warmup: int, wsd: int, wsd_style: str
) -> None:
    base = "--num-layers 2 --hidden-size 256 --num-attention-heads 4 --max-position-embeddings 512"
    args = [*base.split(), "--micro-batch-size", "2", "--global-batch-size", "16", "--train-iters", "100"]
    args += ["--lr", "3e-4", "--min-lr", "3e-5", "--lr-decay-iters", "60", *extra]
    run, hints = run_of("pretrain_gpt.py", args, 4)
    job = run.job
    assert hints.script_exit is None and job.decay_end == 60 and job.lr_schedule == style
    for i in (1, 2, 4, 5, 9, 30, 45, 50, 59, 60, 61, 100):
        want = _megatron_lr(
            i,
            16,
            style=style,
            peak=3e-4,
            low=3e-5,
            warmup=warmup,
            decay=60,
            wsd=wsd,
            wsd_style=wsd_style or "exponential",
        )
        assert schedule.lr(job, i) == pytest.approx(want, rel=1e-12, abs=1e-18), i
    # The closed-form areas the loss curve integrates agree with summing the printed lrs.
    for i in (3, 40, 60, 80):
        s1, s2 = schedule.lr_area(job, i)
        lrs = [schedule.lr(job, k) / job.lr for k in range(1, i + 1)]
        after = lrs[max(job.warmup_steps, 1) - 1 :]
        assert s1 == pytest.approx(sum(lrs), rel=2e-3)
        assert s2 == pytest.approx(sum(1.0 - x for x in after), rel=2e-3, abs=1e-2)


def test_heads_tensor_parallel_does_not_divide_die_in_transformer_config() -> None:
    base = "--num-layers 2 --hidden-size 768 --num-attention-heads 12 --max-position-embeddings 512"
    args = [
        *base.split(),
        "--micro-batch-size",
        "1",
        "--train-iters",
        "10",
        "--tensor-model-parallel-size",
        "8",
    ]
    run, hints = run_of("/opt/Megatron-LM/pretrain_gpt.py", args, 8)
    assert hints.script_exit is not None and run.job.world_size == 8
    text, code = hints.script_exit
    lines = pytrace.with_rank(text, 3).splitlines()
    assert code == 1 and all(x.startswith("[rank3]: ") for x in lines)
    assert lines[-1] == (
        "[rank3]: ValueError: num_attention_heads (12) must be a multiple of tensor_model_parallel_size (8)."
    )
    assert lines[-3:-1] == [
        '[rank3]:   File "/opt/Megatron-LM/megatron/core/transformer/transformer_config.py", line 744, in '
        "__post_init__",
        "[rank3]:     raise ValueError(",
    ]
    assert '[rank3]:   File "/opt/Megatron-LM/gpt_builders.py", line 29, in gpt_builder' in lines
    # Megatron's layout line and the dtype are out on rank 0's stdout by then.
    assert pytrace.stdout_for(hints.script_stdout, 3, 3, "2.13.0") == ""  # rank 0 prints them
    assert pytrace.stdout_for(hints.script_stdout, 0, 0, "2.13.0").startswith(
        "using world size: 8, data-parallel size: 1, context-parallel size: 1"
    )


def test_query_groups_are_checked_after_the_heads() -> None:
    base = "--num-layers 2 --hidden-size 1024 --num-attention-heads 16 --max-position-embeddings 512"
    args = [
        *base.split(),
        "--group-query-attention",
        "--num-query-groups",
        "2",
        "--tensor-model-parallel-size",
        "4",
    ]
    _, hints = run_of("pretrain_gpt.py", [*args, "--micro-batch-size", "1", "--train-iters", "10"], 4)
    assert hints.script_exit is not None
    assert (
        hints.script_exit[0]
        .splitlines()[-1]
        .endswith("ValueError: num_query_groups (2) must be a multiple of tensor_model_parallel_size (4).")
    )


@pytest.mark.parametrize(
    ("extra", "nproc", "stdout"),
    [
        # validate_args' world-size check comes before its layout line: nothing printed.
        (["--tensor-model-parallel-size", "4"], 6, ""),
        # The micro-batch calculator runs after validate_args printed the layout and the dtype.
        (
            ["--global-batch-size", "6", "--fp16"],
            4,
            "using world size: 4, data-parallel size: 4, context-parallel size: 1, hierarchical "
            "context-parallel sizes: None, tensor-model-parallel size: 1, pipeline-model-parallel size: 1\n"
            "using torch.float16 for parameters ...\n",
        ),
    ],
)
def test_rank0_stdout_before_the_refusal(extra: list[str], nproc: int, stdout: str) -> None:
    base = "--num-layers 2 --hidden-size 256 --num-attention-heads 4 --max-position-embeddings 512"
    _, hints = run_of(
        "pretrain_gpt.py", [*base.split(), "--micro-batch-size", "1", "--train-iters", "9", *extra], nproc
    )
    assert hints.script_exit is not None
    assert pytrace.stdout_for(hints.script_stdout, 0, 0, "2.13.0") == stdout
    assert pytrace.stdout_for(hints.script_stdout, 1, 1, "2.13.0") == ""  # Megatron prints from rank 0


def test_die_at_start_prints_rank0_stdout_first(capsys: pytest.CaptureFixture[str]) -> None:
    printed = f"{pytrace.MASTER_LINE}layout\n"
    assert die_at_start("oops\n", 1, rank=0, stdout=pytrace.stdout_for(printed, 0, 0, "2.13.0")) == 1
    assert capsys.readouterr() == ("layout\n", "oops\n")
    oops = f"[rank{pytrace.RANK_SLOT}]: oops\n"
    assert die_at_start(oops, 1, rank=2, stdout=pytrace.stdout_for(printed, 2, 2, "2.13.0")) == 1
    assert capsys.readouterr() == ("", "[rank2]: oops\n")


def test_expert_grid_that_does_not_tile_the_world_dies_in_initialize_model_parallel() -> None:
    # The Mixtral script on PP4: ETP (= TP 1) x EP 8 x PP 4 = 32 ranks per expert grid slice, 8 GPUs.
    nproc, script, args = script_command("mixtral_8x7b.sh")
    _, hints = run_of(script, [*args, "--pipeline-model-parallel-size", "4"], nproc)
    assert hints.script_exit is not None
    text = pytrace.with_rank(hints.script_exit[0], 5)
    lines = text.splitlines()
    assert lines[-1] == (
        "[rank5]: RuntimeError: world_size (8) is not divisible by expert_tensor_model_pipeline_parallel "
        f"size ({1 * 8 * 4})"
    )
    # After init_process_group (torch's excepthook prefixes every line), from _initialize_distributed.
    assert all(x.startswith("[rank5]: ") for x in lines)
    where = Path("megatron/core/parallel_state.py").absolute()
    assert lines[-3:-1] == [
        f'[rank5]:   File "{where}", line 750, in initialize_model_parallel',
        "[rank5]:     raise RuntimeError(",
    ]
    assert "    mpu.initialize_model_parallel(" in text and "in finish_mpu_init" in text


def test_experts_borrow_tensor_ranks_with_expert_tensor_parallel_one() -> None:
    # TP4 x EP8 on 8 GPUs is valid with --expert-tensor-parallel-size 1 (the expert grid 1 x 8 x 1 x 1).
    nproc, script, args = script_command("mixtral_8x7b.sh")
    extra = ["--tensor-model-parallel-size", "4", "--expert-tensor-parallel-size", "1", "--sequence-parallel"]
    run, hints = run_of(script, [*args, *extra], nproc)
    assert hints.script_exit is None
    job = run.job
    assert (job.tp, job.dp, job.ep, job.expert_tp, job.expert_dp) == (4, 2, 8, 1, 1)
    # Each rank holds one whole expert (3 matrices of 4096 x 14336) of each of the 32 layers.
    assert memory.stage_params(job, 0)[1] == 32 * 3 * 4096 * 14336
    ops = {(op.group, op.op): op.ranks for op in comm_plan(job).ops}
    assert ops[("ep", "all_to_all")] == 8 and ("edp", "all_reduce") not in ops
    # Without it the experts are split over TP's 4 ranks too: 4 x 8 x 1 does not tile 8 GPUs.
    _, refused = run_of(script, [*args, "--tensor-model-parallel-size", "4"], nproc)
    assert refused.script_exit is not None
    assert refused.script_exit[0].endswith("expert_tensor_model_pipeline_parallel size (32)\n")


@pytest.mark.parametrize(("nproc", "last"), [(6, "AssertionError: world size (6) is not divisible"), (8, "")])
def test_world_size_is_checked_before_the_model_arguments(nproc: int, last: str) -> None:
    # validate_args asserts the world size first, then --save's --save-interval.
    base = "--num-layers 2 --hidden-size 256 --num-attention-heads 4 --max-position-embeddings 512 --save ck"
    args = [*base.split(), "--micro-batch-size", "1", "--train-iters", "9"]
    args += ["--tensor-model-parallel-size", "4"]
    _, hints = run_of("pretrain_gpt.py", args, nproc)
    assert hints.script_exit is not None
    final = hints.script_exit[0].splitlines()[-1]
    assert final.startswith(last) if last else final == "AssertionError"
    assert ("assert args.save_interval is not None" in hints.script_exit[0]) == (not last)


def launch_of(script: str, args: list[str], nproc: int, *, use_env: bool = False) -> Hints:
    """build_run's hints for `python -m torch.distributed.launch` of `script` (without --use-env: the workers
    get --local-rank=N first)."""
    launch = ["--nproc_per_node", str(nproc), *(["--use-env"] if use_env else []), script, *args]
    cmd = parse_command_line(launch, {}, launch=True)
    bundle = presets.resolve("llama3-8b", cmd.fake.gpu, cmd.fake.cluster)
    return build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=False)[1]


LEGACY_ARGS = str.split(
    "--num-layers 2 --hidden-size 256 --num-attention-heads 4 --seq-length 128 --max-position-embeddings 128 "
    "--micro-batch-size 1 --global-batch-size 4 --train-iters 10 --lr 1e-4 --checkpoint-activations --fp16"
)


@pytest.mark.parametrize(("extra", "option"), [([], "--DDP-impl"), (["--deepspeed"], "--deepspeed_config")])
def test_launch_passes_local_rank_which_legacy_parsers_refuse(
    monkeypatch: pytest.MonkeyPatch, extra: list[str], option: str
) -> None:
    # 2021-22 Megatron-LM and Megatron-DeepSpeed know only --local_rank: argparse prints its usage (wrapped
    # at COLUMNS - 2) and the error, exit 2, on every rank with that rank's --local-rank=N.
    monkeypatch.setenv("COLUMNS", "100")
    hints = launch_of("examples/../pretrain_gpt.py", [*LEGACY_ARGS, *extra], 2)
    assert hints.script_exit is not None
    text, code = hints.script_exit
    lines = pytrace.with_rank(text, 1).replace(pytrace.LOCAL_RANK_SLOT, "1").splitlines()
    assert code == 2 and lines[0].startswith("usage: pretrain_gpt.py [-h] [--num-layers NUM_LAYERS] ")
    assert lines[-1] == "pretrain_gpt.py: error: unrecognized arguments: --local-rank=1"
    indent = " " * len("usage: pretrain_gpt.py ")
    # Wrapped at 98 columns, but for one option too long for a line of its own.
    assert all(x.startswith(indent + "[") and (len(x) <= 98 or x.count(" [-") == 1) for x in lines[1:-1])
    # Each parser's own options: the 2021 code's --DDP-impl, DeepSpeed's config arguments.
    assert f"[{option} " in text and "[--local_rank LOCAL_RANK]" in text
    # The same script with --use-env, or under torchrun, runs.
    assert launch_of("pretrain_gpt.py", [*LEGACY_ARGS, *extra], 2, use_env=True).script_exit is None


def test_launch_local_rank_is_accepted_by_megatron_core() -> None:
    # Megatron-core reads LOCAL_RANK from the environment: a core script under launch is not refused by it.
    args = [a for a in LEGACY_ARGS if a != "--checkpoint-activations"]
    assert launch_of("pretrain_gpt.py", args, 2).script_exit is None


def test_arguments_block_echoes_the_scripts_own_values() -> None:
    nproc, script, args = script_command("llama3_8b.sh")
    run, hints = run_of(script, [*args, "--init-method-std", "0.0134", "--adam-eps", "1.0e-8"], nproc)
    rows = dict(argument_rows(run, 1234, "ck", settings=hints.settings))
    # As given (argparse's float() then str()), else Megatron's defaults (arguments.py): Adam's beta2 0.999,
    # weight decay 0.01, dropout 0.1.
    assert (rows["init_method_std"], rows["adam_eps"], rows["rotary_base"]) == ("0.0134", "1e-08", "500000")
    assert (rows["adam_beta2"], rows["weight_decay"], rows["attention_dropout"]) == ("0.999", "0.01", "0.1")
    assert rows["tokenizer_type"] == "HuggingFaceTokenizer"
    assert rows["tokenizer_model"] == "/models/Meta-Llama-3-8B"
    assert (rows["position_embedding_type"], rows["normalization"]) == ("rope", "RMSNorm")
    assert rows["swiglu"] == "True"
    assert (rows["vocab_size"], rows["tensorboard_dir"], rows["save_interval"]) == ("None", "None", None)
    # A run given in samples: validate_args leaves train_iters None and the samples as given.
    assert (rows["train_iters"], rows["train_samples"], rows["lr_warmup_samples"]) == ("None", "1280", "128")
    assert (rows["lr_warmup_iters"], rows["lr_decay_samples"]) == ("0", "None")
    # The 2021-22 code's block has none of the arguments Megatron gained later, and the same given values.
    legacy = dict(argument_rows(run, 1234, "ck", settings=hints.settings, legacy=True))
    assert not megatron_args.MODERN_ONLY & set(legacy) and legacy["init_method_std"] == "0.0134"


def test_default_model_is_named_only_for_a_job_that_runs() -> None:
    """A script without model arguments gets one launcher notice naming the stand-in; a script whose ranks die
    at start (TP 8 x PP 16 on 8 GPUs, examples/gpt3's grid) builds no model, so no notice says one stands in
    for the 96-layer model its arguments name."""
    _, bare = run_of("pretrain_gpt.py", ["--micro-batch-size", "1", "--train-iters", "10"], 8)
    (notice,) = bare.notices
    assert "simulating" in notice or "--num-layers" in notice
    grid = "--tensor-model-parallel-size 8 --pipeline-model-parallel-size 16"
    model = "--num-layers 96 --hidden-size 12288 --num-attention-heads 96 --seq-length 2048"
    args = f"{grid} {model} --max-position-embeddings 2048 --micro-batch-size 1 --train-iters 10".split()
    _, refused = run_of("pretrain_gpt.py", args, 8)
    assert refused.script_exit is not None and "total_model_size=128" in refused.script_exit[0]
    assert not any("simulating" in n for n in refused.notices)


def test_hybrid_rank_holds_its_own_layers_exactly() -> None:
    """The count Megatron prints for rank (0, 0) without TP or PP is the whole hybrid model, to the parameter:
    its layers are blocks of different sizes, not the per-layer mean times the depth."""
    _, script, args = script_command("hybrid_layer_pattern.sh")
    run, _ = run_of(script, args, 1)
    expected = hybrid_params(14, 4, 14, hid=768, heads=12, groups=4)
    dense, expert = memory.stage_params(run.job, 0)
    assert (dense, expert) == (expected, 0.0)
