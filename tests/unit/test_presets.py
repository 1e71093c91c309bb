"""Presets: published figures, name and Hugging Face matching, one-line errors, user TOML files."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fakerun import presets
from fakerun.presets import PresetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

# Published parameter counts (model cards and papers), as literals: the architecture must reproduce them.
PUBLISHED = [
    ("llama3-8b", 8.03e9),
    ("llama3-70b", 70.6e9),
    ("llama3-405b", 405.9e9),
    ("llama3.2-1b", 1.24e9),
    ("llama3.2-3b", 3.21e9),
    ("mistral-7b", 7.24e9),
    ("mixtral-8x7b", 46.7e9),
    ("qwen2.5-7b", 7.61e9),
    ("qwen2.5-72b", 72.7e9),
    ("gpt3-175b", 175e9),
    ("gpt2-124m", 124e6),
]


class TestModels:
    @pytest.mark.parametrize(("name", "published"), PUBLISHED)
    def test_parameter_count_matches_publication(self, name: str, published: float) -> None:
        """The count computed from the architecture is within 1% of the published size."""
        assert presets.load_model(name).params == pytest.approx(published, rel=0.01)

    def test_mixtral_active_parameters(self) -> None:
        """Mixtral 8x7B activates 12.9B of its 46.7B parameters per token (top-2 of 8 experts)."""
        m = presets.load_model("mixtral-8x7b")
        assert (m.experts, m.top_k) == (8, 2)
        assert m.active_params == pytest.approx(12.9e9, rel=0.01)

    def test_exact_llama3_8b_count(self) -> None:
        """Llama 3 8B: 32 x 218,112,000 per layer + 2 x 525,336,576 embedding + 4,096 norm."""
        assert presets.load_model("llama3-8b").params == 8_030_261_248

    def test_enough_real_and_joke_models(self) -> None:
        """At least 8 real architectures and 2 joke ones ship."""
        models = [presets.load_model(n) for n in presets.list_presets()["models"]]
        assert sum(not m.joke for m in models) >= 8
        assert sum(m.joke for m in models) >= 2

    @pytest.mark.parametrize("name", presets.list_presets()["models"])
    def test_every_model_is_well_formed(self, name: str) -> None:
        """Every model preset has an HF name, divisible heads and sane training defaults."""
        m = presets.load_model(name)
        assert m.name == name and m.hf_name and m.display_name
        assert m.hidden % m.heads == 0 and m.heads % m.kv_heads == 0
        assert 0 < m.lr < 1e-2 and 0 <= m.warmup_steps < m.total_steps
        presets.load_cluster(m.default_cluster)
        if m.published_params:
            assert m.params == pytest.approx(m.published_params, rel=0.01)

    @pytest.mark.parametrize("spelling", ["llama3-8b", "LLAMA3-8B", "Llama3_8B", " llama3-8b "])
    def test_names_are_case_insensitive(self, spelling: str) -> None:
        """Preset names ignore case, surrounding blanks and _ versus -."""
        assert presets.load_model(spelling).name == "llama3-8b"


class TestHuggingFaceNames:
    @pytest.mark.parametrize(
        ("hf", "expected"),
        [
            ("meta-llama/Meta-Llama-3-70B", "llama3-70b"),
            ("meta-llama/Llama-3.1-70B-Instruct", "llama3-70b"),
            ("meta-llama/Llama-3.3-70B-Instruct", "llama3-70b"),
            ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3-8b"),
            ("unsloth/llama-3-8b-bnb-4bit", "llama3-8b"),
            ("/data/ckpt/Llama-3.2-1B-Instruct/", "llama3.2-1b"),
            ("meta-llama/Llama-3.1-405B-FP8", "llama3-405b"),
            ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b"),
            ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
            ("Qwen/Qwen2.5-72B-Instruct", "qwen2.5-72b"),
            ("Qwen/Qwen2-7B", "qwen2.5-7b"),
            ("gpt2", "gpt2-124m"),
        ],
    )
    def test_generous_matching(self, hf: str, expected: str) -> None:
        """Repo ids, instruct or quantised variants and local paths map to the same architecture."""
        m = presets.model_from_hf_name(hf)
        assert m is not None and m.name == expected

    @pytest.mark.parametrize("hf", ["meta-llama/Llama-2-7b-hf", "openai-community/gpt2-xl", "foo/bar", ""])
    def test_unknown_architectures_give_none(self, hf: str) -> None:
        """Names of architectures without a preset match nothing rather than a wrong model."""
        assert presets.model_from_hf_name(hf) is None

    def test_load_model_accepts_hf_names(self) -> None:
        """load_model falls back to Hugging Face matching."""
        assert presets.load_model("meta-llama/Meta-Llama-3-70B").name == "llama3-70b"


class TestHardware:
    @pytest.mark.parametrize(
        ("name", "display", "mib", "tflops", "tdp"),
        [
            ("h100", "NVIDIA H100 80GB HBM3", 81559, 989.4, 700),
            ("a100-80gb", "NVIDIA A100-SXM4-80GB", 81920, 312.0, 400),
            ("a100-40gb", "NVIDIA A100-SXM4-40GB", 40960, 312.0, 400),
            ("h200", "NVIDIA H200", 143771, 989.4, 700),
            ("b200", "NVIDIA B200", 183359, 2250.0, 1000),
            ("mi300x", "AMD Instinct MI300X", 196288, 1307.4, 750),
        ],
    )
    def test_gpu_figures(self, name: str, display: str, mib: int, tflops: float, tdp: int) -> None:
        """GPUs carry nvidia-smi's name and MiB total, dense BF16 peak and TDP (PHYSICS.md 1)."""
        g = presets.load_gpu(name)
        assert (g.display_name, g.memory_mib, g.peak_bf16_tflops, g.tdp_w) == (display, mib, tflops, tdp)
        assert g.idle_temp_c < g.load_temp_c <= g.max_temp_c

    @pytest.mark.parametrize("name", presets.list_presets()["clusters"])
    def test_clusters_resolve(self, name: str) -> None:
        """Every cluster names a GPU preset, a storage preset and a usable host pattern."""
        c = presets.load_cluster(name)
        presets.load_storage(c.storage)
        # GB200 compute trays hold 4 GPUs; every other node type here 8.
        assert c.gpus_per_node == (4 if c.gpu.name == "gb200" else 8)
        assert c.intra_busbw_gbs < c.gpu.link_gbs * 1.1
        hosts = {presets.host_name(c, i) for i in range(300)}
        assert len(hosts) == 300

    def test_dgx_h100(self) -> None:
        """DGX H100: 8 GPUs, NVLink4 450 GB/s per direction, 8 x 400 Gb/s NICs, host names from 001."""
        c = presets.load_cluster("dgx-h100")
        assert (c.gpus_per_node, c.gpu.link_gbs, c.nics_per_node, c.nic_gbps) == (8, 450.0, 8, 400)
        assert presets.host_name(c, 0) == "gpu-node-001"
        assert 40e9 <= c.nic_bytes_per_gpu <= 48e9  # 46-48 GB/s per NDR400 NIC (nccl-tests#290)

    def test_storage(self) -> None:
        """Storage presets carry read and write bandwidths."""
        for name in presets.list_presets()["storage"]:
            s = presets.load_storage(name)
            assert s.read_gbs > 0 and s.write_gbs > 0

    def test_resolve_picks_a_cluster_for_the_gpu(self) -> None:
        """Asking for another GPU picks a cluster built around it."""
        b = presets.resolve("llama3-8b", gpu="a100-80gb")
        assert b.cluster.name == "dgx-a100" and b.gpu.name == "a100-80gb"
        assert presets.resolve("llama3-8b").cluster.name == "dgx-h100"

    def test_with_gpu_scales_nvlink(self) -> None:
        """Putting A100s in an H100 chassis scales NVLink figures and turns NVLS off."""
        c = presets.with_gpu(presets.load_cluster("dgx-h100"), presets.load_gpu("a100-80gb"))
        assert c.gpu.name == "a100-80gb" and not c.nvls
        assert c.intra_busbw_gbs == pytest.approx(360.0 * 300 / 450)


