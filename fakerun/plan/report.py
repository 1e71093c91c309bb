"""The plan for a budget, assembled from the law, the optimum and (when available) the architecture and
design, as figures with units for the table and for JSON."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from fakerun import presets
from fakerun.plan import arch
from fakerun.plan import optimum as opt
from fakerun.plan.budget import Budget, BudgetError
from fakerun.plan.laws import ScalingLaw
from fakerun.presets import ClusterSpec, ModelSpec
from fakerun.sim.loss import Law, data_constrained_tokens, effective_params

DEFAULT_FAMILY = "llama"
DEFAULT_SEQ_LEN = 4096
DEFAULT_VOCAB = 128_256  # Llama 3's tokenizer
# A cluster for a GPU given alone comes from presets.resolve's rule (a shipped cluster of that GPU, else the
# model's default cluster with that GPU); this model's default cluster is the DGX H100.
_CLUSTER_REFERENCE_MODEL = "llama3-8b"
_SI = ("", "K", "M", "B", "T", "P")
# Design fields shown elsewhere (the model in its own section, the job's layout below) or not figures.
_NOT_FIGURES = ("model", "job", "tokens", "sources", "node_overhead")
# Units of design fields by name, then by the end of their names; anything else is a plain number.
_NAME_UNITS = {"compute": "FLOP", "batch_tokens_fit": "tokens", "cost": "USD"}
_SUFFIX_UNITS = (
    ("_kwh", "kWh"),
    ("_bytes", "B"),
    ("_gib", "GiB"),
    ("_seconds", "s"),
    ("days", "days"),
    ("gpu_hours", "GPU-hours"),
    ("mfu", "fraction"),
    ("lr", "1"),
    ("_flops", "FLOP"),
)
# Labels of design fields where the name is not one.
_LABELS = {
    "step_seconds": "step time",
    "mfu": "MFU",
    "memory_gib": "memory per GPU",
    "days": "wall clock",
    "gpu_hours": "GPU time",
    "energy_kwh": "energy",
    "checkpoint_bytes": "checkpoint size",
    "checkpoint_save_seconds": "checkpoint save",
    "batch_tokens_fit": "batch (fit)",
    "compute": "compute (M x D)",
    "model_flops": "model FLOPs (6ND)",
}
# The simulated job's layout and schedule, with units.
_JOB_FIGURES = (
    ("nnodes", "nodes", "1"),
    ("world_size", "GPUs", "1"),
    ("tp", "tensor parallel", "1"),
    ("pp", "pipeline parallel", "1"),
    ("dp", "data parallel", "1"),
    ("ep", "expert parallel", "1"),
    ("zero_stage", "ZeRO stage", "1"),
    ("recompute", "activation recompute", ""),
    ("micro_batch", "micro batch", "sequences"),
    ("global_batch", "global batch", "sequences"),
    ("tokens_per_step", "tokens per step", "tokens"),
    ("lr", "peak lr", "1"),
    ("min_lr", "final lr", "1"),
    ("warmup_steps", "warm-up", "steps"),
    ("total_steps", "training steps", "steps"),
)


@dataclass(frozen=True)
class Figure:
    """One number (or name) of the plan and its unit."""

    key: str
    label: str
    value: float | int | str
    unit: str


@dataclass(frozen=True)
class Section:
    """A titled group of figures."""

    key: str
    title: str
    figures: list[Figure]


@dataclass(frozen=True)
class Report:
    """Everything the planner worked out for one budget."""

    law: ScalingLaw
    budget: Budget
    optimum: opt.Optimum
    plan: opt.Optimum  # the model planned: the optimum under the constraints given
    isoflop: list[opt.IsoPoint]
    data: opt.DataConstrained | None = None
    inference: opt.InferenceAware | None = None
    max_params: float | None = None
    model: ModelSpec | None = None
    design: arch.Design | None = None
    notes: list[str] = field(default_factory=list)

    def sections(self) -> list[Section]:
        """The figures, section by section, in the order the table shows them."""
        out = [self._budget_section(), _optimum_section("compute_optimal", "compute-optimal", self.optimum)]
        out.append(
            Section(
                "isoflop",
                "IsoFLOP neighbourhood",
                [
                    Figure(
                        f"penalty_{p.factor:g}x", f"loss penalty at {p.factor:g}x", p.penalty, "nats/token"
                    )
                    for p in self.isoflop
                ],
            )
        )
        if self.data is not None:
            s = _optimum_section("data_constrained", "data-constrained (Muennighoff et al. 2023)", self.data)
            s.figures.extend(
                [
                    Figure("unique_tokens", "unique tokens", self.data.unique_tokens, "tokens"),
                    Figure("epochs", "epochs", self.data.epochs, "1"),
                    Figure("effective_tokens", "effective tokens", self.data.effective_tokens, "tokens"),
                ]
            )
            out.append(s)
        if self.inference is not None:
            inf = self.inference
            s = _optimum_section("inference_aware", "inference-aware (Sardana et al. 2024)", inf)
            s.figures.extend(
                [
                    Figure("training_flops", "training", inf.flops, "FLOP"),
                    Figure("total_flops", "training + serving", inf.total_flops, "FLOP"),
                    Figure(
                        "compute_optimal_total_flops",
                        "same, compute-optimal",
                        inf.compute_optimal_total_flops,
                        "FLOP",
                    ),
                ]
            )
            out.append(s)
        if all(self.plan is not o for o in (self.optimum, self.data, self.inference)):
            out.append(_optimum_section("plan", f"capped at {self.max_params:.3g} parameters", self.plan))
        if self.model is not None:
            out.append(_model_section(self.model))
        if self.design is not None:
            out.append(self._design_section())
        return out

    def _budget_section(self) -> Section:
        b = self.budget
        figs = [
            Figure("flops", "training compute", b.flops, "FLOP"),
            Figure("given", "given as", b.given, ""),
        ]
        if b.gpu is not None and b.gpu_hours is not None:
            figs += [
                Figure("gpu", "GPU", b.gpu.name, ""),
                Figure("gpu_hours", "GPU time", b.gpu_hours, "GPU-hours"),
                Figure("mfu", f"MFU ({b.mfu_source})", b.mfu or 0.0, "fraction"),
            ]
        if b.dollars is not None:
            figs.append(Figure("dollars", "money", b.dollars, "USD"))
        return Section("budget", "budget", figs)

    def _design_section(self) -> Section:
        assert self.design is not None
        figs = [Figure(key, label, getattr(self.design.job, key), unit) for key, label, unit in _JOB_FIGURES]
        for f in dataclasses.fields(self.design):
            value = getattr(self.design, f.name)
            if f.name in _NOT_FIGURES or not isinstance(value, int | float | str):
                continue
            label = _LABELS.get(f.name, f.name.replace("_", " "))
            figs.append(Figure(f.name, label, value, _unit_of(f.name, value)))
        return Section("design", "design (simulated)", figs)

    def to_json(self) -> dict[str, Any]:
        """Every figure with its unit, by section, and the law's citation."""
        law: dict[str, Any] = {"name": self.law.name, "source": self.law.source}
        if isinstance(self.law, Law):
            law.update(E=self.law.E, A=self.law.A, B=self.law.B, alpha=self.law.alpha, beta=self.law.beta)
        out: dict[str, Any] = {"law": law}
        for s in self.sections():
            out[s.key] = {f.key: {"value": f.value, "unit": f.unit} for f in s.figures}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _unit_of(name: str, value: object) -> str:
    if isinstance(value, str):
        return ""
    if name in _NAME_UNITS:
        return _NAME_UNITS[name]
    return next((unit for suffix, unit in _SUFFIX_UNITS if name.endswith(suffix)), "1")


