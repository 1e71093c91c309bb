"""Presets shipped in fakerun/configs: models, GPUs, clusters and storage, loaded from TOML."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fakerun import tomlfile
from fakerun.limits import MAX_NNODES, MAX_NPROC_PER_NODE, MAX_STEPS
from fakerun.sim import rand, stack  # pure, and import presets only for type checking

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = [
    "ClusterSpec",
    "GpuSpec",
    "ModelSpec",
    "PresetBundle",
    "PresetError",
    "StorageSpec",
    "check_bus_ids",
    "field_range",
    "host_name",
    "list_presets",
    "load_cluster",
    "load_gpu",
    "load_model",
    "load_storage",
    "model_from_hf_name",
    "resolve",
    "with_gpu",
]

KINDS = ("models", "gpus", "clusters", "storage")
_SINGULAR = {"models": "model", "gpus": "GPU", "clusters": "cluster", "storage": "storage"}


class PresetError(Exception):
    """A preset name or preset file that cannot be used; the message is one line."""


# ----------------------------------------------------------------------------------------------------
# The specs


@dataclass(frozen=True)
class ModelSpec:
    """A transformer architecture with its published size and the training defaults of its preset."""

    name: str
    layers: int
    hidden: int
    ffn_hidden: int
    heads: int
    vocab: int
    seq_len: int
    display_name: str = ""
    family: str = ""
    hf_name: str = ""
    aliases: tuple[str, ...] = ()
    published_params: float = 0.0
    published_active_params: float = 0.0
    joke: bool = False
    kv_heads: int = 0  # 0: same as heads (multi-head attention)
    max_position: int = 0  # 0: seq_len
    position: str = "rope"  # rope | learned | none (no position table, no rotary: Mamba stacks)
    mlp: str = "swiglu"  # swiglu (3 matrices) | gelu (2 matrices)
    norm: str = "rmsnorm"  # rmsnorm (1 vector) | layernorm (2 vectors)
    bias: str = "none"  # none | qkv | all
    tied_embeddings: bool = False
    experts: int = 1
    top_k: int = 1
    # Shapes beyond the uniform GQA decoder (torchtitan's Qwen 3, Llama 4 and DeepSeek V3 flavors); each
    # default leaves the formula as it was.
    head_width: int = 0  # an explicit head dimension (Qwen 3: 128 whatever hidden/heads); 0: hidden // heads
    qk_norm: bool = False  # RMSNorm weights of head_dim on the queries and on the keys of every layer
    expert_ffn: int = 0  # one routed expert's hidden size; 0: ffn_hidden
    # The shared experts every token passes through, as one MLP of this hidden size (torchtitan: their number
    # times expert_ffn; Megatron's --moe-shared-expert-intermediate-size); 0: none.
    shared_ffn: int = 0
    dense_layers: int = 0  # layers of a MoE model with a dense MLP of ffn_hidden instead of the experts
    attn_params: int = 0  # one layer's attention weights when not plain GQA (DeepSeek's MLA); 0: from heads
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # Megatron's hybrid stack, one symbol a layer (M a Mamba-2 mixer, * self-attention, - an MLP), whose
    # layers each hold one of these with its own norm; "": every layer is attention then MLP.
    hybrid: str = ""
    mamba_state: int = 128  # --mamba-state-dim
    mamba_head_dim: int = 64  # --mamba-head-dim
    mamba_groups: int = 8  # --mamba-num-groups
    # Training defaults of the preset.
    global_batch: int = 256
    micro_batch: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 2000
    total_steps: int = 100_000
    tp: int = 1
    pp: int = 1
    ep: int = 1
    zero_stage: int = 1
    recompute: str = "selective"
    default_cluster: str = "dgx-h100"
    default_nnodes: int = 1
    # A Hugging Face model's config.json (compact JSON, as fakerun/frameworks/hf_models.py writes it): its
    # tensors as save_pretrained stores them (sim/hf_layout.py); "": a preset, laid out as Llama or GPT-2.
    hf_config: str = ""
    # The exact count of hf_config's tensors where the layer formula below is not exact (BLOOM's embedding
    # LayerNorm, T5's cross-attention, Qwen3's head_dim and q/k norms, GPT-J's unbiased attention); 0: none.
    hf_params: int = 0
    # Exact counts from the architecture, filled in by __post_init__.
    params: int = field(init=False, compare=False)
    active_params: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)
        if self.kv_heads == 0:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.max_position == 0:
            object.__setattr__(self, "max_position", self.seq_len)
        dense, expert, router = self.layer_params()
        shared = self.embedding_params() + self._final_norm()
        if self.hybrid:
            # Each layer holds one block: the total is exact, layer_params() its per-layer mean.
            total = sum(self._block_params(symbol) for symbol in self.hybrid) + shared
            object.__setattr__(self, "params", total)
            object.__setattr__(self, "active_params", total)
            return
        moe = self.layers - self.dense_layers if self.is_moe else self.layers
        # A dense layer of a MoE model: its attention and norms, and one MLP of ffn_hidden for the experts.
        plain = (self.layers - moe) * self.plain_layer_params()
        total = moe * (dense + self.experts * expert + router) + plain + shared
        if self.hf_params:
            # What the formula misses (or counts too many) is shared by every token, not one expert's.
            shared += self.hf_params - total
        object.__setattr__(self, "params", moe * (dense + self.experts * expert + router) + plain + shared)
        object.__setattr__(
            self, "active_params", moe * (dense + self.top_k * expert + router) + plain + shared
        )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.head_width or self.hidden // self.heads

    @property
    def attention_layers(self) -> int:
        """Layers with self-attention: all of them, or a hybrid stack's `*` layers."""
        return self.hybrid.count("*") if self.hybrid else self.layers

    def _attention_params(self) -> int:
        h, hd = self.hidden, self.head_dim
        q, kv = self.heads * hd, self.kv_heads * hd
        attn = h * q + 2 * h * kv + q * h
        if self.bias in ("qkv", "all"):
            attn += q + 2 * kv
        if self.bias == "all":
            attn += h
        attn = self.attn_params or attn  # DeepSeek's latent attention is not plain GQA
        if self.qk_norm:
            attn += 2 * hd
        return attn

    def _mlp_params(self, ffn: int) -> int:
        h = self.hidden
        if self.mlp == "swiglu":
            return 3 * h * ffn + (2 * ffn + h if self.bias == "all" else 0)
        return 2 * h * ffn + (ffn + h if self.bias == "all" else 0)

    def _mamba_params(self) -> int:
        """Megatron's MambaMixer (expand 2, a width-4 causal convolution with bias, no linear biases)."""
        inner = 2 * self.hidden
        heads = inner // self.mamba_head_dim
        groups_state = 2 * self.mamba_groups * self.mamba_state
        in_proj = self.hidden * (2 * inner + groups_state + heads)  # z, x, B, C and dt
        conv = (inner + groups_state) * (4 + 1)
        # dt_bias, A_log and D per head; the gated RMSNorm over the inner width; out_proj.
        return in_proj + conv + 3 * heads + inner + inner * self.hidden

    def hybrid_params(self, start: int, stop: int) -> int:
        """Parameters of a hybrid stack's layers start..stop-1 (each its own block, norms included)."""
        return sum(self._block_params(symbol) for symbol in self.hybrid[start:stop])

    def _block_params(self, symbol: str) -> int:
        """One layer of a hybrid stack: its block and the norm fused in front of it."""
        if symbol == "M":
            block = self._mamba_params()
        elif symbol == "*":
            block = self._attention_params()
        else:
            block = self._mlp_params(self.ffn_hidden)
        return block + self._norm_params()

    @property
    def is_moe(self) -> bool:
        """Whether the MLP is a mixture of experts."""
        return self.experts > 1

    def _norm_params(self) -> int:
        # A LayerNorm has a bias vector unless the model has no biases at all (nanoGPT's bias=False).
        return 2 * self.hidden if self.norm == "layernorm" and self.bias != "none" else self.hidden

    def _final_norm(self) -> int:
        return self._norm_params()

    def _shared_mlp(self) -> int:
        """The shared experts' one MLP in a MoE layer."""
        return self._mlp_params(self.shared_ffn) if self.shared_ffn else 0

    def plain_layer_params(self) -> int:
        """One of a MoE model's dense layers: its attention and norms, and one MLP of ffn_hidden."""
        return self.layer_params()[0] - self._shared_mlp() + self._mlp_params(self.ffn_hidden)

    def layer_params(self) -> tuple[int, int, int]:
        """(attention + norms + shared experts, one expert's MLP, router) parameters of one layer (a MoE one
        when the model has experts); a hybrid stack's mean layer as its dense part."""
        if self.hybrid:
            blocks = sum(self._block_params(symbol) for symbol in self.hybrid)
            return blocks // len(self.hybrid), 0, 0
        # The router's [experts, hidden] weight, and its bias with linear biases (Megatron's TopKRouter).
        router = (self.hidden + (self.bias == "all")) * self.experts if self.is_moe else 0
        mlp = self._mlp_params((self.expert_ffn or self.ffn_hidden) if self.is_moe else self.ffn_hidden)
        dense = (
            self._attention_params() + 2 * self._norm_params() + (self._shared_mlp() if self.is_moe else 0)
        )
        return dense, mlp, router

    def embedding_params(self) -> int:
        """Token embedding, LM head (unless tied) and learned positions."""
        emb = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        if self.position == "learned":
            emb += self.max_position * self.hidden
        return emb


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator: peak dense BF16 rate, memory as nvidia-smi reports it, power, links, clocks."""

    name: str
    display_name: str
    peak_bf16_tflops: float
    memory_mib: int
    tdp_w: int
    aliases: tuple[str, ...] = ()
    vendor: str = "nvidia"
    architecture: str = ""
    form_factor: str = "SXM"
    peak_fp8_tflops: float = 0.0
    mem_bandwidth_tbs: float = 0.0
    idle_power_w: int = 60
    link: str = "NVLink"
    link_gbs: float = 0.0  # per direction, per GPU
    idle_temp_c: int = 30
    load_temp_c: int = 70
    max_temp_c: int = 87
    sm_clock_max_mhz: int = 1500
    sm_clock_idle_mhz: int = 300
    mem_clock_max_mhz: int = 1500
    driver_version: str = "580.126.09"  # legacy: the job's driver comes from sim.stack.stack_for(cluster)
    cuda_version: str = "13.0"  # legacy: as driver_version
    mfu_typical: float = 0.40
    nvlinks: int = 0  # NVLink (xGMI) links per GPU: NCCL's intra-node channel count follows them

    @property
    def memory_gib(self) -> float:
        """Total device memory in GiB (nvidia-smi's MiB / 1024)."""
        return self.memory_mib / 1024.0

    @property
    def peak_flops(self) -> float:
        """Peak dense BF16 rate in FLOP/s."""
        return self.peak_bf16_tflops * 1e12


@dataclass(frozen=True)
class ClusterSpec:
    """A node type and its fabric: GPUs per node, NVLink and NIC bandwidths, host names."""

    name: str
    gpu: GpuSpec
    gpus_per_node: int
    display_name: str = ""
    intra_busbw_gbs: float = 200.0  # achieved ring all_reduce busbw inside a node, large messages
    nvls: bool = False
    nvls_busbw_gbs: float = 0.0
    intra_latency_us: float = 2.0
    nics_per_node: int = 8
    nic_gbps: float = 400.0
    nic_name: str = "mlx5"
    fabric: str = "InfiniBand"
    nic_efficiency: float = 0.9
    inter_latency_us: float = 5.0
    host_pattern: str = "{prefix}{index:03d}"
    host_prefix: str = "node-"
    index_base: int = 0
    cpu_model: str = "Intel(R) Xeon(R) CPU"
    cpu_cores: int = 64
    ram_gib: int = 1024
    storage: str = "nfs"
    bus_ids: tuple[str, ...] = ()
    # The machine as NCCL sees it (fakerun/render/nccl.py) and the software it runs (fakerun/sim/stack.py).
    stack: str = ""  # a key of sim.stack.STACKS ("cu130", "cu126", "rocm7.2"); "": the vendor's default
    driver_version: str = ""  # the node's GPU driver; "": the stack's
    transport: str = "ib"  # ib | roce | efa: NCCL's network (NET/IB over IB or RoCE, or the OFI plugin)
    oob_if: str = "ib0"  # the bootstrap interface NCCL picks (ib0, bond0, enp..., eth0)
    ib_gid_index: int = 3  # RoCE only: NCCL_IB_GID_INDEX the job sets (3: RoCE v2 over IPv4 on most hosts)
    # SHARP in the InfiniBand switches (Quantum/Quantum-2 aggregation): NCCL reaches it through CollNet with
    # HPC-X's plugin when the job sets NCCL_COLLNET_ENABLE=1 (render/nccl.py)
    sharp: bool = False
    mnnvl_domain: int = 0  # GPUs in one multi-node NVLink domain (72 on a GB200 NVL72); 0: none
    threads_per_core: int = 2  # SMT siblings per core (Grace: 1)
    cpu_sockets: int = 2  # NUMA nodes the GPUs are spread over

    @property
    def nic_bytes_per_gpu(self) -> float:
        """Achievable inter-node bytes/s per GPU (its share of the node's NICs)."""
        return self.nics_per_node * self.nic_gbps / 8.0 * 1e9 * self.nic_efficiency / self.gpus_per_node


@dataclass(frozen=True)
class StorageSpec:
    """Where checkpoints go: aggregate and per-node bandwidths in GB/s."""

    name: str
    read_gbs: float
    write_gbs: float
    display_name: str = ""
    kind: str = "nfs"
    mount: str = "/checkpoints"
    per_node_read_gbs: float = 0.0  # 0: same as the aggregate
    per_node_write_gbs: float = 0.0
    shared: bool = True  # False: node-local, the aggregate grows with the node count
    open_latency_ms: float = 1.0


@dataclass(frozen=True)
class PresetBundle:
    """The four presets a job is built from."""

    model: ModelSpec
    gpu: GpuSpec
    cluster: ClusterSpec
    storage: StorageSpec


# ----------------------------------------------------------------------------------------------------
# Parsing and validation

_T = TypeVar("_T")


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _coerce(key: str, typ: str, value: Any) -> Any:
    """Check one TOML value against the dataclass field type; raise ValueError with a short reason."""
    if typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"field '{key}' must be an integer, got {value!r}")
        return value
    if typ == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"field '{key}' must be a number, got {value!r}")
        return float(value)
    if typ == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"field '{key}' must be true or false, got {value!r}")
        return value
    if typ == "str":
        if not isinstance(value, str):
            raise ValueError(f"field '{key}' must be a string, got {value!r}")
        return value
    if typ == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"field '{key}' must be a list of strings, got {value!r}")
        return tuple(value)
    raise ValueError(f"field '{key}' cannot be set in a file")


