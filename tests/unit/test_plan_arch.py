"""fakerun.plan.arch: families with exact parameter counts, the designed job, and its launch command."""

from __future__ import annotations

import dataclasses
import math
import re
import shlex

import pytest

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.frameworks import megatron_args
from fakerun.hints import Hints, parse_hints
from fakerun.jobconfig import build_run
from fakerun.plan import arch
from fakerun.presets import ModelSpec
from fakerun.sim import compute, memory
from fakerun.sim.job import JobSpec, make_job

TARGETS = [10 ** (7 + i / 4) for i in range(21)]  # 1e7 .. 1e12, four a decade


def exact_params(m: ModelSpec) -> int:
    """A Llama/Mixtral decoder counted tensor by tensor (no biases, RMSNorm, SwiGLU, untied embeddings)."""
    hd = m.hidden // m.heads
    attention = m.hidden * m.heads * hd * 2 + m.hidden * m.kv_heads * hd * 2  # q, o; k, v
    mlp = 3 * m.hidden * m.ffn_hidden
    router = m.hidden * m.experts if m.experts > 1 else 0
    layer = attention + m.experts * mlp + router + 2 * m.hidden
    return m.layers * layer + 2 * m.vocab * m.hidden + m.hidden


class TestFamilies:
    @pytest.mark.parametrize("family", ["llama", "mixtral"])
    @pytest.mark.parametrize("vocab", [32000, 50257])
    def test_every_target_within_two_percent(self, family: str, vocab: int) -> None:
        """From 1e7 to 1e12 the exact count, tensor by tensor, is within 2% of the target; 12 L d^2 is not."""
        far = 0.0
        for target in TARGETS:
            m = arch.get_family(family).architecture(target, seq_len=2048, vocab=vocab)
            assert exact_params(m) == m.params
            assert abs(m.params / target - 1) <= 0.02, (target, m)
            far = max(far, abs(12 * m.layers * m.hidden**2 / target - 1))
        assert far > 0.5  # the approximation the issue warns of really is far off somewhere in the range

    def test_llama_shapes_follow_llama_3(self) -> None:
        """head_dim 128 and 8 KV heads at scale; the FFN is Meta's 1.3 x 8d/3 rounding (8B: 14336 at 4096)."""
        m = arch.get_family("llama").architecture(8.0e9, seq_len=8192, vocab=128256)
        assert m.hidden // m.heads == 128 and m.kv_heads == 8
        ffn = {4096: 14336, 8192: 28672}.get(m.hidden)
        if ffn is not None:
            assert m.ffn_hidden == ffn
        multiple = 256 if m.hidden < 4096 else 1024 if m.hidden < 8192 else 4096
        assert m.ffn_hidden % multiple == 0 and m.ffn_hidden >= 1.3 * 8 * m.hidden / 3 - 1
        assert 64 <= m.hidden / m.layers <= 256
        assert m.vocab == 128256 and m.seq_len == 8192

    def test_mixtral_counts_total_and_active(self) -> None:
        """The target is the total; active counts the top-2 of 8 experts (Mixtral 8x7B: 46.7B / 12.9B)."""
        m = arch.get_family("mixtral").architecture(46.7e9, seq_len=4096, vocab=32000)
        assert (m.experts, m.top_k) == (8, 2)
        mlp = 3 * m.hidden * m.ffn_hidden
        assert m.params - m.active_params == m.layers * 6 * mlp
        assert abs(m.params / 46.7e9 - 1) <= 0.02

    def test_vocab_is_padded_to_128(self) -> None:
        """GPT-2's 50257 trains as 50304 (Megatron's and nanoGPT's padding)."""
        m = arch.get_family("llama").architecture(1e9, seq_len=1024, vocab=50257)
        assert m.vocab == 50304

    def test_impossible_target_is_one_line(self) -> None:
        """1e7 parameters with a 128k vocabulary: the embeddings alone are larger."""
        with pytest.raises(ValueError, match="embeddings take") as err:
            arch.get_family("llama").architecture(1e7, seq_len=2048, vocab=128256)
        assert "\n" not in str(err.value)

    def test_register_family(self) -> None:
        """A user's family is found by name and designed like a shipped one."""

        class Tiny:
            def architecture(self, target_params: float, *, seq_len: int, vocab: int) -> ModelSpec:
                return presets.load_model("llama3.2-1b")

        arch.register_family("tiny-test", Tiny())
        try:
            assert arch.get_family("tiny-test").architecture(1e9, seq_len=1, vocab=1).name == "llama3.2-1b"
        finally:
            del arch.FAMILIES["tiny-test"]
        with pytest.raises(ValueError, match="choose from: llama, mixtral"):
            arch.get_family("tiny-test")


class TestFits:
    def test_deepseek_batch_and_lr(self) -> None:
        """The published constants at C = 1e20: B = 0.2920 x 1e20^0.3271 tokens, lr = 0.3118 x 1e20^-0.125."""
        assert arch.batch_tokens(1e20) == pytest.approx(0.2920 * 10 ** (20 * 0.3271))
        assert arch.peak_lr(1e20) == pytest.approx(0.3118 * 10 ** (-20 * 0.125))
        # Larger budgets: larger batches, lower learning rates.
        assert arch.batch_tokens(1e24) > arch.batch_tokens(1e20)
        assert arch.peak_lr(1e24) < arch.peak_lr(1e20)


