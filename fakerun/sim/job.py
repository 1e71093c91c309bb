"""The simulated job: presets plus parallelism, batch and schedule, derived and validated in one place."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

from fakerun.presets import ClusterSpec, GpuSpec, ModelSpec, StorageSpec, with_gpu
from fakerun.sim import lora
from fakerun.sim.loss import DEFAULT_LAW, law_name
from fakerun.sim.memory import check_fits
from fakerun.sim.schedule import SCHEDULES, WSD_STYLES

# "op": torchtitan's per-op selective checkpointing (sim/memory.op_sac_coefficient); "selective":
# Megatron's, recomputing the attention core only.
RECOMPUTE = ("none", "selective", "op", "full")
REGIMES = ("pretrain", "finetune")


@dataclass(frozen=True)
class RankCoords:
    """Where a global rank sits: node, local rank and its tensor / data / pipeline / expert / context parallel
    ranks."""

    rank: int
    node: int
    local_rank: int
    tp_rank: int
    dp_rank: int
    pp_rank: int
    ep_rank: int
    cp_rank: int = 0


@dataclass(frozen=True)
class SlowNode:
    """A node whose GPUs run slower over steps start..end (a failure scenario): `factor` times the compute."""

    node: int
    start: int
    end: int  # the last slowed step
    factor: float
    cause: str  # "thermal": the GPUs throttle their clocks; "nvlink": degraded links stretch their kernels


@dataclass(frozen=True)
class NetStall:
    """A step that a node's NIC outage stretched by `seconds` (it came back within IB's retries)."""

    step: int
    node: int
    rank: int  # whose NIC it is (the rank at fault)
    seconds: float


@dataclass(frozen=True)
class JobSpec:
    """Everything the physics needs; build it with make_job(), which derives and checks the parallelism."""

    model: ModelSpec
    gpu: GpuSpec
    cluster: ClusterSpec
    storage: StorageSpec
    nnodes: int
    nproc_per_node: int
    world_size: int
    tp: int
    pp: int
    dp: int
    micro_batch: int
    grad_accum: int
    global_batch: int  # sequences per optimizer step
    seq_len: int
    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    # ZeRO stage: 0 DDP, 1 sharded optimizer (Megatron distributed optimizer), 2 + grads, 3 FSDP full shard.
    zero_stage: int
    seed: int = 0
    law: str = DEFAULT_LAW
    start_step: int = 0
    # Expert parallelism: the MoE layers' experts are split over `ep` ranks, each expert's matrices over
    # `etp` (0: the dense layers' tp, Megatron's default). The expert grid etp x ep x expert-dp x pp spans
    # the same world as the dense one (Megatron's initialize_model_parallel), so ep may borrow tp's ranks.
    ep: int = 1
    etp: int = 0
    recompute: str = "selective"
    lr_schedule: str = "cosine"
    fp32_grad_buffer: bool = False
    # The script sets each rank's CUDA device before its first CUDA call (torchtitan's Trainer does), so no
    # rank leaves a stray context on device 0.
    device_first: bool = False
    grad_clip: float = 1.0
    spikes: bool = True  # rare natural loss spikes
    spike_steps: tuple[int, ...] = ()  # forced spikes (failure scenario)
    nan_steps: tuple[int, ...] = ()  # NaN loss, skipped iterations (failure scenario)
    slow_nodes: tuple[SlowNode, ...] = ()  # throttled or degraded nodes (failure scenario)
    net_stalls: tuple[NetStall, ...] = ()  # NIC outages that recovered (failure scenario)
    regime: str = (
        "pretrain"  # pretrain: the scaling law from ln(vocab); finetune: SFT-like losses of ~2 down to ~1
    )
    # The step at which a rank raises torch.OutOfMemoryError (a configuration that does not fit starts, like
    # a real one, and dies at its first step); None: it fits. memory.oom_figures gives the message's numbers.
    oom_at_step: int | None = None
    epochs: int = 1  # passes over the dataset in total_steps: epochs 2+ repeat data (Muennighoff et al. 2023)
    # Mixed precision: "bf16" (no loss scaling) or "fp16" with a dynamic loss scaler (sim/lossscale.py):
    # it starts at initial_loss_scale, halves on overflow after `hysteresis` overflows, doubles every
    # loss_scale_window clean steps; a static_loss_scale (--loss-scale) never changes.
    precision: str = "bf16"
    initial_loss_scale: float = 2.0**32
    min_loss_scale: float = 1.0
    loss_scale_window: int = 1000
    hysteresis: int = 2
    static_loss_scale: float | None = None
    # LoRA (PEFT): adapters of this rank on these projections are all that trains; 0: a full fine-tune.
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ()
    # Bytes per parameter of weights and optimizer states (sim/memory.STATE_BYTES): "mixed" (bf16 weights,
    # fp32 master and Adam states), "fp32" (FSDP2 / AMP: fp32 parameters are the master), "bf16" (pure bf16).
    state_layout: str = "mixed"
    # Context parallelism: each sequence is split over `cp` ranks (ring attention passes the K/V chunks
    # around them); world = tp * cp * dp * pp, and gradients and sharded states span the dp * cp ranks.
    cp: int = 1
    # The decay's last step (Megatron's --lr-decay-iters): min_lr holds after it; 0: the run's last step.
    decay_steps: int = 0
    # The "wsd" schedule: its annealing steps at the end of the decay, and their shape (WSD_STYLES).
    wsd_decay_steps: int = 0
    wsd_style: str = "exponential"
    # FP8 GEMMs (Transformer Engine's --fp8-format): the matmuls run at the GPU's FP8 rate where it has one.
    fp8: bool = False
    # A pretrained model's published (train, validation) loss on the job's data before any step (nanoGPT's
    # README: GPT-2 on OpenWebText); (): the regime's own start (sim/loss.initial_loss).
    pretrained_losses: tuple[float, float] | tuple[()] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.world_size != self.nnodes * self.nproc_per_node:
            problems.append(f"world_size {self.world_size} != nnodes*nproc_per_node")
        if self.world_size != self.tp * self.pp * self.cp * self.dp:
            problems.append(
                f"world_size {self.world_size} != tp*pp*cp*dp = {self.tp}*{self.pp}*{self.cp}*{self.dp}"
            )
        if self.global_batch != self.micro_batch * self.dp * self.grad_accum:
            problems.append(f"global_batch {self.global_batch} != micro_batch*dp*grad_accum")
        if self.world_size % (self.expert_tp * self.ep * self.pp):
            problems.append(
                f"world_size {self.world_size} is not divisible by etp*ep*pp = "
                f"{self.expert_tp}*{self.ep}*{self.pp}"
            )
        if self.gpu != self.cluster.gpu:
            problems.append("gpu differs from the cluster's GPU (use presets.with_gpu)")
        if not 0 <= self.start_step <= self.total_steps:
            problems.append(f"start_step {self.start_step} outside [0, {self.total_steps}]")
        if problems:
            raise ValueError("inconsistent job: " + "; ".join(problems))

    def __hash__(self) -> int:
        # Hashing the nested presets costs microseconds and every lru_cache keyed by the job pays it: memoise.
        h: int | None = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict[str, object]:
        # str hashes differ between interpreters (PYTHONHASHSEED): never ship the memo to another process.
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step over the whole job."""
        return self.global_batch * self.seq_len

    @property
    def adapter_params(self) -> int:
        """LoRA's trainable parameters, 0 without LoRA."""
        return lora.adapter_params(self.model, self.lora_rank, self.lora_targets) if self.lora_rank else 0

    @property
    def trainable_params(self) -> int:
        """Parameters the optimizer updates: the adapters with LoRA, else the whole model."""
        return self.adapter_params or self.model.params

    @property
    def decay_end(self) -> int:
        """The last step of the learning-rate decay."""
        return self.decay_steps or self.total_steps

    @property
    def dp_cp(self) -> int:
        """Ranks holding the same weights (data x context parallel): the group gradients are reduced over
        and sharded states are split over (Megatron's data-parallel group with context, torchtitan's
        dp_shard_cp mesh)."""
        return self.dp * self.cp

    @property
    def expert_tp(self) -> int:
        """Ranks each expert's matrices are split over (expert tensor parallel)."""
        return self.etp or self.tp

    @property
    def expert_dp(self) -> int:
        """Ranks holding the same experts (expert data parallel): the group expert gradients are reduced
        over and expert states are sharded over."""
        return self.world_size // (self.expert_tp * self.ep * self.pp)

    @property
    def local_seq_len(self) -> int:
        """Tokens of each sequence one rank holds: its share under context parallelism."""
        return self.seq_len // self.cp

    @property
    def sharding(self) -> str:
        """How data parallelism shards the training state: DDP, ZeRO-1, ZeRO-2 or FSDP."""
        if self.dp_cp == 1:
            return "DDP"  # one data-parallel rank has nothing to shard with: ZeRO-1 over 1 rank is plain DDP
        return ("DDP", "ZeRO-1", "ZeRO-2", "FSDP")[self.zero_stage]

    @property
    def gpus(self) -> int:
        """GPUs in the job (one per rank)."""
        return self.world_size

    def coords(self, rank: int) -> RankCoords:
        """Megatron's rank order (tp-cp-ep-dp-pp): tensor parallel fastest, then context parallel, then data
        parallel, then pipeline stage; the expert rank from the expert grid (etp, ep, expert dp, pp)."""
        tp_rank = rank % self.tp
        cp_rank = (rank // self.tp) % self.cp
        dp_rank = (rank // (self.tp * self.cp)) % self.dp
        pp_rank = rank // (self.tp * self.cp * self.dp)
        return RankCoords(
            rank=rank,
            node=rank // self.nproc_per_node,
            local_rank=rank % self.nproc_per_node,
            tp_rank=tp_rank,
            dp_rank=dp_rank,
            pp_rank=pp_rank,
            ep_rank=(rank // self.expert_tp) % self.ep,
            cp_rank=cp_rank,
        )

    def stage_layers(self, pp_rank: int) -> int:
        """Transformer layers on pipeline stage `pp_rank`."""
        return _stage_layers(self.model.layers, self.pp)[pp_rank]


@functools.lru_cache(maxsize=256)
def _stage_layers(layers: int, pp: int) -> tuple[int, ...]:
    # Uneven splits give the first and last stages fewer layers: they also hold the embedding and the LM head
    # (Llama 3 405B: 126 layers on 16 stages, one layer fewer on the first and last [mem]).
    base, extra = divmod(layers, pp)
    counts = [base] * pp
    order = [*range(1, pp - 1), 0, pp - 1] if pp > 2 else list(range(pp))
    for i in order[:extra]:
        counts[i] += 1
    return tuple(counts)


def _largest_fitting(start: int, ok: Callable[[int], bool]) -> int:
    value = max(start, 1)
    while value > 1 and not ok(value):
        value -= 1
    return value


def make_job(
    model: ModelSpec,
    cluster: ClusterSpec,
    storage: StorageSpec,
    *,
    gpu: GpuSpec | None = None,
    nnodes: int | None = None,
    nproc_per_node: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    ep: int | None = None,
    etp: int | None = None,
    cp: int = 1,
    micro_batch: int | None = None,
    grad_accum: int | None = None,
    global_batch: int | None = None,
    seq_len: int | None = None,
    lr: float | None = None,
    min_lr: float | None = None,
    lr_schedule: str = "cosine",
    decay_steps: int | None = None,
    wsd_decay_steps: int = 0,
    wsd_style: str = "exponential",
    fp8: bool = False,
    pretrained_losses: tuple[float, float] | tuple[()] = (),
    warmup_steps: int | None = None,
    total_steps: int | None = None,
    zero_stage: int | None = None,
    recompute: str | None = None,
    fp32_grad_buffer: bool = False,
    device_first: bool = False,
    grad_clip: float = 1.0,
    seed: int = 0,
    law: str = DEFAULT_LAW,
    start_step: int = 0,
    spikes: bool = True,
    spike_steps: tuple[int, ...] = (),
    nan_steps: tuple[int, ...] = (),
    regime: str = "pretrain",
    epochs: int = 1,
    precision: str = "bf16",
    initial_loss_scale: float = 2.0**32,
    min_loss_scale: float = 1.0,
    loss_scale_window: int = 1000,
    hysteresis: int = 2,
    static_loss_scale: float | None = None,
    lora_rank: int = 0,
    lora_targets: tuple[str, ...] = (),
    state_layout: str = "mixed",
    check_memory: bool = True,
    allow_oom: bool = False,
) -> JobSpec:
    """A consistent JobSpec: defaults from the model preset, explicit values checked (one-line errors)."""
    # Defaulted knobs adapt to the world size (tp and pp shrink until they divide it; the global batch rounds
    # to a multiple of micro_batch * dp) and, when memory is short, ZeRO stage, micro batch and recompute
    # escalate. Explicit values are never changed: an impossible combination raises ValueError.
    if gpu is not None:
        cluster = with_gpu(cluster, gpu)
    gpu = cluster.gpu
    npn = cluster.gpus_per_node if nproc_per_node is None else nproc_per_node
    nn = model.default_nnodes if nnodes is None else nnodes
    if nn < 1 or npn < 1:
        raise ValueError(f"nnodes and nproc_per_node must be >= 1, got {nn} and {npn}")
    if npn > cluster.gpus_per_node:
        # torchrun accepts any --nproc-per-node: play a bigger node of the same kind (one NVLink domain, as on
        # NVL72 racks) with NICs in proportion, rather than refuse.
        cluster = dataclasses.replace(
            cluster,
            gpus_per_node=npn,
            nics_per_node=max(1, cluster.nics_per_node * npn // cluster.gpus_per_node),
            display_name=f"{cluster.display_name or cluster.name} ({npn} GPUs per node)",
        )
    world = nn * npn
    m = model
    if cp < 1 or world % cp:
        raise ValueError(f"cp={cp} does not divide the world size {world}")
    rest = world // cp  # the ranks tensor, pipeline and data parallelism share

    # Tensor parallelism stays inside a node and must divide the attention heads.
    if tp is None:
        tp_ = _largest_fitting(
            min(m.tp, npn),
            lambda t: rest % t == 0 and m.heads % t == 0 and m.kv_heads % t == 0 and npn % t == 0,
        )
    else:
        tp_ = tp
        if tp_ < 1 or rest % tp_:
            shown = f"the world size {world}" + (f" / cp={cp}" if cp > 1 else "")
            raise ValueError(f"tp={tp_} does not divide {shown}")
        if tp_ > npn:
            raise ValueError(
                f"tp={tp_} exceeds nproc_per_node={npn} (tensor parallelism stays inside a node)"
            )
        if m.heads % tp_:
            raise ValueError(f"tp={tp_} does not divide the {m.heads} attention heads of {m.name}")
    if pp is None:
        pp_ = _largest_fitting(min(m.pp, m.layers), lambda p: (rest // tp_) % p == 0)
    else:
        pp_ = pp
        if pp_ < 1 or (rest // tp_) % pp_:
            raise ValueError(f"pp={pp_} does not divide world/(tp*cp) = {rest // tp_}")
        if pp_ > m.layers:
            raise ValueError(f"pp={pp_} exceeds the {m.layers} layers of {m.name}")
    dp_ = rest // (tp_ * pp_)
    etp_ = tp_ if etp is None else etp
    if etp_ < 1 or etp_ > npn:
        raise ValueError(f"etp={etp_} outside [1, nproc_per_node={npn}]")
    if not m.is_moe:
        if ep not in (None, 1):
            raise ValueError(f"ep={ep} needs a mixture-of-experts model; {m.name} is dense")
        ep_, etp_ = 1, tp_
    elif ep is None:
        ep_ = _largest_fitting(
            min(m.ep, dp_), lambda e: world % (etp_ * e * pp_) == 0 and dp_ % e == 0 and m.experts % e == 0
        )
    else:
        ep_ = ep
        if ep_ < 1 or m.experts % ep_:
            raise ValueError(f"ep={ep_} does not divide the {m.experts} experts")
    if world % (etp_ * ep_ * pp_):
        # The expert grid (etp x ep x expert-dp x pp) must tile the world as the dense one does.
        raise ValueError(f"etp*ep*pp = {etp_}*{ep_}*{pp_} does not divide the world size {world}")

    seq = m.seq_len if seq_len is None else seq_len
    if seq < 1 or seq > m.max_position:
        raise ValueError(f"seq_len={seq} outside [1, {m.max_position}] for {m.name}")
    if cp > 1 and seq % (2 * cp):
        # Load-balanced ring attention gives each rank two chunks of the sequence, one from each end.
        raise ValueError(f"seq_len={seq} is not a multiple of 2*cp = {2 * cp}")

    mbs_given = micro_batch is not None
    mbs = m.micro_batch if micro_batch is None else micro_batch
    if mbs < 1:
        raise ValueError(f"micro_batch must be >= 1, got {mbs}")
    gbs, ga = _batch(m.global_batch, mbs, dp_, global_batch, grad_accum, mbs_given)
    mbs = gbs // (dp_ * ga)  # _batch may have lowered a defaulted micro batch to make the global batch divide

    total = m.total_steps if total_steps is None else total_steps
    if total < 1:
        raise ValueError(f"total_steps must be >= 1, got {total}")
    warm = min(m.warmup_steps, total // 10) if warmup_steps is None else warmup_steps
    if not 0 <= warm <= total:
        raise ValueError(f"warmup_steps={warm} outside [0, total_steps={total}]")
    peak = m.lr if lr is None else lr
    low = peak * m.min_lr_ratio if min_lr is None else min_lr
    if peak <= 0 or not 0 <= low <= peak:
        raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={peak} min_lr={low}")
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {lr_schedule!r} (choose from: {', '.join(SCHEDULES)})")
    if decay_steps is not None and decay_steps <= warm:
        raise ValueError(f"decay_steps={decay_steps} must exceed warmup_steps={warm}")
    if wsd_style not in WSD_STYLES or wsd_decay_steps < 0:
        raise ValueError(f"need wsd_decay_steps >= 0 and wsd_style in {', '.join(WSD_STYLES)}")
    zero = m.zero_stage if zero_stage is None else zero_stage
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero}")
    rc = m.recompute if recompute is None else recompute
    if rc not in RECOMPUTE:
        raise ValueError(f"unknown recompute {rc!r} (choose from: {', '.join(RECOMPUTE)})")
    law = law_name(law)
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r} (choose from: {', '.join(REGIMES)})")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision must be bf16 or fp16, got {precision!r}")
    if state_layout not in ("mixed", "fp32", "bf16"):
        raise ValueError(f"state_layout must be mixed, fp32 or bf16, got {state_layout!r}")
    if loss_scale_window < 1 or hysteresis < 1 or not 0 < min_loss_scale <= initial_loss_scale:
        raise ValueError(
            "need loss_scale_window >= 1, hysteresis >= 1 and 0 < min_loss_scale <= initial_loss_scale"
        )
    if grad_clip <= 0:
        raise ValueError(f"grad_clip must be > 0, got {grad_clip}")
    if not all(x > 0 for x in pretrained_losses):
        raise ValueError(f"pretrained_losses must be > 0, got {pretrained_losses}")
    if not 0 <= start_step <= total:
        raise ValueError(f"start_step={start_step} outside [0, total_steps={total}]")

    job = JobSpec(
        model=m,
        gpu=gpu,
        cluster=cluster,
        storage=storage,
        nnodes=nn,
        nproc_per_node=npn,
        world_size=world,
        tp=tp_,
        pp=pp_,
        dp=dp_,
        ep=ep_,
        etp=0 if etp_ == tp_ else etp_,
        cp=cp,
        micro_batch=mbs,
        grad_accum=ga,
        global_batch=gbs,
        seq_len=seq,
        lr=peak,
        min_lr=low,
        lr_schedule=lr_schedule,
        decay_steps=decay_steps or 0,
        wsd_decay_steps=wsd_decay_steps,
        wsd_style=wsd_style,
        fp8=fp8,
        pretrained_losses=pretrained_losses,
        warmup_steps=warm,
        total_steps=total,
        zero_stage=zero,
        recompute=rc,
        fp32_grad_buffer=fp32_grad_buffer,
        device_first=device_first,
        grad_clip=grad_clip,
        seed=seed,
        law=law,
        start_step=start_step,
        spikes=spikes,
        spike_steps=tuple(sorted(spike_steps)),
        nan_steps=tuple(sorted(nan_steps)),
        regime=regime,
        epochs=epochs,
        precision=precision,
        initial_loss_scale=initial_loss_scale,
        min_loss_scale=min_loss_scale,
        loss_scale_window=loss_scale_window,
        hysteresis=hysteresis,
        static_loss_scale=static_loss_scale,
        lora_rank=lora_rank,
        lora_targets=lora_targets,
        state_layout=state_layout,
    )
    if check_memory:
        try:
            job = _fit(
                job, zero_given=zero_stage is not None, mbs_given=mbs_given, rc_given=recompute is not None
            )
        except ValueError:
            if not allow_oom:
                raise
            # Start it anyway: the first step of the run runs out of memory, as it would on the GPUs.
            job = dataclasses.replace(job, oom_at_step=start_step + 1)
    return job


def _batch(
    default_gbs: int, mbs: int, dp: int, gbs: int | None, ga: int | None, mbs_given: bool
) -> tuple[int, int]:
    """(global batch, grad accumulation) from whichever of the two were given."""
    if ga is not None and ga < 1:
        raise ValueError(f"grad_accum must be >= 1, got {ga}")
    if gbs is not None and gbs < 1:
        raise ValueError(f"global_batch must be >= 1, got {gbs}")
    if gbs is not None and ga is not None:
        if gbs != mbs * dp * ga:
            raise ValueError(f"global_batch={gbs} != micro_batch*dp*grad_accum = {mbs}*{dp}*{ga}")
        return gbs, ga
    if ga is not None:
        return mbs * dp * ga, ga
    if gbs is not None:
        if gbs % (mbs * dp) == 0:
            return gbs, gbs // (mbs * dp)
        if not mbs_given and gbs % dp == 0:
            for b in range(mbs - 1, 0, -1):
                if gbs % (b * dp) == 0:
                    return gbs, gbs // (b * dp)
        raise ValueError(f"global_batch={gbs} is not divisible by micro_batch*dp = {mbs}*{dp}")
    ga_ = max(1, round(default_gbs / (mbs * dp)))
    return mbs * dp * ga_, ga_


def _fit(job: JobSpec, *, zero_given: bool, mbs_given: bool, rc_given: bool) -> JobSpec:
    """Escalate defaulted memory knobs (ZeRO stage, micro batch, then full recompute) until the job fits."""
    candidates = [job]
    cur = job
    if not zero_given and job.dp_cp > 1:
        for z in range(job.zero_stage + 1, 4):
            cur = dataclasses.replace(cur, zero_stage=z)
            candidates.append(cur)
    if not mbs_given:
        while cur.micro_batch > 1:
            b = max(d for d in range(1, cur.micro_batch) if cur.micro_batch % d == 0)
            cur = dataclasses.replace(cur, micro_batch=b, grad_accum=cur.global_batch // (b * cur.dp))
            candidates.append(cur)
    if not rc_given and cur.recompute != "full":
        candidates.append(dataclasses.replace(cur, recompute="full"))
    for cand in candidates:
        try:
            check_fits(cand)
        except ValueError:
            continue
        return cand
    check_fits(job)  # raise with the numbers of the configuration as asked
    return job
