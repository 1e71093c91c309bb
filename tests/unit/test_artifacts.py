"""Safetensors headers and shards as the library writes them; the sparse file writer."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import pytest

from fakerun import presets
from fakerun.dialects.files import Artifact, Removal
from fakerun.sim import checkpoint, safetensors
from fakerun.worker import artifacts


def _parse(head: bytes) -> dict[str, dict[str, object]]:
    (n,) = struct.unpack("<Q", head[:8])
    assert len(head) == 8 + n
    parsed: dict[str, dict[str, object]] = json.loads(head[8:])
    return parsed


class TestSafetensors:
    def test_header_is_what_a_reader_parses(self) -> None:
        tensors = [("b.weight", (3, 5)), ("a.bias", (7,))]
        head = safetensors.header(tensors)
        assert (len(head) - 8) % 8 == 0  # the data after the header is 8-byte aligned
        entries = _parse(head)
        assert entries["__metadata__"] == {"format": "pt"}
        # Stored in name order, back to back, two bytes per bf16 element.
        assert entries["a.bias"] == {"dtype": "BF16", "shape": [7], "data_offsets": [0, 14]}
        assert entries["b.weight"] == {"dtype": "BF16", "shape": [3, 5], "data_offsets": [14, 44]}
        assert safetensors.file_bytes(tensors) == len(head) + 44

    def test_every_model_tensor_in_exactly_one_shard(self) -> None:
        model = presets.load_model("llama3-8b")
        tensors = list(checkpoint.hf_tensor_shapes(model))
        split = safetensors.shards(tensors, checkpoint.HF_SHARD_BYTES)
        assert 2 <= len(split) <= 6
        assert [t for s in split for t in s.tensors] == tensors
        for s in split:
            # A shard passes the limit only when a single tensor is larger than it.
            assert safetensors.data_bytes(s.tensors) <= checkpoint.HF_SHARD_BYTES or len(s.tensors) == 1
        params = sum(math.prod(shape) for _, shape in tensors)
        assert params == model.params
        index = json.loads(safetensors.index(split))
        assert index["metadata"]["total_size"] == 2 * params
        assert set(index["weight_map"]) == {name for name, _ in tensors}
        assert index["weight_map"][tensors[0][0]] == f"model-00001-of-{len(split):05d}.safetensors"

    def test_single_file_when_small(self) -> None:
        model = presets.load_model("gpt2-124m")
        (only,) = safetensors.shards(checkpoint.hf_tensor_shapes(model), checkpoint.HF_SHARD_BYTES)
        assert only.name == "model.safetensors"


class TestWriter:
    def test_sparse_file_with_its_head(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        size = 1 << 30
        assert artifacts.write([Artifact("a/b/c.bin", size, b"head"), Artifact.text("t.txt", "20\n")]) is None
        st = os.stat("a/b/c.bin")
        assert st.st_size == size
        assert st.st_blocks * 512 < size // 100  # a hole, not a gigabyte of zeros
        assert Path("a/b/c.bin").read_bytes()[:4] == b"head"
        assert Path("t.txt").read_text() == "20\n"

    def test_failure_is_one_line(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        Path("blocked").write_text("a file where a directory should be")
        failed = artifacts.write([Artifact("blocked/x.bin", 10)])
        assert failed is not None and "blocked/x.bin" in failed and "\n" not in failed


class TestRemoval:
    def test_a_rotated_checkpoint_is_deleted_after_the_new_one_is_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        assert artifacts.write([Artifact("out/checkpoint-10/a.bin", 5)]) is None
        assert artifacts.write([Artifact("out/checkpoint-20/a.bin", 5), Removal("out/checkpoint-10")]) is None
        assert sorted(os.listdir("out")) == ["checkpoint-20"]

    def test_never_the_working_directory_and_a_missing_path_is_no_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        Path("keep.txt").write_text("x")
        assert artifacts.write([Removal("."), Removal(str(tmp_path)), Removal("gone")]) is None
        assert Path("keep.txt").exists()
