"""The software stack a job runs on: torch build, CUDA (or ROCm), NCCL (or RCCL) and the GPU driver.

A version pins a format, so the stack is chosen once per job, from the cluster preset, and every line
that names or depends on a version (NCCL INFO, nvidia-smi's header, torch's warnings) follows it.

Default: torch 2.13.0+cu130. torch 2.13's wheels pin NCCL through `nvidia-nccl-cu13==2.29.7` (pytorch
.ci/docker/ci_commit_pins/nccl.txt; CUDA 12.6 builds use nccl-cu126.txt = v2.29.3-1 through
`nvidia-nccl-cu12==2.29.3`). NCCL prints the CUDA toolkit it was *built* with, not torch's: the
nvidia-nccl-cu13 2.29.7 wheel prints `NCCL version 2.29.7+cuda13.2`, nvidia-nccl-cu12 2.29.3 prints
`2.29.3+cuda12.9` (both as seen in public logs of those wheels). CUDA 13.0 needs a 580-series driver, so
nvidia-smi says `CUDA Version: 13.0` and NCCL `cudaDriverVersion 13000`.

`cu130-efa`: the same torch and NCCL on an AWS DLAMI, with its network plugin aws-ofi-nccl 1.19.0 over
libfabric 2.4 (EFA installer 1.48).

Pinned older stacks: `cu126` (torch 2.13.0+cu126 on a 535 driver: nvidia-smi `CUDA Version: 12.2`,
`cudaDriverVersion 12020`, CUDA minor-version compatibility lets 12.6 code run there) and `rocm7.2`
(torch 2.13.0+rocm7.2 with ROCm 7.2.0's RCCL 2.27.7, which prints its own multi-line version block).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fakerun.presets import ClusterSpec

__all__ = [
    "DEFAULT_STACK",
    "DRIVER_CUDA",
    "NCCL_FORMATS",
    "STACKS",
    "NcclFormat",
    "Stack",
    "driver_cuda_version",
    "nccl_format",
    "stack_for",
]


@dataclass(frozen=True)
class NcclFormat:
    """A release family whose INFO lines share one set of forms (render/nccl.py NCCL_FORMS[name])."""

    name: str  # "2.29": NCCL 2.29.x; "2.27-rccl": RCCL 2.27.x
    rccl: bool = False  # RCCL's version block (`RCCL version : x-HEAD:sha`, HIP, ROCm, host, library path)


# The families with a line table. Between the v2.29.3-1 and v2.29.7-1 tags the INFO strings of a default
# init are the same (the diff adds the GIN/RMA plugin lines, which the 2.29.3 wheels already print);
# RCCL 2.27.7 is NCCL 2.27's code with AMD's additions.
NCCL_FORMATS: dict[str, NcclFormat] = {
    "2.29": NcclFormat("2.29"),
    "2.27-rccl": NcclFormat("2.27-rccl", rccl=True),
}


@dataclass(frozen=True)
class Stack:
    """One job's software: torch build, CUDA (HIP for ROCm), NCCL (RCCL) and driver versions."""

    name: str  # the key in STACKS: "cu130", "cu126", "rocm7.2"
    vendor: str  # "nvidia" | "amd"
    torch: str  # torch.__version__: "2.13.0+cu130"
    cuda: str  # the CUDA (HIP) runtime torch was built with: torch.version.cuda / torch.version.hip
    nccl: str  # the NCCL (RCCL) release: "2.29.7"
    nccl_build_cuda: str  # the toolkit NCCL was built with, after `+cuda` (or the HIP version for RCCL)
    nccl_git: (
        str  # `NCCL git version` branch and commit as the build prints them; RCCL: the commit after HEAD:
    )
    driver: str  # the kernel driver: nvidia-smi's `Driver Version` (amdgpu's for ROCm)
    rocm: str = ""  # the ROCm release for AMD stacks ("7.2.0"); "" for CUDA
    # AWS's network plugin (EFA clusters): aws-ofi-nccl, its libfabric, the CUDA runtime it was built with.
    ofi_nccl: str = ""
    libfabric: str = ""
    ofi_cuda_runtime: int = 0  # as cudaRuntimeGetVersion() gives it: 12090 for CUDA 12.9

    @property
    def driver_cuda(self) -> str:
        """The CUDA version the driver supports: nvidia-smi's `CUDA Version` (the ROCm release on AMD)."""
        return self.rocm if self.vendor == "amd" else driver_cuda_version(self.driver)

    @property
    def cuda_driver_version(self) -> int:
        """cudaDriverGetVersion() as NCCL prints it in `cudaDriverVersion`: 13000 for CUDA 13.0."""
        major, _, minor = self.driver_cuda.partition(".")
        return int(major) * 1000 + int(minor.partition(".")[0] or 0) * 10

    @property
    def nccl_version_line(self) -> str:
        """What NCCL prints once per process as `NCCL version ...` (RCCL: the first line of its block)."""
        if self.vendor == "amd":
            return f"RCCL version : {self.nccl}-HEAD:{self.nccl_git}"
        return f"NCCL version {self.nccl}+cuda{self.nccl_build_cuda}"

    @property
    def format(self) -> NcclFormat:
        """The line forms of this stack's NCCL release."""
        return nccl_format(self.nccl, rccl=self.vendor == "amd")


