"""JobSpec and make_job: parallelism derived consistently, impossible configurations refused in one line."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest

from fakerun import presets
from fakerun.sim.job import JobSpec, make_job


def job(model: str = "llama3-8b", **kw: Any) -> JobSpec:
    b = presets.resolve(model, gpu=kw.pop("gpu", None), cluster=kw.pop("cluster", None))
    return make_job(b.model, b.cluster, b.storage, **kw)


class TestDefaults:
    @pytest.mark.parametrize("name", presets.list_presets()["models"])
    def test_parallelism_multiplies_to_the_world(self, name: str) -> None:
        """world = nnodes * nproc_per_node = tp * pp * dp; global batch = micro batch * dp * accumulation."""
        j = job(name)
        assert j.world_size == j.nnodes * j.nproc_per_node == j.tp * j.pp * j.dp
        assert j.global_batch == j.micro_batch * j.dp * j.grad_accum
        assert j.dp % j.ep == 0
        assert j.tokens_per_step == j.global_batch * j.seq_len

    def test_defaults_come_from_the_preset(self) -> None:
        """Llama 3 70B runs TP8 x PP4 on 32 DGX H100 nodes by default."""
        j = job("llama3-70b")
        assert (j.nnodes, j.nproc_per_node, j.tp, j.pp, j.dp) == (32, 8, 8, 4, 8)
        assert j.lr == 1.5e-4 and j.min_lr == pytest.approx(1.5e-5) and j.seq_len == 8192

    def test_defaulted_parallelism_adapts_to_a_small_world(self) -> None:
        """With 2 GPUs, a defaulted tp of 8 shrinks to 2 and pp to 1."""
        j = job("llama3.2-1b", nnodes=1, nproc_per_node=2, tp=None)
        assert (j.tp, j.pp, j.dp) == (1, 1, 2)
        j = job("mixtral-8x7b", nnodes=2)
        assert (j.tp, j.pp, j.dp, j.ep) == (2, 2, 4, 4)

    def test_defaulted_global_batch_rounds_to_the_data_parallel_size(self) -> None:
        """The preset's global batch rounds to a multiple of micro_batch * dp."""
        j = job("llama3.2-1b", nnodes=3, nproc_per_node=8)
        assert j.global_batch % (j.micro_batch * j.dp) == 0

    def test_default_law_is_the_epoch_ai_refit_and_old_names_still_load(self) -> None:
        """Jobs follow Besiroglu et al. 2024 unless told; "chinchilla" and "epoch" name the renamed laws."""
        assert job("llama3.2-1b").law == "epoch-ai"
        assert job("llama3.2-1b", law="chinchilla").law == "chinchilla-3"
        assert job("llama3.2-1b", law="epoch").law == "epoch-ai"

    def test_short_runs_shorten_the_warmup(self) -> None:
        """A 200-step run warms up over 20 steps instead of the preset's 2000."""
        assert job("llama3.2-1b", total_steps=200).warmup_steps == 20

    def test_more_ranks_per_node_than_gpus_plays_a_bigger_node(self) -> None:
        """torchrun accepts --nproc-per-node 16 on 8-GPU nodes: the node becomes a 16-GPU NVLink domain."""
        j = job("llama3.2-1b", nproc_per_node=16)
        assert j.cluster.gpus_per_node == 16 and j.cluster.nics_per_node == 16 and j.world_size == 16

    def test_memory_knobs_escalate_when_defaulted(self) -> None:
        """Llama 3 8B on a single node fits by raising the ZeRO stage or recomputing, not by failing."""
        j = job("llama3-8b", nnodes=1)
        assert j.world_size == 8