@pytest.fixture(scope="module")
def dense() -> arch.Design:
    model = arch.get_family("llama").architecture(7e9, seq_len=4096, vocab=128256)
    return arch.design(model, 1.4e11, cluster="dgx-h100", gpus=64, seq_len=4096, price_per_gpu_hour=2.0)


@pytest.fixture(scope="module")
def moe() -> arch.Design:
    model = arch.get_family("mixtral").architecture(2e10, seq_len=4096, vocab=32000)
    return arch.design(model, 2e11, cluster="dgx-h100", gpus=64, seq_len=4096)


class TestDesign:
    def test_fits_and_is_the_fastest_that_fits(self, dense: arch.Design) -> None:
        """The chosen job fits; no other layout of the same knobs that fits is faster."""
        job = dense.job
        assert memory.peak_memory(job)[1].fits
        assert dense.memory_gib <= job.gpu.memory_gib
        b = presets.resolve(job.model, cluster="dgx-h100")
        for tp in (1, 2, 4, 8):
            for rc in ("none", "selective", "full"):
                unit = 64 // tp * job.micro_batch
                gbs = max(1, round(dense.batch_tokens_fit / 4096 / unit)) * unit
                try:
                    other = make_job(
                        job.model, b.cluster, b.storage, nnodes=8, nproc_per_node=8, tp=tp, pp=1,
                        micro_batch=job.micro_batch, global_batch=gbs, seq_len=4096, zero_stage=1,
                        recompute=rc, total_steps=math.ceil(dense.tokens / (gbs * 4096)),
                    )  # fmt: skip
                except ValueError:
                    continue
                assert compute.expected_step_time(other) * other.total_steps >= dense.days * 86400 * (
                    1 - 1e-9
                )

    def test_batch_is_the_fit_rounded_to_the_layout(self, dense: arch.Design) -> None:
        """The global batch is a multiple of dp x micro batch x seq nearest DeepSeek's B for C = M D."""
        job = dense.job
        m = job.model
        flops_per_token = 6 * (m.params - 2 * m.vocab * m.hidden) + 12 * m.layers * m.hidden * 4096
        c = flops_per_token * dense.tokens
        assert dense.compute == pytest.approx(c)
        unit = job.dp * job.micro_batch
        assert job.global_batch % unit == 0
        want = 0.2920 * c**0.3271 / 4096
        assert abs(job.global_batch - want) <= unit / 2 + 1e-9 or job.global_batch == unit
        assert job.lr == pytest.approx(0.3118 * c**-0.125, rel=5e-3)
        assert job.min_lr == pytest.approx(job.lr / 10, rel=5e-3)

    def test_time_energy_cost(self, dense: arch.Design) -> None:
        """Days from steps x step time; GPU-hours, energy at TDP x node overhead, and cost from them."""
        job = dense.job
        assert job.total_steps == math.ceil(dense.tokens / job.tokens_per_step)
        assert dense.days == pytest.approx(job.total_steps * dense.step_seconds / 86400)
        assert dense.gpu_hours == pytest.approx(64 * dense.days * 24)
        assert dense.energy_kwh == pytest.approx(dense.gpu_hours * 0.700 * 10.2 / 5.6)
        assert dense.cost == pytest.approx(dense.gpu_hours * 2.0)
        # 6 N D over GPUs x seconds x peak is the MFU the step time implies.
        mfu = dense.model_flops / (64 * dense.days * 86400 * job.gpu.peak_flops)
        assert mfu == pytest.approx(dense.mfu, rel=0.01)
        # bf16 weights (2 bytes) + fp32 master weights and Adam's m and v (12) per parameter
        assert dense.checkpoint_bytes == 14 * job.model.params

    def test_gpus_none_picks_the_fewest_within_the_deadline(self) -> None:
        """The fewest power-of-two GPU count finishing within max_days; half of it would not."""
        model = arch.get_family("llama").architecture(1e9, seq_len=2048, vocab=32000)
        d = arch.design(model, 2e11, cluster="dgx-h100", gpus=None, seq_len=2048, max_days=2.0)
        assert d.days <= 2.0
        half = arch.design(model, 2e11, cluster="dgx-h100", gpus=d.gpus // 2, seq_len=2048)
        assert half.days > 2.0

    def test_moe_uses_expert_parallelism_that_divides(self, moe: arch.Design) -> None:
        job = moe.job
        assert job.model.experts % job.ep == 0 and job.dp % job.ep == 0
        assert memory.peak_memory(job)[1].fits

    def test_bad_inputs(self) -> None:
        model = arch.get_family("llama").architecture(1e9, seq_len=2048, vocab=32000)
        with pytest.raises(ValueError, match="tokens"):
            arch.design(model, -1, cluster="dgx-h100", gpus=8, seq_len=2048)
        with pytest.raises(ValueError, match="whole number"):
            arch.design(model, 1e10, cluster="dgx-h100", gpus=12, seq_len=2048)
        with pytest.raises(presets.PresetError):
            arch.design(model, 1e10, cluster="no-such-cluster", gpus=8, seq_len=2048)
        big = arch.get_family("llama").architecture(1e12, seq_len=2048, vocab=32000)
        with pytest.raises(ValueError, match="fits in memory on no layout"):
            arch.design(big, 1e12, cluster="dgx-h100", gpus=8, seq_len=2048)


def read_back(argv: list[str]) -> tuple[Hints, JobSpec]:
    """The job fakerun builds from a launch command line, as main does (presets from --fake-*)."""
    assert argv[0] == "fakerun"
    cmd = parse_command_line(argv[1:], {})
    bundle = presets.resolve(cmd.fake.model or "llama3-8b", cmd.fake.gpu, cmd.fake.cluster)
    nnodes, npn = int(cmd.torchrun.nnodes), int(cmd.torchrun.nproc_per_node)
    hints = parse_hints(cmd.torchrun.training_script, cmd.torchrun.training_script_args)
    run, _ = build_run(cmd, bundle, nnodes=nnodes, nproc_per_node=npn, model_given=False)
    return hints, run.job


ARCH = ("layers", "hidden", "ffn_hidden", "heads", "kv_heads", "vocab", "experts", "top_k", "params")
JOB = ("world_size", "tp", "pp", "dp", "ep", "micro_batch", "global_batch", "seq_len", "lr", "min_lr")
JOB2 = ("warmup_steps", "total_steps", "zero_stage", "recompute", "lr_schedule", "state_layout", "nnodes")


class TestLaunch:
    @pytest.mark.parametrize("which", ["dense", "moe"])
    def test_megatron_reads_back_the_same_job(self, which: str, request: pytest.FixtureRequest) -> None:
        """hints.parse_hints + jobconfig.build_run on the argv give the planned model and job exactly."""
        d: arch.Design = request.getfixturevalue(which)
        hints, job = read_back(arch.launch_command(d))
        assert hints.style == "megatron"
        for key in ARCH:
            assert getattr(job.model, key) == getattr(d.model, key), key
        assert job.model.active_params == d.model.active_params
        for key in (*JOB, *JOB2):
            assert getattr(job, key) == getattr(d.job, key), key
        assert job.oom_at_step is None

    def test_vocab_padding_survives_any_tp(self) -> None:
        """Megatron pads NullTokenizer's vocab + 1 to 128 x tp; the argv keeps the planned table at tp 8."""
        model = arch.get_family("llama").architecture(3e10, seq_len=2048, vocab=128256)
        d = arch.design(model, 1e11, cluster="dgx-h100", gpus=64, seq_len=2048)
        b = presets.resolve(model, cluster="dgx-h100")
        for tp in (1, 2, 4, 8):
            job = make_job(model, b.cluster, b.storage, nnodes=8, tp=tp, pp=1, check_memory=False)
            opts = megatron_args.scan(arch.launch_command(dataclasses.replace(d, job=job))[8:])
            vocab, _ = megatron_args.tokenizer_vocab(opts, "GPT2BPETokenizer")
            divisible = int(opts.get("make_vocab_size_divisible_by") or 128)
            assert megatron_args.padded_vocab(vocab, tp, divisible) == model.vocab == 128256

    def test_torchtitan_refuses_in_one_line(self, dense: arch.Design) -> None:
        with pytest.raises(ValueError, match="torchtitan has no arguments"):
            arch.launch_command(dense, "torchtitan")

    def test_sbatch_runs_the_same_command_under_srun(self, dense: arch.Design) -> None:
        """#SBATCH nodes and GPUs of the design; srun's fakerun line is the launch command with SLURM's
        node count and a c10d rendezvous on the first node."""
        text = arch.sbatch_script(dense, job_name="plan-test")
        assert re.search(r"^#SBATCH --nodes=8$", text, re.M)
        assert re.search(r"^#SBATCH --gpus-per-node=8$", text, re.M)
        assert re.search(r"^#SBATCH --ntasks-per-node=1$", text, re.M)
        minutes = math.ceil(dense.days * 1.1 * 1440)
        time = re.search(r"^#SBATCH --time=(\d+)-(\d\d):(\d\d):00$", text, re.M)
        assert time is not None
        assert int(time[1]) * 1440 + int(time[2]) * 60 + int(time[3]) == minutes
        line = text.split("srun fakerun", 1)[1].replace("\\\n", " ")
        words = shlex.split(line.replace('"$SLURM_NNODES"', "8").replace('"$SLURM_JOB_ID"', "42"))
        words = [w.replace("$head_node_ip:$MASTER_PORT", "10.0.0.1:29500") for w in words]
        launch = arch.launch_command(dense)
        assert words[words.index("--fake-cluster") :] == launch[launch.index("--fake-cluster") :]
        _, job = read_back(["fakerun", *words])
        assert (job.nnodes, job.global_batch, job.model.params) == (
            8,
            dense.job.global_batch,
            dense.model.params,
        )
