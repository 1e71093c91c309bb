"""The software stack: torch 2.13's pins, driver and CUDA agreeing, one stack per cluster preset."""

from __future__ import annotations

import dataclasses
import re

import pytest

from fakerun import presets
from fakerun.sim import stack
from fakerun.sim.stack import DEFAULT_STACK, STACKS, driver_cuda_version, nccl_format, stack_for


class TestPins:
    def test_default_is_torch_2_13_cu130(self) -> None:
        """torch 2.13.0+cu130 ships NCCL 2.29.7 (nvidia-nccl-cu13==2.29.7) and needs a 580 driver."""
        s = DEFAULT_STACK
        assert (s.torch, s.cuda, s.nccl) == ("2.13.0+cu130", "13.0", "2.29.7")
        assert s.driver.startswith("580.") and s.driver_cuda == "13.0" and s.cuda_driver_version == 13000

    def test_cu126_build_pins_2_29_3(self) -> None:
        """torch's CUDA 12.6 builds take nccl-cu126.txt (v2.29.3-1), printed with the cu12 wheel's 12.9."""
        s = STACKS["cu126"]
        assert s.torch.endswith("+cu126") and s.nccl == "2.29.3"
        assert s.nccl_version_line == "NCCL version 2.29.3+cuda12.9"

    @pytest.mark.parametrize("name", list(STACKS))
    def test_every_stack_is_consistent(self, name: str) -> None:
        """The torch suffix names the CUDA (ROCm) release; the driver supports the CUDA torch targets."""
        s = STACKS[name]
        assert s.name == name
        major_minor = tuple(int(x) for x in s.cuda.split(".")[:2])
        if s.vendor == "nvidia":
            assert s.torch.endswith("+cu" + s.cuda.replace(".", ""))
            driver = tuple(int(x) for x in s.driver_cuda.split("."))
            # Same major: minor-version compatibility; a newer major needs a newer driver.
            assert driver[0] == major_minor[0] or driver > major_minor
            assert re.fullmatch(r"NCCL version \d+\.\d+\.\d+\+cuda\d+\.\d+", s.nccl_version_line)
        else:
            assert s.torch.endswith("+rocm" + ".".join(s.rocm.split(".")[:2]))
            assert s.nccl_version_line.startswith("RCCL version : " + s.nccl + "-HEAD:")
        assert s.format is nccl_format(s.nccl, rccl=s.vendor == "amd")


class TestDrivers:
    @pytest.mark.parametrize(
        ("driver", "cuda"), [("535.183.01", "12.2"), ("580.126.09", "13.0"), ("570.1.2", "12.8")]
    )
    def test_branch_to_cuda(self, driver: str, cuda: str) -> None:
        """nvidia-smi's CUDA Version is the driver branch's, whatever the patch level."""
        assert driver_cuda_version(driver) == cuda

    @pytest.mark.parametrize("driver", ["", "abc", "999.1.1", "4.1"])
    def test_unknown_branch(self, driver: str) -> None:
        """A driver of an unknown branch is refused rather than given a made-up CUDA version."""
        with pytest.raises(ValueError):
            driver_cuda_version(driver)

    def test_unknown_nccl_release(self) -> None:
        """A release without a line table is refused."""
        with pytest.raises(ValueError):
            nccl_format("2.5.6")


class TestPresets:
    @pytest.mark.parametrize("name", presets.list_presets()["clusters"])
    def test_each_cluster_has_a_stack_of_its_vendor(self, name: str) -> None:
        """Every cluster preset resolves to a stack for its GPU vendor, with the preset's driver."""
        c = presets.load_cluster(name)
        s = stack_for(c)
        assert s.vendor == c.gpu.vendor
        assert s.driver == (c.driver_version or STACKS[s.name].driver)

    def test_presets_differ(self) -> None:
        """The A100 cluster keeps its older pinned stack; the AMD node runs ROCm; the rest torch's default."""
        a100, h100, amd = (presets.load_cluster(n) for n in ("dgx-a100", "dgx-h100", "mi300x-node"))
        assert stack_for(a100).nccl != stack_for(h100).nccl
        assert stack_for(a100).driver_cuda == "12.2" and stack_for(h100).driver_cuda == "13.0"
        assert stack_for(amd).vendor == "amd"

    def test_default_by_vendor(self) -> None:
        """A cluster that pins nothing gets its vendor's default stack and driver."""
        c = dataclasses.replace(presets.load_cluster("dgx-h100"), stack="", driver_version="")
        assert stack_for(c) == stack.DEFAULT_STACK


class TestFormats:
    def test_every_family_has_forms(self) -> None:
        """Each release family of the table has its line forms in render/nccl.py, and only those."""
        from fakerun.render.nccl import NCCL_FORMS

        assert set(NCCL_FORMS) == set(stack.NCCL_FORMATS)
        keys = {frozenset(forms) for forms in NCCL_FORMS.values()}
        assert len(keys) == 1