class TestErrors:
    @pytest.mark.parametrize(
        ("loader", "kind", "key"),
        [
            (presets.load_model, "model", "models"),
            (presets.load_gpu, "GPU", "gpus"),
            (presets.load_cluster, "cluster", "clusters"),
            (presets.load_storage, "storage", "storage"),
        ],
    )
    def test_unknown_name_lists_the_valid_ones(
        self, loader: Callable[[str], object], kind: str, key: str
    ) -> None:
        """An unknown name gives one line listing every valid name."""
        with pytest.raises(PresetError) as err:
            loader("foo")
        msg = str(err.value)
        assert msg.startswith(f"unknown {kind} 'foo' (choose from: ")
        assert "\n" not in msg
        assert all(n in msg for n in presets.list_presets()[key])

    def test_unknown_model_message(self) -> None:
        """The model message names the presets, e.g. llama3-8b and llama3-70b."""
        with pytest.raises(PresetError, match=r"unknown model 'foo' \(choose from: .*llama3-8b, llama3-70b"):
            presets.load_model("foo")

    def test_missing_file(self, tmp_path: Path) -> None:
        """A .toml path that does not exist is named in the error."""
        with pytest.raises(PresetError, match=r"model file '.*nope\.toml' not found"):
            presets.load_model(str(tmp_path / "nope.toml"))

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("layers = [", "Invalid|Expected|expected"),
            (
                'name = "x"\nlayers = 2\nhidden = 64\nffn_hidden = 256\nheads = 4\nvocab = 100\n',
                "missing field",
            ),
            ('layers = "two"\n', "field 'layers' must be an integer"),
            ("colour = 3\n", "unknown field 'colour'"),
            (
                "layers = 2\nhidden = 65\nffn_hidden = 256\nheads = 4\nvocab = 100\nseq_len = 128\n",
                "not divisible",
            ),
        ],
    )
    def test_bad_file_names_file_and_problem(self, tmp_path: Path, text: str, problem: str) -> None:
        """A broken model file gives one line with the file name and the problem."""
        path = tmp_path / "mine.toml"
        path.write_text(text)
        with pytest.raises(PresetError) as err:
            presets.load_model(str(path))
        msg = str(err.value)
        assert "\n" not in msg and "mine.toml" in msg
        assert re.search(problem, msg)