def _build(cls: type[_T], data: Mapping[str, Any], special: Mapping[str, Callable[[Any], Any]]) -> _T:
    """Build a spec dataclass from a TOML table, checking names, types and required fields."""
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"unknown field '{key}'")
        kwargs[key] = special[key](value) if key in special else _coerce(key, str(known[key].type), value)
    missing = [
        name
        for name, f in known.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"missing field '{missing[0]}'")
    return cls(**kwargs)


# The physically sensible range of every numeric field, inclusive: wide enough for any real (or joke)
# hardware and model, narrow enough that no product, quotient or wait computed from them overflows.
_GIB_MIB = 1024
_RANGES: dict[type, dict[str, tuple[float, float]]] = {
    ModelSpec: {
        "layers": (1, 10_000),
        "hidden": (1, 1 << 20),
        "ffn_hidden": (1, 1 << 22),
        "heads": (1, 1 << 16),
        "kv_heads": (0, 1 << 16),  # 0: same as heads
        "vocab": (1, 1 << 24),
        "seq_len": (1, 1 << 27),
        "hf_params": (0, 1 << 44),  # 0: the layer formula's count
        "max_position": (0, 1 << 27),  # 0: seq_len
        "experts": (1, 1 << 16),
        "top_k": (1, 1 << 16),
        "head_width": (0, 1 << 16),
        "expert_ffn": (0, 1 << 22),
        "dense_layers": (0, 10_000),
        "attn_params": (0, 1 << 40),
        "global_batch": (1, 1 << 27),
        "micro_batch": (1, 1 << 20),
        "warmup_steps": (0, MAX_STEPS),
        "total_steps": (1, MAX_STEPS),
        "tp": (1, 1 << 16),
        "pp": (1, 1 << 16),
        "ep": (1, 1 << 16),
        "zero_stage": (0, 3),
        "default_nnodes": (1, MAX_NNODES),
        "published_params": (0.0, 1e15),
        "published_active_params": (0.0, 1e15),
        "rope_theta": (1.0, 1e12),
        "norm_eps": (1e-30, 1.0),
        "lr": (1e-12, 100.0),
        "min_lr_ratio": (0.0, 1.0),
        "shared_ffn": (0, 1 << 22),
        "mamba_state": (1, 1 << 16),
        "mamba_head_dim": (1, 1 << 16),
        "mamba_groups": (1, 1 << 16),
    },
    GpuSpec: {
        "peak_bf16_tflops": (0.01, 1e5),
        "peak_fp8_tflops": (0.0, 2e5),  # 0: not stated
        "mem_bandwidth_tbs": (0.0, 1e3),
        "link_gbs": (0.0, 1e5),
        "mfu_typical": (0.0, 1.0),
        "memory_mib": (1, 16 * 1024 * _GIB_MIB),  # 16 TiB
        "tdp_w": (1, 100_000),
        "idle_power_w": (1, 100_000),
        "idle_temp_c": (0, 150),
        "load_temp_c": (0, 150),
        "max_temp_c": (0, 150),
        "sm_clock_max_mhz": (1, 100_000),
        "sm_clock_idle_mhz": (1, 100_000),
        "mem_clock_max_mhz": (1, 100_000),
        "nvlinks": (0, 64),
    },
    ClusterSpec: {
        "gpus_per_node": (1, MAX_NPROC_PER_NODE),
        "intra_busbw_gbs": (0.1, 1e5),
        "nvls_busbw_gbs": (0.0, 1e5),
        "intra_latency_us": (0.0, 1e6),
        "nics_per_node": (1, 1024),
        "nic_gbps": (0.1, 1e5),
        "nic_efficiency": (0.01, 1.0),
        "inter_latency_us": (0.0, 1e6),
        "index_base": (0, 1_000_000_000),
        "cpu_cores": (2, 1 << 20),  # NCCL's topology pairs SMT siblings: at least 2
        "ram_gib": (1, 1 << 30),
        "ib_gid_index": (0, 255),
        "mnnvl_domain": (0, 1 << 16),
        "threads_per_core": (1, 8),
        "cpu_sockets": (1, 16),
    },
    StorageSpec: {
        "read_gbs": (0.01, 1e6),
        "write_gbs": (0.01, 1e6),
        "per_node_read_gbs": (0.0, 1e6),  # 0: same as the aggregate
        "per_node_write_gbs": (0.0, 1e6),
        "open_latency_ms": (0.0, 1e6),
    },
}
_MAX_HOST_NAME = 253  # DNS's limit on a full host name
_MAX_BUS_IDS = MAX_NPROC_PER_NODE