def _optimum_section(key: str, title: str, o: opt.Optimum) -> Section:
    return Section(
        key,
        title,
        [
            Figure("params", "parameters", o.params, "params"),
            Figure("tokens", "tokens", o.tokens, "tokens"),
            Figure("tokens_per_param", "tokens per parameter", o.tokens_per_param, "tokens/param"),
            Figure("loss", "predicted loss", o.loss, "nats/token"),
        ],
    )


def _model_section(m: ModelSpec) -> Section:
    figs = [
        Figure("name", "model", m.name, ""),
        Figure("params", "exact parameters", m.params, "params"),
        Figure("layers", "layers", m.layers, "1"),
        Figure("hidden", "hidden", m.hidden, "1"),
        Figure("heads", "heads", m.heads, "1"),
        Figure("kv_heads", "KV heads", m.kv_heads, "1"),
        Figure("ffn_hidden", "FFN hidden", m.ffn_hidden, "1"),
        Figure("vocab", "vocabulary", m.vocab, "tokens"),
        Figure("seq_len", "sequence length", m.seq_len, "tokens"),
    ]
    if m.is_moe:
        figs += [
            Figure("experts", "experts", m.experts, "1"),
            Figure("top_k", "experts per token", m.top_k, "1"),
            Figure("active_params", "active parameters", m.active_params, "params"),
        ]
    return Section("architecture", "architecture", figs)