class TestUserFiles:
    def test_model_from_toml_file(self, tmp_path: Path) -> None:
        """A TOML file with the architecture fields is a model; training defaults are optional."""
        path = tmp_path / "tiny.toml"
        path.write_text(
            "layers = 4\nhidden = 256\nffn_hidden = 1024\nheads = 4\nvocab = 1000\nseq_len = 512\n"
            'mlp = "gelu"\nnorm = "layernorm"\nbias = "all"\nposition = "learned"\ntied_embeddings = true\n'
        )
        m = presets.load_model(str(path))
        assert m.name == "tiny" and m.kv_heads == 4
        # GPT-style: 12 h^2 + 13 h per layer, tied embedding, learned positions, final layer norm.
        assert m.params == 4 * (12 * 256**2 + 13 * 256) + 1000 * 256 + 512 * 256 + 2 * 256

    def test_preset_file_loads_as_a_path(self) -> None:
        """A shipped preset file given by path loads like the preset itself."""
        path = Path(presets.__file__).parent / "configs" / "models" / "llama3-70b.toml"
        assert presets.load_model(str(path)) == presets.load_model("llama3-70b")

    def test_gpu_from_toml_file(self, tmp_path: Path) -> None:
        """Custom GPUs load from a file too."""
        path = tmp_path / "mygpu.toml"
        path.write_text(
            'display_name = "Fake GPU"\npeak_bf16_tflops = 100.0\nmemory_mib = 16384\ntdp_w = 300\n'
        )
        g = presets.load_gpu(str(path))
        assert g.name == "mygpu" and g.peak_flops == 100e12

    def test_list_presets(self) -> None:
        """list_presets returns the four kinds."""
        listed = presets.list_presets()
        assert set(listed) == {"models", "gpus", "clusters", "storage"}
        assert "llama3-8b" in listed["models"] and "h100" in listed["gpus"]


# --- hardening: hostile preset files ---------------------------------------------------------------

CONFIGS = Path(presets.__file__).parent / "configs"
# One shipped preset of each kind, the base of every hostile variant below.
BASES = {"models": "llama3-8b", "gpus": "h100", "clusters": "dgx-h100", "storage": "lustre"}
LOADERS: dict[str, Callable[[str], object]] = {
    "models": presets.load_model,
    "gpus": presets.load_gpu,
    "clusters": presets.load_cluster,
    "storage": presets.load_storage,
}
CLASSES: dict[str, type] = {
    "models": presets.ModelSpec,
    "gpus": presets.GpuSpec,
    "clusters": presets.ClusterSpec,
    "storage": presets.StorageSpec,
}