class TestErrors:
    @pytest.mark.parametrize(
        ("kw", "message"),
        [
            ({"tp": 3}, "tp=3 does not divide"),
            ({"tp": 16, "nnodes": 2}, "tensor parallelism stays inside a node"),
            ({"pp": 3}, "pp=3 does not divide"),
            ({"global_batch": 100}, "not divisible by micro_batch"),
            ({"global_batch": 64, "grad_accum": 3}, "global_batch=64 != micro_batch"),
            ({"zero_stage": 5}, "zero_stage must be"),
            ({"recompute": "some"}, "unknown recompute"),
            ({"law": "gpt-4"}, "unknown scaling law 'gpt-4' (choose from: epoch-ai, chinchilla-3)"),
            ({"warmup_steps": 5000, "total_steps": 1000}, "warmup_steps=5000"),
            ({"seq_len": 100_000}, "seq_len=100000"),
            ({"ep": 2}, "needs a mixture-of-experts"),
            ({"lr": 1e-4, "min_lr": 1e-3}, "min_lr <= lr"),
            ({"regime": "rlhf"}, "unknown regime"),
        ],
    )
    def test_impossible_configurations(self, kw: dict[str, Any], message: str) -> None:
        """Explicit impossible values raise a one-line ValueError saying why."""
        with pytest.raises(ValueError) as err:
            job("llama3-8b", **kw)
        assert message in str(err.value) and "\n" not in str(err.value)

    def test_would_not_fit_gives_the_numbers(self) -> None:
        """Llama 3 405B on one node does not fit, and the message says how much it needs."""
        with pytest.raises(ValueError, match=r"llama3-405b would not fit: \d+\.\d GiB per GPU .* 79\.6 GiB"):
            job("llama3-405b", nnodes=1)

    def test_inconsistent_replace_is_refused(self) -> None:
        """dataclasses.replace cannot build a JobSpec whose parallelism does not add up."""
        with pytest.raises(ValueError, match="inconsistent job"):
            dataclasses.replace(job(), tp=2)


class TestRanks:
    def test_megatron_rank_order(self) -> None:
        """Tensor-parallel ranks are adjacent, then data-parallel, then pipeline stages."""
        j = job("llama3-70b")
        c = j.coords(8 * 8 * 2 + 8 + 3)
        assert (c.tp_rank, c.dp_rank, c.pp_rank) == (3, 1, 2)
        assert (c.node, c.local_rank) == (c.rank // 8, c.rank % 8)

    def test_uneven_stages_spare_the_first_and_last(self) -> None:
        """126 layers on 16 stages: 7 on the first and last, 8 elsewhere (as Llama 3 405B)."""
        j = job("llama3-405b")
        layers = [j.stage_layers(s) for s in range(j.pp)]
        assert sum(layers) == 126 and layers[0] == layers[-1] == 7 and set(layers[1:-1]) == {8}

    def test_job_is_hashable_and_picklable(self) -> None:
        """Jobs key caches and cross process boundaries intact."""
        j = job()
        again = pickle.loads(pickle.dumps(j))
        assert again == j and hash(again) == hash(j)


class TestExpertGrid:
    def test_experts_may_borrow_tensor_ranks(self) -> None:
        """Megatron's TP4 x EP8 with ETP1 on 8 GPUs: dp is 2, yet the expert grid 1 x 8 x 1 x 1 tiles the
        world; the 8 ep ranks are adjacent."""
        j = job("mixtral-8x7b", nnodes=1, tp=4, pp=1, ep=8, etp=1, check_memory=False)
        assert (j.dp, j.ep, j.expert_tp, j.expert_dp) == (2, 8, 1, 1)
        assert [j.coords(r).ep_rank for r in range(8)] == list(range(8))

    def test_expert_tensor_parallel_defaults_to_tp(self) -> None:
        """Without etp the experts are split over tp too: EP4 needs tp x 4 x pp ranks."""
        j = job("mixtral-8x7b", nnodes=1, tp=2, pp=1, ep=4, check_memory=False)
        assert (j.expert_tp, j.expert_dp) == (2, 1)
        # Ranks tp apart share an expert rank's tensor shards: expert ranks step every tp ranks.
        assert [j.coords(r).ep_rank for r in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
        with pytest.raises(ValueError, match=r"etp\*ep\*pp = 4\*8\*1 does not divide the world size 8"):
            job("mixtral-8x7b", nnodes=1, tp=4, pp=1, ep=8)


class TestShardingLabel:
    def test_one_data_parallel_rank_has_no_zero_stage(self) -> None:
        """ZeRO over a data-parallel group of one shards nothing: the job says DDP, as real trainers do."""
        j = job("llama3.2-1b", nnodes=1, nproc_per_node=1, zero_stage=1)
        assert j.dp == 1 and j.zero_stage == 1
        assert j.sharding == "DDP"

    def test_several_data_parallel_ranks_keep_their_stage(self) -> None:
        """With dp > 1 the label names the stage."""
        j = job("llama3.2-1b", nnodes=1, nproc_per_node=8, tp=1, pp=1, zero_stage=1)
        assert j.dp == 8 and j.sharding == "ZeRO-1"