# The CUDA version a driver branch supports (nvidia-smi's header); the branch is the driver's first field.
DRIVER_CUDA: dict[int, str] = {
    470: "11.4",
    515: "11.7",
    525: "12.0",
    535: "12.2",
    545: "12.3",
    550: "12.4",
    555: "12.5",
    560: "12.6",
    565: "12.7",
    570: "12.8",
    575: "12.9",
    580: "13.0",
    590: "13.1",
}


def driver_cuda_version(driver: str) -> str:
    """The CUDA version a driver supports, from its branch (535.183.01 -> 12.2); ValueError if unknown."""
    head = driver.partition(".")[0]
    if not head.isdigit() or int(head) not in DRIVER_CUDA:
        raise ValueError(f"unknown driver branch {driver!r} (known: {', '.join(map(str, DRIVER_CUDA))})")
    return DRIVER_CUDA[int(head)]


def nccl_format(version: str, *, rccl: bool = False) -> NcclFormat:
    """The line forms of an NCCL (or RCCL) release; ValueError for a release without a table entry."""
    parts = version.split(".")
    family = ".".join(parts[:2]) + ("-rccl" if rccl else "")
    if family not in NCCL_FORMATS:
        raise ValueError(f"no NCCL line format for {'RCCL' if rccl else 'NCCL'} {version}")
    return NCCL_FORMATS[family]


STACKS: dict[str, Stack] = {
    "cu130": Stack(
        name="cu130",
        vendor="nvidia",
        torch="2.13.0+cu130",
        cuda="13.0",
        nccl="2.29.7",
        nccl_build_cuda="13.2",
        nccl_git="master 3619159",
        driver="580.126.09",
    ),
    "cu126": Stack(
        name="cu126",
        vendor="nvidia",
        torch="2.13.0+cu126",
        cuda="12.6",
        nccl="2.29.3",
        nccl_build_cuda="12.9",
        nccl_git="stable dcf2a2fbe",
        driver="535.183.01",
    ),
    "rocm7.2": Stack(
        name="rocm7.2",
        vendor="amd",
        torch="2.13.0+rocm7.2",
        cuda="7.2.26015",
        nccl="2.27.7",
        nccl_build_cuda="7.2.26015-fc0010cf6a",
        nccl_git="0d2c4fd",
        driver="6.16.6",
        rocm="7.2.0",
    ),
}
# An AWS Deep Learning AMI/Container of early 2026 (EFA installer 1.48): torch's cu130 wheels beside
# aws-ofi-nccl 1.19.0 (built against CUDA 12.9) and libfabric 2.4, on the 580.105.08 driver of p5 nodes.
STACKS["cu130-efa"] = replace(
    STACKS["cu130"],
    name="cu130-efa",
    driver="580.105.08",
    ofi_nccl="1.19.0",
    libfabric="2.4",
    ofi_cuda_runtime=12090,
)
DEFAULT_STACK = STACKS["cu130"]
_VENDOR_DEFAULT = {"nvidia": "cu130", "amd": "rocm7.2"}


def stack_for(cluster: ClusterSpec) -> Stack:
    """The stack of a job on a cluster preset: its pinned stack (or the vendor's default), its driver."""
    name = cluster.stack or _VENDOR_DEFAULT[cluster.gpu.vendor]
    stack = STACKS[name]
    if cluster.driver_version and cluster.driver_version != stack.driver:
        stack = replace(stack, driver=cluster.driver_version)
    return stack