def cluster_for(cluster: str | None, gpu: str | None) -> ClusterSpec:
    """The cluster a plan runs on: the preset named, with the GPU named (PresetError for unknown names)."""
    return presets.resolve(_CLUSTER_REFERENCE_MODEL, gpu=gpu, cluster=cluster).cluster


def _optima(
    budget: Budget,
    law: ScalingLaw,
    *,
    max_params: float | None,
    unique_tokens: float | None,
    inference_tokens: float | None,
) -> tuple[opt.Optimum, opt.Optimum, opt.DataConstrained | None, opt.InferenceAware | None]:
    """(compute-optimal, planned, data-constrained, inference-aware) for the budget and constraints."""
    if unique_tokens is not None and inference_tokens is not None:
        raise BudgetError("--unique-tokens and --inference-tokens together: no published law covers both")
    best = opt.compute_optimal(budget.flops, law)
    data = opt.data_constrained(budget.flops, law, unique_tokens) if unique_tokens is not None else None
    inference = (
        opt.inference_aware(budget.flops, law, inference_tokens) if inference_tokens is not None else None
    )
    chosen: opt.Optimum = data or inference or best
    if max_params is not None and chosen.params > max_params:
        if inference is not None:
            raise BudgetError(
                f"--max-params {max_params:.3g} is below the inference-aware size {inference.params:.3g}"
            )
        # The loss along an IsoFLOP line has one minimum: under a cap, the best model is the largest allowed.
        chosen = opt.at_params(budget.flops, law, max_params)
        if unique_tokens is not None:
            tokens = chosen.tokens
            eff = data_constrained_tokens(tokens, unique_tokens)
            chosen = opt.DataConstrained(
                law.name, budget.flops, max_params, tokens, law.loss(max_params, eff), unique_tokens,
                tokens / unique_tokens, eff,
            )  # fmt: skip
    return best, chosen, data, inference