def toml_value(value: Any) -> str:
    """A TOML literal for the simple (finite) values preset files hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def variant(tmp_path: Path, kind: str, **changes: Any) -> str:
    """A copy of the kind's base preset with some fields changed, written as a file; its path."""
    data = tomllib.loads((CONFIGS / kind / f"{BASES[kind]}.toml").read_text())
    data.update(changes)
    path = tmp_path / f"variant-{kind}.toml"
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in data.items()))
    return str(path)


def numeric_fields() -> list[tuple[str, str, str]]:
    """(kind, field, "int" or "float") of every numeric field a preset file can set."""
    return [
        (kind, f.name, str(f.type))
        for kind, cls in CLASSES.items()
        for f in dataclasses.fields(cls)
        if f.init and str(f.type) in ("int", "float")
    ]


def load_error(kind: str, path: str) -> str:
    """The one-line PresetError message of loading the file."""
    with pytest.raises(PresetError) as err:
        LOADERS[kind](path)
    message = str(err.value)
    assert "\n" not in message
    return message


class TestHostileFiles:
    """Values that parse as TOML and would overflow, divide by zero or hang the job later: one line each."""

    def test_base_variants_load(self, tmp_path: Path) -> None:
        """The unchanged copies load (so every failure below is the changed field's)."""
        for kind in CLASSES:
            LOADERS[kind](variant(tmp_path, kind))

    @pytest.mark.parametrize(("kind", "field", "typ"), numeric_fields())
    def test_absurdly_large(self, tmp_path: Path, kind: str, field: str, typ: str) -> None:
        """Every numeric field of every preset kind refuses a value no hardware or model comes near."""
        huge: Any = 10**30 if typ == "int" else 1e300
        message = load_error(kind, variant(tmp_path, kind, **{field: huge}))
        assert f"'{field}'" in message

    @pytest.mark.parametrize(("kind", "field", "typ"), numeric_fields())
    def test_negative(self, tmp_path: Path, kind: str, field: str, typ: str) -> None:
        """No numeric field of any preset kind is negative."""
        negative: Any = -1 if typ == "int" else -1.0
        message = load_error(kind, variant(tmp_path, kind, **{field: negative}))
        assert f"'{field}'" in message

    @pytest.mark.parametrize(
        ("kind", "field", "value"),
        [
            ("gpus", "peak_bf16_tflops", 1e308),
            ("gpus", "peak_bf16_tflops", 1e-300),
            ("gpus", "peak_bf16_tflops", 0.0),
            ("gpus", "memory_mib", 0),
            ("clusters", "intra_busbw_gbs", 1e-300),
            ("clusters", "nic_gbps", 5e-324),
            ("clusters", "gpus_per_node", 99999),
            ("storage", "write_gbs", 1e-300),
            ("models", "lr", 1e-300),
            ("models", "rope_theta", 0.0),
        ],
    )
    def test_tiny_or_huge(self, tmp_path: Path, kind: str, field: str, value: Any) -> None:
        """The values of the issue (1e308 and 1e-300 TFLOP/s) and their kin are refused, naming the file."""
        path = variant(tmp_path, kind, **{field: value})
        message = load_error(kind, path)
        assert f"'{field}'" in message and path in message

    @pytest.mark.parametrize(
        "bus_ids", [["zz"], ["18", "2g"], ["123"], [""], [" 18"], ["1_0"], ["0x18"], [18]]
    )
    def test_bad_bus_ids(self, tmp_path: Path, bus_ids: list[Any]) -> None:
        """A bus id that is not one or two hex digits is refused when the cluster file is read."""
        assert "'bus_ids'" in load_error("clusters", variant(tmp_path, "clusters", bus_ids=bus_ids))

    def test_good_bus_ids(self, tmp_path: Path) -> None:
        """Lower or upper case, one or two digits."""
        cluster = presets.load_cluster(variant(tmp_path, "clusters", bus_ids=["0", "1a", "FF"]))
        assert cluster.bus_ids == ("0", "1a", "FF")

    @pytest.mark.parametrize("ids", [["zz"], ["18", None], ["1" * 10_000]])
    def test_check_bus_ids_is_one_line(self, ids: list[Any]) -> None:
        """The one check fakerun-smi shares: ValueError with a short message."""
        with pytest.raises(ValueError) as err:
            presets.check_bus_ids(ids)
        assert "\n" not in str(err.value) and len(str(err.value)) < 200

    @pytest.mark.parametrize(
        ("pattern", "prefix"),
        [
            ("{index:0999999999d}", "n"),
            ("{index:{prefix}}", "n"),
            ("{index.__class__}", "n"),
            ("{prefix[0]}{index}", "n"),
            ("{other}", "n"),
            ("{index", "n"),
            ("{prefix}{index}", "x" * 300),
        ],
    )
    def test_host_patterns(self, tmp_path: Path, pattern: str, prefix: str) -> None:
        """A host pattern that could build huge names, reach attributes or fail to format is refused."""
        path = variant(tmp_path, "clusters", host_pattern=pattern, host_prefix=prefix)
        assert "host" in load_error("clusters", path)

    @pytest.mark.parametrize(
        "text",
        [
            "a = " + "[" * 5000 + "]" * 5000,
            "a = " + "{x = " * 5000 + "}" * 5000,
            "[" + ".".join(["a"] * 5000) + "]",
            "a = " + "[" * 40 + "]" * 40,
        ],
    )
    @pytest.mark.parametrize("kind", list(CLASSES))
    def test_deep_nesting(self, tmp_path: Path, kind: str, text: str) -> None:
        """Tables and arrays nested thousands deep are one line, not a RecursionError."""
        path = tmp_path / "deep.toml"
        path.write_text(text)
        assert "nested" in load_error(kind, str(path))

    def test_too_large(self, tmp_path: Path) -> None:
        """A file over 1 MiB is refused before it is parsed."""
        path = tmp_path / "big.toml"
        path.write_text("# " + "x" * (1 << 20) + "\n")
        assert "larger than 1 MiB" in load_error("gpus", str(path))

    def test_fifo(self, tmp_path: Path) -> None:
        """A FIFO named like a preset file is refused at once instead of waiting for a writer."""
        path = tmp_path / "pipe.toml"
        os.mkfifo(path)
        assert "not a regular file" in load_error("clusters", str(path))

    def test_directory(self, tmp_path: Path) -> None:
        """A directory named like a preset file is one line."""
        path = tmp_path / "dir.toml"
        path.mkdir()
        assert "cannot read" in load_error("models", str(path))

    @pytest.mark.parametrize("kind", list(CLASSES))
    @pytest.mark.parametrize("name", ["a" * 5000, "a" * 5000 + ".toml", "x/" * 3000 + "y"])
    def test_names_longer_than_any_file_name(self, kind: str, name: str) -> None:
        """A name or path the file system cannot even look up (ENAMETOOLONG) is a short line, no OSError."""
        assert len(load_error(kind, name)) < 600