def field_range(cls: type, name: str) -> tuple[float, float]:
    """The inclusive range a numeric field of ModelSpec, GpuSpec, ClusterSpec or StorageSpec must lie in."""
    return _RANGES[cls][name]


def _number_text(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _check_ranges(spec: object) -> None:
    """ValueError unless every numeric field is within its range of _RANGES."""
    for name, (low, high) in _RANGES[type(spec)].items():
        value = getattr(spec, name)
        if not low <= value <= high:
            raise ValueError(
                f"field '{name}' must be within [{_number_text(low)}, {_number_text(high)}], "
                f"got {_number_text(value)}"
            )


def _one_of(spec: object, name: str, allowed: tuple[Any, ...]) -> None:
    if getattr(spec, name) not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise ValueError(f"field '{name}' must be one of {choices}, got {getattr(spec, name)!r}")


def _check_model(m: ModelSpec) -> None:
    _check_ranges(m)
    if not m.head_width and m.hidden % m.heads:
        raise ValueError(f"hidden={m.hidden} is not divisible by heads={m.heads}")
    if m.heads % m.kv_heads:
        raise ValueError(f"heads={m.heads} is not divisible by kv_heads={m.kv_heads}")
    if m.top_k > m.experts:
        raise ValueError(f"top_k={m.top_k} exceeds experts={m.experts}")
    _one_of(m, "position", ("rope", "learned", "none"))
    _one_of(m, "mlp", ("swiglu", "gelu"))
    _one_of(m, "norm", ("rmsnorm", "layernorm"))
    _one_of(m, "bias", ("none", "qkv", "all"))
    _one_of(m, "zero_stage", (0, 1, 2, 3))
    _one_of(m, "recompute", ("none", "selective", "full"))


def _check_gpu(g: GpuSpec) -> None:
    _check_ranges(g)
    if not 0.0 < g.mfu_typical < 1.0:
        raise ValueError(f"field 'mfu_typical' must be within (0, 1), got {g.mfu_typical!r}")
    if not g.idle_temp_c < g.load_temp_c <= g.max_temp_c:
        raise ValueError("temperatures must satisfy idle_temp_c < load_temp_c <= max_temp_c")
    if not 0 < g.idle_power_w < g.tdp_w:
        raise ValueError("field 'idle_power_w' must be between 0 and tdp_w")


def check_bus_ids(values: Sequence[object]) -> tuple[str, ...]:
    """PCI bus numbers of a node's GPUs ("18", "2A": one or two hex digits); ValueError naming a bad one."""
    # The one check of bus ids: cluster files go through it, and so does fakerun-smi's reading of a job state.
    if len(values) > _MAX_BUS_IDS:
        raise ValueError(f"field 'bus_ids' lists {len(values)} GPUs, more than {_MAX_BUS_IDS}")
    for value in values:
        # A bus number, or domain:bus where GPUs sit in other PCI domains (Grace: "0008:01").
        if not (isinstance(value, str) and re.fullmatch(r"(?:[0-9A-Fa-f]{4}:)?[0-9A-Fa-f]{1,2}", value)):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise ValueError(
                f'field \'bus_ids\' must list PCI bus numbers of 1 or 2 hex digits (e.g. "18", "2A", '
                f'"0008:01"), '
                f"got {shown}"
            )
    return tuple(str(v) for v in values)


def _check_host_pattern(c: ClusterSpec) -> None:
    """ValueError unless host_pattern formats {prefix} and {index} into host names of at most 253 chars."""
    try:
        fields = list(string.Formatter().parse(c.host_pattern))
    except ValueError as exc:
        raise ValueError(f"bad host_pattern {c.host_pattern!r} ({exc!s})") from None
    for _, name, spec, _ in fields:
        if name is None:
            continue
        # Only the two names, no attribute or item access; a format spec with its own {fields} or a width
        # of millions would make str.format build a huge string before any length could be checked.
        if (
            name not in ("prefix", "index", "ip")
            or "{" in (spec or "")
            or any(int(n) > _MAX_HOST_NAME for n in re.findall(r"\d+", spec or ""))
        ):
            raise ValueError(
                f"bad host_pattern {c.host_pattern!r} "
                "(use {prefix}, {index} or {ip}, e.g. {index:03d})"
            )
    try:
        longest = max(
            (
                c.host_pattern.format(prefix=c.host_prefix, index=index, ip=_vpc_ip(c, index))
                for index in (c.index_base, c.index_base + MAX_NNODES - 1)
            ),
            key=len,
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad host_pattern {c.host_pattern!r} ({exc!s})") from None
    if len(longest) > _MAX_HOST_NAME:
        raise ValueError(f"host names from host_pattern and host_prefix exceed {_MAX_HOST_NAME} characters")


def _check_cluster(c: ClusterSpec) -> None:
    _check_ranges(c)
    if c.nvls and c.nvls_busbw_gbs <= 0:
        raise ValueError("field 'nvls_busbw_gbs' must be positive when nvls = true")
    check_bus_ids(c.bus_ids)
    _check_host_pattern(c)
    _one_of(c, "transport", ("ib", "roce", "efa"))
    if c.sharp and (c.transport != "ib" or c.gpu.vendor != "nvidia"):
        raise ValueError("field 'sharp' needs transport = \"ib\" and NVIDIA GPUs (NCCL's SHARP plugin)")
    if c.stack and c.stack not in stack.STACKS:
        raise ValueError(f"field 'stack' must be one of {', '.join(stack.STACKS)}, got {c.stack!r}")
    if c.stack and stack.STACKS[c.stack].vendor != c.gpu.vendor:
        raise ValueError(
            f"field 'stack' {c.stack!r} is for {stack.STACKS[c.stack].vendor} GPUs, not {c.gpu.vendor}"
        )
    if c.driver_version:
        if not re.fullmatch(r"\d{1,4}(\.\d{1,4}){1,3}", c.driver_version):
            raise ValueError(f"field 'driver_version' must look like 580.126.09, got {c.driver_version!r}")
        if c.gpu.vendor == "nvidia":
            stack.driver_cuda_version(c.driver_version)  # ValueError for an unknown driver branch
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,14}", c.oob_if):
        raise ValueError(f"field 'oob_if' must be a network interface name, got {c.oob_if!r}")
    if c.cpu_cores % c.cpu_sockets:
        raise ValueError(f"cpu_cores={c.cpu_cores} is not divisible by cpu_sockets={c.cpu_sockets}")
    if c.mnnvl_domain and (c.mnnvl_domain < c.gpus_per_node or c.mnnvl_domain % c.gpus_per_node):
        raise ValueError("field 'mnnvl_domain' must be a multiple of gpus_per_node")


def _check_storage(s: StorageSpec) -> None:
    _check_ranges(s)


_CHECKS: dict[str, Callable[[Any], None]] = {
    "models": _check_model,
    "gpus": _check_gpu,
    "clusters": _check_cluster,
    "storage": _check_storage,
}
_CLASSES: dict[str, type] = {
    "models": ModelSpec,
    "gpus": GpuSpec,
    "clusters": ClusterSpec,
    "storage": StorageSpec,
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _parse(kind: str, text: str, where: str, stem: str) -> Any:
    """Parse and validate one preset file's text; raise PresetError naming the file on any problem."""
    label = f"bad {_SINGULAR[kind]} file '{where}'"
    try:
        data = tomlfile.loads(text)
    except tomlfile.TomlError as exc:
        raise PresetError(f"{label}: {exc}") from None
    data.setdefault("name", stem)
    special: dict[str, Callable[[Any], Any]] = {}
    if kind == "clusters":
        special["gpu"] = _cluster_gpu
    try:
        spec: Any = _build(_CLASSES[kind], data, special)
        _CHECKS[kind](spec)
    except PresetError as exc:
        raise PresetError(f"{label}: {exc}") from None
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise PresetError(f"{label}: {_one_line(str(exc))}") from None
    return spec


def _cluster_gpu(value: Any) -> GpuSpec:
    if not isinstance(value, str):
        raise ValueError(f"field 'gpu' must be a GPU preset name, got {value!r}")
    try:
        return load_gpu(value)
    except PresetError as exc:
        raise PresetError(f"field 'gpu': {exc}") from None


# ----------------------------------------------------------------------------------------------------
# The shipped presets


def _root() -> Traversable:
    return resources.files("fakerun") / "configs"


@functools.cache
def _shipped_file(kind: str, stem: str) -> Any:
    """One shipped preset by file name, or None; loading one preset does not parse all the others."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,127}", stem):  # longer is no shipped name (nor a file name)
        return None
    entry = _root() / kind / f"{stem}.toml"
    if not entry.is_file():
        return None
    return _parse(kind, entry.read_text(encoding="utf-8"), f"configs/{kind}/{stem}.toml", stem)


@functools.cache
def _shipped(kind: str) -> dict[str, Any]:
    """All shipped presets of one kind, by canonical name, in display order."""
    specs: list[Any] = []
    for entry in (_root() / kind).iterdir():
        if entry.name.endswith(".toml"):
            specs.append(_shipped_file(kind, entry.name[: -len(".toml")]))
    if kind == "models":
        specs.sort(key=lambda m: (m.joke, m.family, m.params, m.name))
    elif kind == "gpus":
        specs.sort(key=lambda g: (g.vendor != "nvidia", g.peak_bf16_tflops, g.memory_mib, g.name))
    else:
        specs.sort(key=lambda s: s.name)
    return {s.name: s for s in specs}


@functools.cache
def _aliases(kind: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, spec in _shipped(kind).items():
        names = list(getattr(spec, "aliases", ()))
        hf = getattr(spec, "hf_name", "")
        if hf:
            names += [hf, hf.split("/")[-1]]
        for alias in names:
            out.setdefault(_norm(alias), name)
        out[_norm(name)] = name
    return out


def _looks_like_path(text: str) -> bool:
    if text.endswith(".toml"):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name longer than any file name (ENAMETOOLONG) is no file
        return False


def _shown_name(text: str) -> str:
    """repr() of a name or path for an error line, shortened when it is absurdly long."""
    shown = repr(text)
    return shown if len(shown) <= 200 else f"{shown[:150]}...{shown[-20:]} ({len(text)} characters)"


def _load(kind: str, name_or_path: str) -> Any:
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise PresetError(f"empty {_SINGULAR[kind]} name (choose from: {', '.join(_shipped(kind))})")
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        try:
            text = tomlfile.read_text(str(path))
        except tomlfile.FileError as exc:
            if exc.missing:
                raise PresetError(f"{_SINGULAR[kind]} file {_shown_name(name_or_path)} not found") from None
            raise PresetError(
                f"cannot read {_SINGULAR[kind]} file {_shown_name(name_or_path)}: {exc.reason}"
            ) from None
        return _parse(kind, text, name_or_path, path.stem)
    direct = _shipped_file(kind, _norm(name_or_path))
    if direct is not None:
        return direct
    hit = _aliases(kind).get(_norm(name_or_path))
    if hit is not None:
        return _shipped(kind)[hit]
    if kind == "models":
        model = model_from_hf_name(name_or_path)
        if model is not None:
            return model
    raise PresetError(
        f"unknown {_SINGULAR[kind]} {_shown_name(name_or_path)} (choose from: {', '.join(_shipped(kind))})"
    )


def load_model(name_or_path: str) -> ModelSpec:
    """A model preset by name (case-insensitive, aliases and Hugging Face names too) or from a TOML file."""
    spec: ModelSpec = _load("models", name_or_path)
    return spec


def load_gpu(name_or_path: str) -> GpuSpec:
    """A GPU preset by name (case-insensitive, aliases too) or from a TOML file."""
    spec: GpuSpec = _load("gpus", name_or_path)
    return spec


def load_cluster(name_or_path: str) -> ClusterSpec:
    """A cluster preset by name (case-insensitive) or from a TOML file."""
    spec: ClusterSpec = _load("clusters", name_or_path)
    return spec


def load_storage(name_or_path: str) -> StorageSpec:
    """A storage preset by name (case-insensitive) or from a TOML file."""
    spec: StorageSpec = _load("storage", name_or_path)
    return spec


def list_presets() -> dict[str, list[str]]:
    """The shipped preset names by kind ("models", "gpus", "clusters", "storage"), in display order."""
    return {kind: list(_shipped(kind)) for kind in KINDS}


# ----------------------------------------------------------------------------------------------------
# Hugging Face names

_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z0-9])")
_MOE_SIZE = re.compile(r"(\d+)x(\d+(?:\.\d+)?)b(?![a-z0-9])")


def _hf_key(name: str) -> tuple[str, str] | None:
    """(family and version, size) read from a Hugging Face repo id or a local checkpoint path."""
    text = _norm(name.rstrip("/").split("/")[-1]).replace("meta-", "")
    moe = _MOE_SIZE.search(text)
    if "mixtral" in text:
        return ("mixtral", f"{moe.group(1)}x{moe.group(2)}b") if moe else None
    size_match = _SIZE.search(text)
    size = f"{size_match.group(1)}{size_match.group(2)}" if size_match else ""
    llama = re.search(r"llama-?(\d+(?:\.\d+)?)", text)
    if llama:
        version = llama.group(1)
        major, _, minor = version.partition(".")
        family = "llama3.2" if (major, minor) == ("3", "2") else f"llama{major}"
        return (family, size) if size else None
    if "mistral" in text:
        return ("mistral", size or "7b")
    qwen = re.search(r"qwen-?(\d+)", text)
    if qwen:
        return (f"qwen{qwen.group(1)}", size) if size else None
    if re.search(r"gpt-?3|davinci", text):
        return ("gpt3", size or "175b")
    if re.search(r"gpt-?2", text):
        if "xl" in text or "medium" in text or "large" in text:
            return None
        return ("gpt2", size or "124m")
    return None


@functools.cache
def _hf_index() -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for name, model in _shipped("models").items():
        if model.joke:
            continue
        for hf in (model.hf_name, *model.aliases):
            key = _hf_key(hf)
            if key is not None:
                out.setdefault(key, name)
    return out


def model_from_hf_name(name: str) -> ModelSpec | None:
    """The preset for a --model_name_or_path value (repo id or local path), or None when nothing matches."""
    if not name or not name.strip():
        return None
    shipped: dict[str, ModelSpec] = _shipped("models")
    aliases = _aliases("models")
    exact = aliases.get(_norm(name.rstrip("/"))) or aliases.get(_norm(name.rstrip("/").split("/")[-1]))
    if exact is not None:
        return shipped[exact]
    key = _hf_key(name)
    if key is None:
        return None
    hit = _hf_index().get(key)
    if hit is None and key[0] == "qwen2":  # Qwen2 and Qwen2.5 share their shapes at 7B and 72B
        hit = _hf_index().get(("qwen2.5", key[1]))
    return shipped[hit] if hit is not None else None


# ----------------------------------------------------------------------------------------------------
# Helpers


def _vpc_ip(cluster: ClusterSpec, node_index: int) -> str:
    """A node's private IPv4 in the cluster's one /16 VPC subnet, dashed as EC2 host names spell it."""
    h = rand.hash64(0, "vpc-subnet", rand.stream_id(cluster.name))
    # EC2 scatters addresses over the subnet: a multiplier prime to 65532 permutes the host numbers,
    # so no two nodes share one (past 65532 nodes they repeat); the first four are AWS's own.
    host = (node_index * 40501 + (h >> 16)) % 65532 + 4
    return f"10-{1 + h % 254}-{host >> 8}-{host & 0xFF}"


def host_name(cluster: ClusterSpec, node_index: int) -> str:
    """The simulated host name of node `node_index` (0-based) of a cluster."""
    index = node_index + cluster.index_base
    return cluster.host_pattern.format(prefix=cluster.host_prefix, index=index, ip=_vpc_ip(cluster, index))


def with_gpu(cluster: ClusterSpec, gpu: GpuSpec) -> ClusterSpec:
    """The cluster with another GPU in its nodes; NVLink figures scale with the GPU's link bandwidth."""
    if gpu == cluster.gpu:
        return cluster
    scale = gpu.link_gbs / cluster.gpu.link_gbs if cluster.gpu.link_gbs > 0 and gpu.link_gbs > 0 else 1.0
    # NVLink SHARP needs NVSwitch generation 3 (Hopper) or later.
    nvls = cluster.nvls and gpu.vendor == "nvidia" and gpu.architecture not in ("Ampere", "Volta")
    return dataclasses.replace(
        cluster,
        gpu=gpu,
        intra_busbw_gbs=cluster.intra_busbw_gbs * scale,
        nvls=nvls,
        nvls_busbw_gbs=cluster.nvls_busbw_gbs * scale if nvls else 0.0,
    )


def resolve(
    model: str | ModelSpec,
    gpu: str | GpuSpec | None = None,
    cluster: str | ClusterSpec | None = None,
    storage: str | StorageSpec | None = None,
) -> PresetBundle:
    """Model, GPU, cluster and storage with defaults: the cluster from the model, the GPU from the cluster."""
    m = load_model(model) if isinstance(model, str) else model
    g = load_gpu(gpu) if isinstance(gpu, str) else gpu
    if cluster is not None:
        c = load_cluster(cluster) if isinstance(cluster, str) else cluster
    elif g is not None:
        default = load_cluster(m.default_cluster)
        same = [c for c in _shipped("clusters").values() if c.gpu.name == g.name]
        c = default if default.gpu.name == g.name or not same else same[0]
    else:
        c = load_cluster(m.default_cluster)
    if g is not None:
        c = with_gpu(c, g)
    s = storage if isinstance(storage, StorageSpec) else load_storage(storage or c.storage)
    return PresetBundle(model=m, gpu=c.gpu, cluster=c, storage=s)