def make_report(
    budget: Budget,
    law: ScalingLaw,
    *,
    max_params: float | None = None,
    unique_tokens: float | None = None,
    inference_tokens: float | None = None,
    family: str = DEFAULT_FAMILY,
    cluster: ClusterSpec | None = None,
    seq_len: int = DEFAULT_SEQ_LEN,
    vocab: int = DEFAULT_VOCAB,
    price_per_gpu_hour: float | None = None,
    framework: str = "megatron",
) -> Report:
    """The plan for a budget: optima under the law, then, where fakerun.plan.arch is installed and a cluster
    given, the architecture and its simulated design.

    A budget in GPU time assumed an MFU; once a design exists its simulated MFU replaces the assumption and
    the optimum is worked out once more (one iteration: the MFU moves little with the model's size).
    """
    if max_params is not None and not max_params > 0:
        raise BudgetError(f"--max-params must be positive, got {max_params:g}")
    constraints: dict[str, Any] = {
        "max_params": max_params,
        "unique_tokens": unique_tokens,
        "inference_tokens": inference_tokens,
    }
    best, chosen, data, inference = _optima(budget, law, **constraints)
    notes: list[str] = []
    model: ModelSpec | None = None
    design: arch.Design | None = None
    if cluster is not None:
        settings = _Settings(family, cluster, seq_len, vocab, framework, price_per_gpu_hour)
        model, design = _design(chosen, budget, settings)
        if budget.gpu_hours is not None and budget.mfu_source == "default":
            budget = budget.with_mfu(design.mfu, "simulator")
            best, chosen, data, inference = _optima(budget, law, **constraints)
            model, design = _design(chosen, budget, settings)
    iso = opt.isoflop(budget.flops, law)
    return Report(law, budget, best, chosen, iso, data, inference, max_params, model, design, notes)


@dataclass(frozen=True)
class _Settings:
    """What the design is asked for beside the model's size: family, cluster, shape, framework, price."""

    family: str
    cluster: ClusterSpec
    seq_len: int
    vocab: int
    framework: str
    price_per_gpu_hour: float | None


def _design(plan: opt.Optimum, budget: Budget, s: _Settings) -> tuple[ModelSpec, arch.Design]:
    """The family's architecture for the planned size and its design on the cluster."""
    family = arch.get_family(s.family)
    model: ModelSpec = family.architecture(plan.params, seq_len=s.seq_len, vocab=s.vocab)
    for _ in range(2):
        # A mixture of experts counts in the law (and in the simulated loss) by sqrt(total x active): size
        # it so that figure is the planned N, and the job trains onto the predicted loss.
        if not model.is_moe:
            break
        target = plan.params * model.params / effective_params(model)
        model = family.architecture(target, seq_len=s.seq_len, vocab=s.vocab)
    design = arch.design(
        model,
        plan.tokens,
        cluster=s.cluster,
        gpus=budget.gpus,
        seq_len=s.seq_len,
        framework=s.framework,
        price_per_gpu_hour=s.price_per_gpu_hour,
    )
    return model, design


def fmt_value(value: float | int | str, unit: str, label: str = "") -> str:
    """A figure as the table prints it: big numbers with SI suffixes, FLOPs in powers of ten, shares in %."""
    if isinstance(value, str):
        return value
    if unit == "fraction":
        return f"{100.0 * value:.1f} %"
    if unit == "FLOP":
        mant, exp = f"{value:.2e}".split("e")
        return f"{mant}e{int(exp)} FLOP"
    if unit == "nats/token":
        return f"{value:.4f} nats/token"
    if unit == "B" and value >= 1000:
        # Bytes in decimal units (GB, TB), as checkpoint sizes are quoted.
        k = min(int(math.log10(value)) // 3, len(_SI) - 1)
        return f"{value / 1000**k:.3g} {'kMGTP'[k - 1]}B"
    shown = "" if unit in ("1", "params") or label.endswith(unit) else f" {unit}"
    if abs(value) >= 1e6 or (abs(value) >= 1e4 and isinstance(value, float)):
        k = min(int(math.log10(abs(value))) // 3, len(_SI) - 1)
        text = f"{value / 1000**k:.3g}{_SI[k]}"
        return f"${text}" if unit == "USD" else f"{text}{shown}"
    if isinstance(value, int):
        return f"{value:,}{shown}"
    return f"${value:,.2f}" if unit == "USD" else f"{value:.3g}{shown}"


def table(report: Report) -> str:
    """The plan as a compact text table."""
    law = report.law
    lines = [f"law: {law.name}, {law.source}"]
    for s in report.sections():
        lines.append(f"{s.title}")
        lines.extend(f"  {f.label:<24} {fmt_value(f.value, f.unit, f.label)}" for f in s.figures)
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)