class TestSharp:
    @pytest.mark.parametrize(("transport", "ok"), [("ib", True), ("roce", False), ("efa", False)])
    def test_sharp_needs_infiniband(self, tmp_path: Path, transport: str, ok: bool) -> None:
        """SHARP lives in InfiniBand switches: a RoCE or EFA cluster that claims it is refused."""
        path = variant(tmp_path, "clusters", sharp=True, transport=transport)
        if ok:
            assert presets.load_cluster(path).sharp
        else:
            assert "'sharp'" in load_error("clusters", path)


class TestJoiningHostNames:
    """Node 0 names the nodes of a round that takes in agents joining a running elastic job: by their own
    host names while no two share one; a clash gives every node the cluster's names, as agents sharing a
    machine take at a first rendezvous, and later newcomers the cluster's first names no node has."""

    def test_names(self) -> None:
        from fakerun.main import _host_namer

        cluster = presets.resolve("llama3-8b", None, None).cluster
        names = tuple(presets.host_name(cluster, i) for i in range(3))
        assert _host_namer(cluster, renamed=False)(("gpu1",), ("gpu7",)) == ("gpu1", "gpu7")
        # A job begun by one agent, joined by another on its machine: both take the cluster's names.
        assert _host_namer(cluster, renamed=False)(("gpu1",), ("gpu1",)) == names[:2]
        assert _host_namer(cluster, renamed=True)((names[0], names[2]), ("localhost",)) == (
            *names[::2],
            names[1],
        )

    def test_a_renamed_job_stays_renamed(self) -> None:
        from fakerun.main import _host_namer

        cluster = presets.resolve("llama3-8b", None, None).cluster
        names = tuple(presets.host_name(cluster, i) for i in range(3))
        name = _host_namer(cluster, renamed=False)
        assert name(("gpu1",), ("gpu1",)) == names[:2]
        assert name(names[:2], ("gpu9",)) == names  # not gpu9: the nodes have the cluster's names now
