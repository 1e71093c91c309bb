"""What `--fake-list-presets` and `--fake-version` print: the presets' key figures, fakerun's versions."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

from fakerun import presets
from fakerun.sim.stack import Stack

__all__ = ["preset_lines", "version_lines"]

# The option that selects each kind of preset, named in the listing's headings.
_OPTIONS = {
    "models": "--fake-model",
    "gpus": "--fake-gpu",
    "clusters": "--fake-cluster",
    "storage": "--fake-storage",
}


def _gib(mib: int) -> str:
    """Device memory as nvidia-smi's MiB in GiB, whole when it is (`80 GiB`, `141 GiB`)."""
    return f"{mib / 1024:g} GiB" if mib % 1024 == 0 else f"{mib / 1024:.1f} GiB"


def _model_row(m: presets.ModelSpec) -> list[str]:
    from fakerun.dialects.base import count  # it loads every dialect: --fake-version does without

    active = f" ({count(m.active_params)} active)" if m.active_params != m.params else ""
    nodes = "node" if m.default_nnodes == 1 else "nodes"
    return [
        m.name,
        f"{count(m.params)} params{active}",
        f"{m.layers} layers",
        f"seq {m.seq_len}",
        f"default {m.default_cluster} x {m.default_nnodes} {nodes}",
    ]


def _gpu_row(g: presets.GpuSpec) -> list[str]:
    return [
        g.name,
        g.display_name,
        _gib(g.memory_mib),
        f"{g.peak_bf16_tflops:g} TFLOPS bf16",
        f"{g.link} {g.link_gbs:g} GB/s",
        f"{g.tdp_w} W",
    ]


def _cluster_row(c: presets.ClusterSpec) -> list[str]:
    nvls = " NVLS" if c.nvls else ""
    return [
        c.name,
        f"{c.gpus_per_node} x {c.gpu.name} ({_gib(c.gpu.memory_mib)})",
        f"{c.gpu.link} {c.intra_busbw_gbs:g} GB/s busbw{nvls}",
        f"{c.nics_per_node} x {c.nic_gbps:g} Gb/s {c.fabric}",
        f"{c.ram_gib} GiB RAM",
        f"storage {c.storage}",
    ]


def _storage_row(s: presets.StorageSpec) -> list[str]:
    per_node = f"per node {s.per_node_read_gbs or s.read_gbs:g}/{s.per_node_write_gbs or s.write_gbs:g} GB/s"
    return [
        s.name,
        s.display_name or s.kind,
        "shared" if s.shared else "node-local",
        f"read {s.read_gbs:g} GB/s",
        f"write {s.write_gbs:g} GB/s",
        per_node,
    ]


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows in columns two spaces apart, indented under their heading; no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def preset_lines() -> list[str]:
    """Every shipped preset, by kind, one line each with its key figures."""
    rows = {
        "models": [_model_row(presets.load_model(n)) for n in presets.list_presets()["models"]],
        "gpus": [_gpu_row(presets.load_gpu(n)) for n in presets.list_presets()["gpus"]],
        "clusters": [_cluster_row(presets.load_cluster(n)) for n in presets.list_presets()["clusters"]],
        "storage": [_storage_row(presets.load_storage(n)) for n in presets.list_presets()["storage"]],
    }
    lines: list[str] = []
    for kind in presets.KINDS:
        lines.append(f"{kind} ({_OPTIONS[kind]}):")
        lines.extend(_table(rows[kind]))
    return lines


def fakerun_version() -> str:
    """The installed distribution's version; a source tree that was never installed has none."""
    try:
        return metadata.version("fakerun")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def version_lines(stack: Stack, cluster: str) -> list[str]:
    """`fakerun X`, then the software stack a job on `cluster` simulates, as its logs name it."""
    runtime = f"ROCm {stack.rocm} (HIP {stack.cuda})" if stack.vendor == "amd" else f"CUDA {stack.cuda}"
    nccl = f"{'RCCL' if stack.vendor == 'amd' else 'NCCL'} {stack.nccl}"
    return [
        f"fakerun {fakerun_version()}",
        f"simulates torch {stack.torch}, {runtime}, {nccl}, driver {stack.driver} (on {cluster})",
    ]
