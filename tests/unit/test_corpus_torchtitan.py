"""torchtitan's launch forms read as torchtitan reads them: TOML configs of tests/corpus/torchtitan, the
--module/--config registry, flavors at their exact size, its defaults and its refusals on the ranks."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest

from fakerun import presets
from fakerun.cli import parse_command_line
from fakerun.dialects import events as ev
from fakerun.dialects import files
from fakerun.dialects.base import Line, Seat
from fakerun.dialects.titan import TitanDialect
from fakerun.frameworks.pytrace import with_rank
from fakerun.hints import Hints, parse_hints
from fakerun.jobconfig import build_run
from fakerun.sim import memory, schedule
from fakerun.sim.job import JobSpec
from fakerun.sim.memory import GIB
from fakerun.sim.run import RunPlan

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "torchtitan"
SCRIPT = ["-m", "torchtitan.train"]


def llama_ffn(dim: int, multiple_of: int, multiplier: float | None) -> int:
    """torchtitan's FeedForward hidden size (llama3/model/model.py), written out independently."""
    hidden = int(2 * 4 * dim / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return -(-hidden // multiple_of) * multiple_of


def dense_params(dim: int, layers: int, heads: int, kv_heads: int, vocab: int, ffn: int) -> int:
    """nn.Module.parameters() of a Llama-style decoder: wq wk wv wo, w1 w2 w3, two norms a layer, untied."""
    head = dim // heads
    attn = 2 * dim * dim + 2 * dim * kv_heads * head
    return layers * (attn + 3 * dim * ffn + 2 * dim) + 2 * vocab * dim + dim


def run_of(args: list[str], nproc: int = 2) -> tuple[RunPlan, Hints]:
    """build_run for `torchrun --nproc-per-node nproc -m torchtitan.train ARGS` (no process is started)."""
    cmd = parse_command_line([f"--nproc-per-node={nproc}", *SCRIPT, *args], {})
    bundle = presets.resolve("llama3-8b")
    return build_run(cmd, bundle, nnodes=1, nproc_per_node=nproc, model_given=False)


def exit_text(hints: Hints, rank: int = 0) -> str:
    """What every rank writes before it dies (its rank in the `[rankN]: ` prefix)."""
    assert hints.script_exit is not None
    return with_rank(hints.script_exit[0], rank)


class TestFlavors:
    """Each flavor at the size torchtitan's model builds."""

    def test_llama3_debugmodel(self) -> None:
        """6.2M parameters: dim 256, 6 layers, 16 heads, vocab 2048, FFN 768 (llama3/__init__.py)."""
        hints = parse_hints("torchtitan.train", ["--model.name", "llama3", "--model.flavor", "debugmodel"])
        assert hints.model is not None
        assert hints.model.params == dense_params(256, 6, 16, 16, 2048, llama_ffn(256, 256, None))
        assert llama_ffn(256, 256, None) == 768

    def test_torchtitan_default_is_debugmodel(self) -> None:
        """No model arguments: JobConfig's llama3 debugmodel, not a preset picked by fakerun."""
        hints = parse_hints("torchtitan.train", ["--training.steps", "5"])
        assert hints.model_name == "llama3-debugmodel"
        assert hints.model is not None and hints.model.params < 10**7

    @pytest.mark.parametrize(
        ("flavor", "published"),
        [("8B", 8_030_261_248), ("70B", 70_553_706_496), ("405B", 405_853_388_800)],
    )
    def test_llama3_published(self, flavor: str, published: int) -> None:
        """Llama 3.1's published parameter counts (the Hugging Face safetensors' totals)."""
        hints = parse_hints("torchtitan.train", ["--model.name", "llama3", "--model.flavor", flavor])
        assert hints.model is not None and hints.model.params == published

    def test_qwen3_tied_head_dim_and_qk_norm(self) -> None:
        """Qwen3 0.6B: head_dim 128 though dim/heads is 64, q/k norms, tied embeddings: 596,049,920."""
        dim, layers, heads, kv, vocab, ffn, hd = 1024, 28, 16, 8, 151936, 3072, 128
        attn = dim * heads * hd * 2 + 2 * dim * kv * hd + 2 * hd
        expected = layers * (attn + 3 * dim * ffn + 2 * dim) + vocab * dim + dim
        hints = parse_hints("torchtitan.train", ["--job.config_file", str(CORPUS / "qwen3_0.6b.toml")])
        assert hints.model is not None and hints.model.params == expected == 596_049_920

    def test_deepseek_v3_671b(self) -> None:
        """DeepSeek V3's published 671,026,419,200 weights less the 58 MoE layers' 256 expert biases, which
        torchtitan keeps as buffers, not parameters."""
        hints = parse_hints("torchtitan.train", ["--model.name", "deepseek_v3", "--model.flavor", "671B"])
        assert hints.model is not None
        assert hints.model.params == 671_026_419_200 - 58 * 256

    def test_llama4_debugmodel_interleaved_moe(self) -> None:
        """Llama 4's debugmodel: every 2nd layer MoE (8 experts of 512, one shared, top-1), the rest dense."""
        dim, vocab = 256, 2048
        attn, norms = 4 * dim * dim, 2 * dim
        dense_ffn = llama_ffn(dim, 256, None)
        # (2/3 of 4 x dim) / (top_k 1 + 1 shared), rounded up to 256
        expert = -(-int(int(2 * 4 * dim / 3) / 2) // 256) * 256
        moe = 8 * 3 * dim * expert + 3 * dim * expert + dim * 8
        expected = 3 * (attn + norms + 3 * dim * dense_ffn) + 3 * (attn + norms + moe) + 2 * vocab * dim + dim
        hints = parse_hints("torchtitan.train", ["--job.config_file", str(CORPUS / "llama4_debug.toml")])
        assert hints.model is not None and hints.model.params == expected
        active = expected - 7 * 3 * dim * expert * 3
        assert hints.model.active_params == active

    def test_unknown_flavor_is_the_ranks_key_error(self) -> None:
        """train.py's model_args[flavor] lookup: KeyError on every rank, prefixed by torch's excepthook."""
        hints = parse_hints("torchtitan.train", ["--model.name", "llama3", "--model.flavor", "9B"])
        text = exit_text(hints, rank=1)
        assert hints.script_exit is not None and hints.script_exit[1] == 1
        assert text.endswith("[rank1]: KeyError: '9B'\n")
        assert "model_args = self.train_spec.model_args[job_config.model.flavor]" in text

    def test_unknown_model_is_train_spec_error(self) -> None:
        """get_train_spec's ValueError for a name no TrainSpec has."""
        text = exit_text(parse_hints("torchtitan.train", ["--model.name", "llama5"]))
        assert text.endswith("[rank0]: ValueError: TrainSpec llama5 is not registered.\n")


class TestConfigFile:
    """A TOML config as ConfigManager reads it, the command line winning."""

    def test_llama3_debug_batch_schedule_switches(self) -> None:
        """local 4 x dp 2 x accumulation 2 = global 16; warmup, linear decay to min_lr_factor; saves on."""
        config = str(CORPUS / "llama3_debug.toml")
        run, hints = run_of(["--job.config_file", config])
        job = run.job
        assert (job.micro_batch, job.global_batch, job.grad_accum, job.dp) == (4, 16, 16 // (4 * 2), 2)
        assert (job.seq_len, job.total_steps, job.warmup_steps) == (1024, 12, 2)
        assert job.min_lr == pytest.approx(8e-4 * 0.1)
        # linear_warmup_stable_decay: 2 warmup steps, decay round(12 x 0.8) = 10 steps, stable 12 + 1 - 2 - 10
        # = 1; optimizer step s runs at LambdaLR's index s - 1; linear decay scaled to [0.1, 1].
        factors = {1: 1 / 2, 2: 2 / 2, 3: 1.0, 4: 0.1 + 0.9 * (1 - 1 / 10), 12: 0.1 + 0.9 * (1 - 9 / 10)}
        for step, factor in factors.items():
            assert schedule.lr(job, step) == pytest.approx(8e-4 * factor), step
        assert run.saves and run.save_interval == 3
        assert run.eval_interval == 0  # validation.enable = false, whatever its freq
        assert hints.settings["checkpoint.folder"] == "ckpt"

    def test_command_line_overrides_file(self) -> None:
        """`--training.steps 4 --checkpoint.enable false`: the file's values give way."""
        config = str(CORPUS / "llama3_debug.toml")
        run, _ = run_of(
            ["--job.config_file", config, "--training.steps", "4", "--checkpoint.enable", "false"]
        )
        assert run.job.total_steps == 4 and not run.saves

    def test_global_batch_default_is_local_times_dp(self) -> None:
        """global_batch_size -1: one micro batch per rank per step."""
        run, _ = run_of(["--job.config_file", str(CORPUS / "qwen3_0.6b.toml")], nproc=4)
        assert (run.job.global_batch, run.job.grad_accum) == (4 * 4, 1)
        # 20 warmup steps, then cosine over the other 180 (no decay_ratio) after one stable step, to 0.
        peak = run.job.lr
        for step, factor in {
            21: 1.0,
            22: 0.5 * (1 + math.cos(math.pi / 180)),
            111: 0.5,
            200: 0.5 * (1 + math.cos(math.pi * 179 / 180)),
        }.items():
            assert schedule.lr(run.job, step) == pytest.approx(peak * factor), step

    def test_missing_config_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """run_train.sh's default path outside a checkout: FileNotFoundError, before any process group."""
        monkeypatch.chdir(tmp_path)
        path = "./torchtitan/models/llama3/train_configs/debug_model.toml"
        text = exit_text(parse_hints("torchtitan.train", ["--job.config_file", path]))
        assert text.endswith(f"FileNotFoundError: [Errno 2] No such file or directory: '{path}'\n")
        assert not text.startswith("[rank")


class TestRegistry:
    """torchtitan's `--module M --config C` form."""

    def test_llama3_debugmodel(self) -> None:
        """llama3_debugmodel: 8 x 2048 tokens a micro batch, 10 steps, 2 warmup."""
        run, hints = run_of(["--module", "llama3", "--config", "llama3_debugmodel"])
        assert hints.model_name == "llama3-debugmodel"
        assert (run.job.micro_batch, run.job.seq_len, run.job.total_steps, run.job.warmup_steps) == (
            8,
            2048,
            10,
            2,
        )

    def test_llama3_debugmodel_trainer_config(self) -> None:
        """The rest of llama3_debugmodel's Trainer.Config: MetricsProcessor.Config(log_freq=1) logs every
        step; default_adamw(lr=8e-4); SelectiveAC; CheckpointManager(interval=10, last_save_model_only=False)
        but not enabled; Validator.Config(freq=5, steps=10) without enable; the c4_test dataset."""
        run, hints = run_of(["--module", "llama3", "--config", "llama3_debugmodel"])
        assert run.log_interval == 1 and run.job.lr == pytest.approx(8e-4)
        assert run.job.recompute == "op" and run.job.min_lr == 0.0  # SelectiveAC: per-op checkpointing
        assert not run.saves and run.eval_interval == 0
        s = hints.settings
        assert s["checkpoint.last_save_model_only"] == "false" and s["training.dataset"] == "c4_test"
        assert s["profiling.enable_profiling"] == "false" and s["metrics.enable_tensorboard"] == "false"
        # warmup 2, decay round(10 x 0.8) = 8, stable 10 + 1 - 2 - 8 = 1; step s at LambdaLR index s - 1.
        for step, factor in {1: 1 / 2, 2: 1.0, 3: 1.0, 4: 1 - 1 / 8, 10: 1 - 7 / 8}.items():
            assert schedule.lr(run.job, step) == pytest.approx(8e-4 * factor), step

    def test_deepseek_v3_16b_schedule_and_experts(self) -> None:
        """deepseek_v3_16b on 8 GPUs: lr 2.2e-4, the default 200 warmup steps, cosine over round(1000 x 0.8)
        = 800 steps down to min_lr_factor 0.1, expert_parallel_degree 8, log_freq's default 10."""
        run, _ = run_of(["--module", "deepseek_v3", "--config", "deepseek_v3_16b"], nproc=8)
        job = run.job
        assert (job.micro_batch, job.seq_len, job.total_steps, job.warmup_steps, job.ep) == (
            4,
            4096,
            1000,
            200,
            8,
        )
        assert run.log_interval == 10
        stable = 1000 + 1 - 200 - 800
        for step in (1, 200, 201, 500, 1000):
            index = step - 1
            if index < 200:
                factor = (index + 1) / 200
            elif index < 200 + stable:
                factor = 1.0
            else:
                progress = (index + 1 - 200 - stable) / 800
                factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
            assert schedule.lr(job, step) == pytest.approx(2.2e-4 * factor), step

    def test_big_llama3_profiles_and_shards_tensors(self) -> None:
        """llama3_70b: Profiler and TensorBoard on, tensor_parallel_degree 8, FullAC, lr 1.5e-4."""
        hints = parse_hints("torchtitan.train", ["--module", "llama3", "--config", "llama3_70b"])
        assert hints.job["tp"] == 8 and hints.job["recompute"] == "full" and hints.job["lr"] == 1.5e-4
        assert hints.settings["profiling.enable_profiling"] == "true"
        assert hints.settings["metrics.enable_tensorboard"] == "true"

    def test_registry_form_logs_as_its_trainer(self) -> None:
        """trainer.py after 0.2.x: `Building llama3 debugmodel` with no arguments dump, and the token counts
        of its Trainer line (8 x 2048 a DP rank, x 2 ranks a step)."""
        run, hints = run_of(["--module", "llama3", "--config", "llama3_debugmodel"])
        d = TitanDialect(Seat(rank=0, local_rank=0, world_size=2, nproc_per_node=2, hosts=("h",)))
        d.render(
            ev.JobStarted(run=run, first=True, resume=False, settings=tuple(hints.settings.items())), 0.0
        )
        built = ev.ModelBuilt(
            dtype="bf16", params_on_rank=1.0, layers_on_rank=6, pp_rank=0, weights_bytes=1e6
        )
        texts = [o.text.split(" - INFO - ", 1)[-1] for o in d.render(built, 0.0) if isinstance(o, Line)]
        assert texts[0] == "Building llama3 debugmodel"
        assert not any("{" in t or t.startswith('"') for t in texts)
        assert (
            f"Trainer is initialized with {8 * 2048} tokens per DP rank, {8 * 2048 * 2} tokens per train "
            "step, gradient accumulation steps 1, maximum context length 2048, total steps 10 (warmup 2)"
        ) in texts
        # activation_checkpoint.py: f"Applied {type(self).__name__} activation checkpointing to the model"
        assert "Applied SelectiveAC activation checkpointing to the model" in texts

    def test_variant_builds_on_its_base(self) -> None:
        """llama3_debugmodel_float8 starts from llama3_debugmodel's Trainer.Config."""
        hints = parse_hints(
            "torchtitan.train", ["--module", "llama3", "--config", "llama3_debugmodel_float8"]
        )
        assert hints.model_name == "llama3-debugmodel"

    def test_unknown_config_function(self) -> None:
        """ConfigManager._load_config's ValueError, before the process group."""
        text = exit_text(parse_hints("torchtitan.train", ["--module", "qwen3", "--config", "qwen3_7b"]))
        assert (
            "ValueError: Config function 'qwen3_7b' not found in torchtitan.models.qwen3.config_registry"
            in text
        )


def registry_dialect(args: list[str], nproc: int = 2, rank: int = 0) -> TitanDialect:
    """rank's TitanDialect for the job `-m torchtitan.train ARGS`, its JobStarted rendered."""
    run, hints = run_of(args, nproc)
    seat = Seat(rank=rank, local_rank=rank, world_size=nproc, nproc_per_node=nproc, hosts=("h",))
    d = TitanDialect(seat)
    d.render(ev.JobStarted(run=run, first=True, resume=False, settings=tuple(hints.settings.items())), 0.0)
    return d


def texts_of(d: TitanDialect, event: ev.Event, at: float = 0.0) -> list[str]:
    """The dialect's lines for `event`, without torchtitan's `[titan] <time> - root - LEVEL - ` prefix."""
    return [o.text.split(" - ", 3)[-1] for o in d.render(event, at) if isinstance(o, Line)]


BUILT = ev.ModelBuilt(dtype="bf16", params_on_rank=1.0, layers_on_rank=6, pp_rank=0, weights_bytes=1e6)
DEBUG = ["--module", "llama3", "--config", "llama3_debugmodel"]


class TestRegistryPreamble:
    """The registry form's start-up lines are its own sources' (the mirror's HEAD), not 0.2.x's."""

    def test_no_job_or_dataset_lines(self) -> None:
        """train.py main() logs the version and nothing like `Starting job`; the dataloader logs nothing."""
        d = registry_dialect(DEBUG)
        worker = ev.WorkerStarted(host="h", local_rank=0, world_size=2, pid=1)
        # train.py: "torchtitan version: %s (0.0.0 means __version__ is not defined correctly)."
        assert texts_of(d, worker) == [
            "torchtitan version: 0.2.1 (0.0.0 means __version__ is not defined correctly)."
        ]
        assert texts_of(d, ev.DatasetReady(tokens=1, samples=1, epochs=1, steps_per_epoch=1)) == []

    def test_fsdp_mesh_under_spmd_types(self) -> None:
        """2 GPUs, dp_shard 2: parallel_dims.py's mesh line stops at ep, and spmd_types' meshes are batch,
        loss, dp, dp_shard (efsdp, of size 2, is a fake-backend mesh while ep is 1)."""
        lines = texts_of(registry_dialect(DEBUG), ev.ProcessGroupReady(0, 0, 0))
        # f"pp={self.pp}, dp_replicate={self.dp_replicate}, dp_shard={self.dp_shard}, "
        # f"cp={self.cp}, tp={self.tp}, ep={self.ep}"
        assert (
            lines[0]
            == "Building device mesh with parallelism: pp=1, dp_replicate=1, dp_shard=2, cp=1, tp=1, ep=1"
        )
        assert (
            lines[1]
            == "Successfully created meshes with active dimensions: ['batch', 'loss', 'dp', 'dp_shard']"
        )

    def test_hsdp_tp_mesh_is_the_docstring_example(self) -> None:
        """get_all_one_dimensional_meshes' docstring: dp_replicate=2, dp_shard=2, tp=2 on 8 ranks gives
        dict_keys(['batch', 'loss', 'dp_replicate', 'tp', 'dp', 'dp_shard'])."""
        args = [*DEBUG, "--parallelism.data_parallel_replicate_degree", "2"]
        args += ["--parallelism.tensor_parallel_degree", "2"]
        lines = texts_of(registry_dialect(args, nproc=8), ev.ProcessGroupReady(0, 0, 0))
        assert lines[1] == (
            "Successfully created meshes with active dimensions: "
            "['batch', 'loss', 'dp_replicate', 'tp', 'dp', 'dp_shard']"
        )

    @pytest.mark.parametrize(
        ("config", "ep", "nproc", "meshes"),
        [
            # efsdp = dp_shard * cp * tp // ep = 4 // 2 = 2: listed, after ep
            ("deepseek_v3_debugmodel", 2, 4, ["batch", "loss", "ep", "efsdp", "dp", "dp_shard"]),
            # 8 // 8 = 1: not listed
            ("deepseek_v3_16b", 8, 8, ["batch", "loss", "ep", "dp", "dp_shard"]),
        ],
    )
    def test_expert_meshes(self, config: str, ep: int, nproc: int, meshes: list[str]) -> None:
        """_mesh_exist keeps efsdp only with ep above 1; like every axis it is listed only above size 1."""
        args = [
            "--module",
            "deepseek_v3",
            "--config",
            config,
            "--parallelism.expert_parallel_degree",
            str(ep),
        ]
        lines = texts_of(registry_dialect(args, nproc=nproc), ev.ProcessGroupReady(0, 0, 0))
        assert lines[1] == f"Successfully created meshes with active dimensions: {meshes}"

    def test_partial_dtensor_keeps_fsdp(self) -> None:
        """spmd_backend partial_dtensor: the flattened fsdp axis in place of dp and dp_shard."""
        args = [*DEBUG, "--parallelism.spmd_backend", "partial_dtensor"]
        lines = texts_of(registry_dialect(args), ev.ProcessGroupReady(0, 0, 0))
        assert lines[1] == "Successfully created meshes with active dimensions: ['batch', 'loss', 'fsdp']"

    @pytest.mark.parametrize(("config", "policy"), [("qwen3_0_6b", "SelectiveAC"), ("qwen3_14b", "FullAC")])
    def test_ac_class_and_no_mixed_precision_line(self, config: str, policy: str) -> None:
        """apply() names its class; the registry form's trainer.py and fsdp.py log no mixed precision."""
        texts = texts_of(registry_dialect(["--module", "qwen3", "--config", config]), BUILT)
        assert f"Applied {policy} activation checkpointing to the model" in texts
        assert not any("Mixed precision" in t for t in texts)

    def test_tensorboard_line_on_the_metrics_rank(self) -> None:
        """llama3_8b sets enable_tensorboard: metrics.py's TensorBoardLogger logs
        f"TensorBoard logging enabled. Logs will be saved at {log_dir}", log_dir being
        os.path.join(dump_folder, save_tb_folder, datetime.now().strftime("%Y%m%d-%H%M")), on rank 0
        (_get_metrics_rank without PP), after `Building` and before MetricsProcessor's CUDA capacity."""
        at = 1_800_000_000.0
        args = ["--module", "llama3", "--config", "llama3_8b"]
        texts = texts_of(registry_dialect(args, nproc=8), BUILT, at)
        folder = "./outputs/tb/" + time.strftime("%Y%m%d-%H%M", time.localtime(at))
        assert texts[:2] == [
            "Building llama3 8B",
            f"TensorBoard logging enabled. Logs will be saved at {folder}",
        ]
        assert texts[2].startswith("CUDA capacity: ")
        assert not any(
            "TensorBoard" in t for t in texts_of(registry_dialect(args, nproc=8, rank=1), BUILT, at)
        )

    def test_tensorboard_with_pipeline_stages(self) -> None:
        """pp 2 on 4 ranks, 1F1B: the first rank of the last stage, (4 // 2) x (2 - 1) = 2, logs it."""
        args = ["--module", "llama3", "--config", "llama3_8b", "--parallelism.pipeline_parallel_degree", "2"]
        logging = [
            rank
            for rank in range(4)
            if any("TensorBoard" in t for t in texts_of(registry_dialect(args, nproc=4, rank=rank), BUILT))
        ]
        assert logging == [2]

    def test_toml_form_logs_it_too(self) -> None:
        """0.2.x's metrics.py logs the same line from the TOML's [metrics] enable_tensorboard, after the
        arguments dump of `Building`; its 0.2.x preamble stays (`Starting job`, etp, fully_shard)."""
        args = ["--job.config_file", str(CORPUS / "llama3_debug.toml"), "--metrics.enable_tensorboard"]
        d = registry_dialect(args)
        texts = texts_of(d, BUILT)
        capacity = next(i for i, t in enumerate(texts) if t.startswith("CUDA capacity: "))
        logged = "TensorBoard logging enabled. Logs will be saved at ./outputs/tb/"
        assert texts[capacity - 1].startswith(logged)
        assert "Mixed precision training is handled by fully_shard" in texts
        assert texts_of(d, ev.ProcessGroupReady(0, 0, 0))[0].endswith(", ep=1, etp=1")

    def test_off_without_the_switch(self) -> None:
        """llama3_debugmodel leaves enable_tensorboard at MetricsProcessor.Config's False."""
        assert not any("TensorBoard" in t for t in texts_of(registry_dialect(DEBUG), BUILT))


class TestMesh:
    """ParallelDims' and the batch's checks, raised by the ranks (exit 1), not refused by the launcher."""

    def test_invalid_parallel_dims(self) -> None:
        """dp_shard 1 x tp 1 on 2 ranks: _validate's product assertion with its message."""
        args = ["--model.name", "llama3", "--parallelism.data_parallel_shard_degree", "1"]
        _, hints = run_of(args)
        text = exit_text(hints)
        assert text.endswith(
            "[rank0]: AssertionError: Invalid parallel dims: dp_replicate(1) * dp_shard(1) * cp(1) * tp(1) * "
            "pp(1) != WORLD_SIZE(2)\n"
        )

    def test_expert_parallel_must_divide_the_sparse_region(self) -> None:
        """deepseek_v3_16b's expert_parallel_degree 8 on 2 GPUs: ParallelDims._validate's ValueError on every
        rank (exit 1), before the launcher's own checks of the job."""
        config = str(CORPUS / "deepseek_v3_16b.toml")
        _, hints = run_of(["--job.config_file", config, "--parallelism.expert_parallel_degree", "8"])
        assert hints.script_exit is not None and hints.script_exit[1] == 1
        text = exit_text(hints, 1)
        assert '[rank1]:   File "' in text and "in _validate\n[rank1]:     raise ValueError(\n" in text
        assert text.endswith(
            "[rank1]: ValueError: expert_parallel_degree (8) must divide dp_shard * cp * tp (2)\n"
        )

    def test_global_batch_not_divisible(self) -> None:
        """global 10 over local 4 x dp 2: Trainer.__init__'s assertion."""
        args = ["--training.local_batch_size", "4", "--training.global_batch_size", "10"]
        _, hints = run_of(args)
        assert exit_text(hints).endswith(
            "[rank0]: AssertionError: global batch size must be multiple of local batch size times "
            "data-parallel degree (10 % (4 * 2) != 0)\n"
        )


class TestArtifacts:
    """The files of a save where the log says: {dump_folder}/{checkpoint.folder}/step-N/."""

    def test_layout_and_final_export_dtype(self) -> None:
        """Each rank its __R_0.distcp, rank 0 also .metadata; the last step's model-only bf16 shards."""
        run, hints = run_of(["--job.config_file", str(CORPUS / "llama3_debug.toml")])

        def saved(step: int, rank: int) -> list[files.Artifact]:
            request = files.SaveRequest(run, hints.settings, step, rank, 2, "checkpoint")
            return list(TitanDialect.artifacts(request))

        assert [a.path for a in saved(6, 0)] == [
            "./outputs/ckpt/step-6/__0_0.distcp",
            "./outputs/ckpt/step-6/.metadata",
        ]
        assert [a.path for a in saved(6, 1)] == ["./outputs/ckpt/step-6/__1_0.distcp"]
        last = saved(12, 1)[0]
        assert last.size == run.job.model.params * 2 // 2  # bfloat16, half on each of 2 ranks

    def test_checkpoint_disabled_writes_nothing(self) -> None:
        """checkpoint.enable = false: no saves and no files."""
        run, hints = run_of(["--job.config_file", str(CORPUS / "qwen3_0.6b.toml")])
        assert not run.saves
        request = files.SaveRequest(run, hints.settings, 5, 0, 2, "checkpoint")
        assert TitanDialect.artifacts(request) == ()


class TestContextParallel:
    """context_parallel_degree 2 on 4 GPUs: ParallelDims' dp_shard = 4 / cp = 2 loads the data, the batch is
    torchtitan's (global 16 = local 4 x 2 x accumulation 2), and every rank holds half of each sequence."""

    def test_batch_tokens_and_mesh(self) -> None:
        config = str(CORPUS / "llama3_debug.toml")
        run, hints = run_of(
            ["--job.config_file", config, "--parallelism.context_parallel_degree", "2"], nproc=4
        )
        job = run.job
        # 16 sequences of 1024 tokens a step, each split over the 2 cp ranks of its batch slice: the batch
        # degree is 4 / cp = 2, the FSDP group dp_shard x cp = 4.
        assert job.tokens_per_step == 16 * 1024 and job.seq_len == 1024
        assert (job.cp, job.dp, job.dp_cp, job.local_seq_len) == (2, 2, 4, 512)
        # fully_shard over the fsdp mesh: each rank holds a quarter of the fp32 parameters.
        assert memory.memory_breakdown(job, 0, 0).weights == pytest.approx(4.0 * job.model.params / 4)
        d = TitanDialect(Seat(rank=0, local_rank=0, world_size=4, nproc_per_node=4, hosts=("h",)))
        d.render(
            ev.JobStarted(run=run, first=True, resume=False, settings=tuple(hints.settings.items())), 0.0
        )
        lines = [o.text.split(" - INFO - ", 1)[-1] for o in d.render(ev.ProcessGroupReady(0, 0, 0), 0.0)]
        assert lines[0] == (
            "Building device mesh with parallelism: pp=1, dp_replicate=1, dp_shard=2, cp=2, tp=1, ep=1, etp=1"
        )
        # build_mesh's sizes: batch 2, loss 2 x 2, fsdp 2 x 2, cp 2, efsdp 4 (tp 1, ep 1).
        assert lines[1] == (
            "Successfully created meshes with active dimensions: ['batch', 'loss', 'fsdp', 'cp', 'efsdp']"
        )
        built = ev.ModelBuilt(
            dtype="bf16", params_on_rank=1.0, layers_on_rank=6, pp_rank=0, weights_bytes=1e6
        )
        texts = [o.text.split(" - INFO - ", 1)[-1] for o in d.render(built, 0.0) if isinstance(o, Line)]
        assert "Applied Context Parallel to the model" in texts
        assert any(
            t.startswith(
                "Trainer is initialized with local batch size 4, global batch size 16, gradient accumulation "
                "steps 2, sequence length 1024, total steps 12"
            )
            for t in texts
        )

    def test_without_cp_the_sequence_stays_whole(self) -> None:
        run, _ = run_of(["--job.config_file", str(CORPUS / "llama3_debug.toml")], nproc=2)
        assert run.job.seq_len == 1024 and run.job.tokens_per_step == 16 * 1024 and run.job.cp == 1

    def test_cp_activations_are_a_share_of_the_sequence(self) -> None:
        """The same batch slice with cp 2 on twice the GPUs: each rank saves half the activations."""
        config = ["--job.config_file", str(CORPUS / "llama3_debug.toml")]
        whole, _ = run_of(config, nproc=2)
        split, _ = run_of([*config, "--parallelism.context_parallel_degree", "2"], nproc=4)
        assert split.job.micro_batch == whole.job.micro_batch
        assert memory.layer_activation_bytes(split.job) == pytest.approx(
            memory.layer_activation_bytes(whole.job) / 2
        )

    def test_sequence_not_divisible_by_two_cp_dies_on_the_ranks(self) -> None:
        """seq 1020 with cp 4 (4 GPUs): parallelize_llama's assertion 1020 % (1 x 2 x 4), its f-string's
        newlines and indentation printed as they are."""
        args = ["--job.config_file", str(CORPUS / "llama3_debug.toml"), "--training.seq_len", "1020"]
        _, hints = run_of([*args, "--parallelism.context_parallel_degree", "4"], nproc=4)
        assert hints.script_exit is not None and hints.script_exit[1] == 1
        text = exit_text(hints, 3)
        assert '[rank3]:   File "' in text and 'parallelize.py", line 67, in parallelize_llama' in text
        assert text.endswith(
            "[rank3]: AssertionError: \n"
            "[rank3]:         Sequence length 1020 must be divisible by the product of TP degree\n"
            "[rank3]:         (1) and 2 * CP degree (4).\n"
            "[rank3]:         \n"
        )
        # 1020 = 2 x 510: without cp the same sequence starts.
        _, whole = run_of(args, nproc=4)
        assert whole.script_exit is None


class TestMoeMemory:
    """deepseek_v3_16b as published for 8 GPUs: its activations from the experts' own sizes, and its peak
    against a real run of that configuration."""

    def job(self) -> JobSpec:
        run, _ = run_of(["--module", "deepseek_v3", "--config", "deepseek_v3_16b"], nproc=8)
        return run.job

    def test_routed_experts_count_their_own_hidden_size(self) -> None:
        """Without recompute a MoE layer keeps, per token, each of its top_k routed copies' input (2 dim
        bytes) and their gate, up and product (3 x 2 x moe_inter_dim), the shared experts' the same at
        2 x moe_inter_dim, not top_k copies of the dense layers' inter_dim."""
        job = dataclasses.replace(self.job(), recompute="selective")
        dim, expert, shared, dense, k = 2048, 1408, 2 * 1408, 10944, 6
        moe_bytes = k * (2 * dim + 3 * 2 * expert) + (2 * dim + 3 * 2 * shared)
        dense_bytes = 2 * dim + 3 * 2 * dense
        mlp = (26 * moe_bytes + 1 * dense_bytes) / 27  # 1 dense layer (n_dense_layers) of 27
        tokens = 4 * 4096
        expected = tokens * (15 * dim + mlp)  # attention's 11 and the norms' 4 bytes per dim
        assert memory.layer_activation_bytes(job) == pytest.approx(expected)

    def test_per_op_checkpointing_keeps_less_than_the_layer(self) -> None:
        """SelectiveAC (per-op): each layer keeps at least its input and the dispatched tokens (2 dim bytes
        plus top_k x 2 dim each way over EP) and at most what it keeps without recompute."""
        job = self.job()
        assert job.recompute == "op" and job.ep == 8
        kept = memory.layer_activation_bytes(job)
        tokens, dim = 4 * 4096, 2048
        assert tokens * (2 * dim + 2 * 6 * 2 * dim * 26 / 27) < kept  # both ways, top_k copies, bf16
        assert kept < memory.layer_activation_bytes(dataclasses.replace(job, recompute="selective"))

    def test_peak_near_the_published_run(self) -> None:
        """pytorch/torchtitan#1789: this configuration (local batch 4, seq 4096, EP 8, per-op SAC) on 8 H100
        80GB peaks at 73.32 GiB reserved. States: fp32 weights and grads and Adam's m and v, FSDP over 8
        ranks: 16 bytes x 15.7B / 8 = 29 GiB of it."""
        job = self.job()
        mb = memory.memory_breakdown(job, 0)
        states = 16 * job.model.params / 8
        assert mb.weights + mb.grads + mb.optimizer == pytest.approx(states, rel=0.01)
        assert 0.9 * 73.32 * GIB < mb.reserved < 1.1 * 73.32 * GIB
