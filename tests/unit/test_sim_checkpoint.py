"""Checkpoints and exports: sizes, save times from storage bandwidth, safetensors shard names."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fakerun import presets
from fakerun.sim import checkpoint as ck
from fakerun.sim.job import JobSpec, make_job


def job(model: str = "llama3-8b", **kw: Any) -> JobSpec:
    b = presets.resolve(model, cluster=kw.pop("cluster", None))
    storage = presets.load_storage(kw.pop("storage")) if "storage" in kw else b.storage
    return make_job(b.model, b.cluster, storage, **kw)


class TestExport:
    def test_llama3_8b_has_four_shards(self) -> None:
        """Llama 3 8B in bf16 with a 5 GB limit: model-00001-of-00004 ... -00004-of-00004, as on the Hub."""
        shards = ck.safetensors_shards(presets.load_model("llama3-8b"))
        assert [s.name for s in shards] == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
        assert all(s.nbytes <= 5_000_000_000 + 10_000 for s in shards)

    @pytest.mark.parametrize(("model", "low", "high"), [("llama3-70b", 28, 31), ("llama3-405b", 162, 192)])
    def test_big_models_shard_like_the_hub(self, model: str, low: int, high: int) -> None:
        """70B ships as 30 shards on the Hub; the greedy split lands close."""
        assert low <= len(ck.safetensors_shards(presets.load_model(model))) <= high

    @pytest.mark.parametrize("model", presets.list_presets()["models"])
    def test_shards_hold_the_weights(self, model: str) -> None:
        """The shards add up to 2 bytes per parameter (plus headers)."""
        m = presets.load_model(model)
        total = sum(s.nbytes for s in ck.safetensors_shards(m))
        assert total == pytest.approx(2 * m.params, rel=0.001)

    def test_companion_files(self) -> None:
        """A sharded export carries the index and the usual config and tokenizer files."""
        names = {f.name for f in ck.export_files(presets.load_model("llama3-8b"))}
        assert set(ck.COMPANION_FILES) <= names
        assert all(re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors|[a-z_.]+\.json", n) for n in names)

    def test_small_model_is_one_file(self) -> None:
        """GPT-2 fits one model.safetensors and needs no index."""
        names = {f.name for f in ck.export_files(presets.load_model("gpt2-124m"))}
        assert "model.safetensors" in names and "model.safetensors.index.json" not in names


class TestCheckpoints:
    def test_sizes(self) -> None:
        """Full checkpoints hold 14 bytes/param (bf16 weights + fp32 master + Adam m, v); weights alone 2."""
        m = presets.load_model("llama3-70b")
        assert ck.checkpoint_bytes(m) == 14 * m.params
        assert ck.checkpoint_bytes(m, full=False) == 2 * m.params

    def test_save_time_follows_storage_bandwidth(self) -> None:
        """Saving is bytes / write bandwidth (plus a little): Lustre's 80 GB/s beats NFS's 1.2 GB/s."""
        lustre = job("llama3-8b", storage="lustre")
        nfs = job("llama3-8b", storage="nfs")
        nbytes = ck.checkpoint_bytes(lustre.model)
        assert ck.save_seconds(nfs, 100) == pytest.approx(nbytes / 1.2e9, rel=0.3)
        assert ck.save_seconds(lustre, 100) < ck.save_seconds(nfs, 100) / 10

    def test_bloom_scale_save(self) -> None:
        """A 175B full checkpoint (2.4 TB) on an 80 GB/s file system takes tens of seconds (BLOOM: ~40 s)."""
        assert 20 < ck.save_seconds(job("gpt3-175b"), 1000) < 60

    def test_local_nvme_scales_with_nodes(self) -> None:
        """Node-local disks add up: more nodes, faster saves."""
        few = job("qwen2.5-72b", nnodes=16)
        many = job("qwen2.5-72b", nnodes=32)
        assert ck.save_seconds(many, 5) < ck.save_seconds(few, 5)

    def test_distcp_files(self) -> None:
        """torch_dist checkpoints write one __r_0.distcp per rank and a .metadata file."""
        j = job("llama3.2-1b")
        files = ck.distcp_files(j)
        assert len(files) == j.world_size + 1 and files[0].name == "__0_0.distcp"

    @pytest.mark.parametrize(
        ("style", "name"),
        [("megatron", "iter_0001000"), ("hf", "checkpoint-1000"), ("torchtitan", "step-1000")],
    )
    def test_directory_names(self, style: str, name: str) -> None:
        """Checkpoint directories are named as each framework names them."""
        assert ck.checkpoint_dir(1000, style) == name


class TestExportTime:
    """save_pretrained's duration: every byte of the export through one writer."""

    @pytest.mark.parametrize("model", ["llama3-8b", "llama3-70b"])
    def test_takes_the_bytes_over_the_bandwidth(self, model: str) -> None:
        """At least the export's bytes over the storage's per-node write bandwidth (16-141 GB: seconds+)."""
        b = presets.resolve(model)
        j = make_job(b.model, b.cluster, b.storage)
        nbytes = sum(f.nbytes for f in ck.export_files(j.model))
        per_node = (j.storage.per_node_write_gbs or j.storage.write_gbs) * 1e9
        assert ck.export_seconds(j) >= 0.85 * nbytes / per_node
        assert ck.export_seconds(j) >= 0.85 * nbytes / 2e9  # one process: ~1.5 GB/s, not 10s of GB/s

    def test_grows_with_the_model(self) -> None:
        """A 70B export takes several times an 8B one on the same storage."""
        small, big = presets.resolve("llama3-8b"), presets.resolve("llama3-70b")
        js = make_job(small.model, big.cluster, big.storage, nnodes=4)
        jb = make_job(big.model, big.cluster, big.storage, nnodes=4)
        assert ck.export_seconds(jb) > 5 * ck.export_seconds(js)


class TestStalls:
    """Rare, seeded stalls of saves and evaluations (what fakerun's style warns about)."""

    def test_rare_and_bounded(self) -> None:
        """About one pause in SLOW_PAUSE_ODDS is stalled x2-4, never at step 0; the same seed, the same."""
        j = job()
        factors = [ck.storage_stall(j, "ckpt-stall", s) for s in range(1, 8001)]
        stalled = [f for f in factors if f != 1.0]
        assert 0.5 / ck.SLOW_PAUSE_ODDS < len(stalled) / len(factors) < 2.0 / ck.SLOW_PAUSE_ODDS
        assert all(2.0 <= f <= 4.0 for f in stalled)
        assert ck.storage_stall(j, "ckpt-stall", 0) == 1.0
        assert factors == [ck.storage_stall(j, "ckpt-stall", s) for s in range(1, 8001)]

    def test_a_stalled_save_is_far_above_its_usual_time(self) -> None:
        """A stalled step's save takes at least 1.5x the usual time; an unstalled one stays near it."""
        j = job()
        usual = ck.usual_save_seconds(j)
        steps = range(1, 4001)
        slow = [s for s in steps if ck.storage_stall(j, "ckpt-stall", s) > 1.0]
        assert slow and all(ck.save_seconds(j, s) > 1.5 * usual for s in slow)
        assert all(ck.save_seconds(j, s) < 1.5 * usual for s in steps if s not in slow)
