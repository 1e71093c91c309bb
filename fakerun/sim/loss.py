"""Training and validation loss: a Chinchilla-style law at the tokens consumed, noise, spikes, NaNs."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fakerun.sim import rand
from fakerun.sim.schedule import lr_area, lr_area_at

if TYPE_CHECKING:
    from fakerun.presets import ModelSpec
    from fakerun.sim.job import JobSpec


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N**alpha + B / D**beta, in nats per token."""

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str

    def loss(self, n_params: float, tokens: float) -> float:
        """The predicted loss of an N-parameter model after D tokens (inf at D = 0)."""
        if tokens <= 0:
            return math.inf
        return self.E + self.A / float(n_params**self.alpha) + self.B / float(tokens**self.beta)


LAWS: dict[str, Law] = {
    # Besiroglu, Erdil, Barnett, You 2024 ("Chinchilla Scaling: A replication attempt", arXiv 2404.10102):
    # approach 3 refitted on Chinchilla's own data. The default: unlike the published fit, its optimum agrees
    # with approaches 1 and 2 (~20 tokens per parameter at Chinchilla's budget).
    "epoch-ai": Law(
        "epoch-ai", 1.8172, 482.01, 2085.43, 0.3478, 0.3658, "Besiroglu et al. 2024 (arXiv 2404.10102)"
    ),
    # Hoffmann et al. 2022 (arXiv 2203.15556), approach 3 as printed in the paper (Appendix D; PHYSICS.md 4).
    "chinchilla-3": Law(
        "chinchilla-3", 1.69, 406.4, 410.7, 0.34, 0.28, "Hoffmann et al. 2022 (arXiv 2203.15556), approach 3"
    ),
}
DEFAULT_LAW = "epoch-ai"
# Earlier names, kept so saved configs and job specs still load.
LAW_ALIASES = {"epoch": "epoch-ai", "chinchilla": "chinchilla-3"}


def law_name(name: str) -> str:
    """The canonical name of a law given by name or alias; ValueError naming the choices otherwise."""
    canonical = LAW_ALIASES.get(name, name)
    if canonical not in LAWS:
        raise ValueError(f"unknown scaling law {name!r} (choose from: {', '.join(LAWS)})")
    return canonical


# Relative per-step noise of the training loss (~1-1.5% in Megatron-LLM and BLOOM logs, excerpts 22, 26).
NOISE_REL = 0.010
DRIFT_REL = 0.008  # slow data-mix drift, correlated over ~50 steps
EVAL_GAP = 0.015  # validation sits ~1.5% above training loss
SPIKE_BLOCK = 2500  # at most one natural spike per block of steps
SPIKE_PROB = 0.3  # chance that a block has one: roughly one spike per ~8000 steps
SPIKE_SPAN = 60  # steps a spike takes to fade


def law(job: JobSpec) -> Law:
    """The job's scaling law."""
    return LAWS[law_name(job.law)]


def effective_params(model: ModelSpec) -> float:
    """N for the law: all parameters; for MoE the geometric mean of total and active (a common heuristic)."""
    if model.is_moe:
        return math.sqrt(model.params * model.active_params)
    return float(model.params)


# Learning-rate-aware progress (Tissue et al. 2024, "Scaling law with learning rate annealing", arXiv
# 2408.11029): the loss follows the area under the lr schedule, not the step count.
# Optimizer-limited descent from ln(V): e-folds per unit of integrated absolute lr (sum of lr_i). Fitted on
# excerpt 27 (GPT-2 124M, peak lr 1e-4 reached at iteration ~30): 10.72 at 20, 9.24 at 50, 8.64 at 60, 7.51 at
# 100, i.e. integrated lr 0.0035 -> 9.3 and 0.0085 -> 7.5 from 10.82.
OPT_SCALE = 0.018
# The unigram plateau every run crosses early: ~7.4-7.5 for GPT-2's 50k vocabulary (excerpt 27 at iterations
# 100-110; PHYSICS.md 4: "~7.4 by 100-200 iterations"); scaled with ln(V) for other vocabularies.
UNIGRAM_FRAC = 0.68
# Tokens that teach a model the unigram statistics (so a small-batch run does not wait on the Chinchilla term,
# whose fit starts at ~1e9 tokens and says nothing below ~1e7).
UNIGRAM_TOKENS = 1e5
# An un-annealed run sits this share above the law; the cooldown recovers it (a constant lr with no cooldown
# ends ~2-4% above cosine at the same tokens: Haegele et al. 2024, arXiv 2405.18392, Fig. 3 [mem]).
ANNEAL_LIFT = 0.03
# Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models", arXiv 2305.16264), eq. 5: repeated
# tokens are worth U * R* * (1 - exp(-R / R*)) fresh ones, with R* = 15.4 for data.
R_STAR_DATA = 15.4
# The cosine-to-10% schedule the law's runs followed (Hoffmann et al. 2022, section 3): the end loss of that
# schedule is the law; other schedules end above or below it by their areas.
REFERENCE_MIN_LR_RATIO = 0.1
_SMOOTH = 0.05  # nats: width of the soft max/min joining the curves


def loss_seed(job: JobSpec) -> int:
    """The seed of the loss's own draws: the job seed and the model, so two models never print one curve."""
    m = job.model
    return rand.hash64(job.seed, "loss-model", rand.stream_id(m.name), m.params, m.vocab) >> 1


@functools.lru_cache(maxsize=256)
def initial_loss(job: JobSpec) -> float:
    """Loss of the untrained model: ln(vocab) plus a little, by seed (excerpt 70: 12.25 at ln V = 11.76)."""
    seed = loss_seed(job)
    if job.pretrained_losses:
        return job.pretrained_losses[0]  # the model's measured loss on this data (nanoGPT's README)
    if job.regime == "finetune":
        # A pretrained model meeting instruction data: ~1.4-2.4 (HF Trainer logs, excerpt 60: 2.12 first).
        return 1.4 + 1.0 * rand.uniform(seed, "loss-init")
    return math.log(job.model.vocab) + 0.05 + 0.35 * rand.uniform(seed, "loss-init")


def _finetune_loss(job: JobSpec, step: int) -> float:
    # Fine-tuning falls fast over the first ~5% of the run, then slowly, to ~45-65% of where it started
    # (excerpt 60: 2.12 -> 1.16 over 1.5 epochs); no scaling law applies to a pretrained model. Progress is
    # counted in peak-lr steps, so a warm-up at a tiny lr moves it little.
    l0 = initial_loss(job)
    end = l0 * (0.45 + 0.2 * rand.uniform(loss_seed(job), "loss-end"))
    t = max(job.total_steps, 1)
    x, _ = lr_area(job, max(step - 1, 0))
    # The fast fall takes tens of optimizer steps however short the run (a 60-step fine-tune's first logged
    # loss is still near where it started), the slow one a good part of the run.
    shape = 0.6 * math.exp(-x / (0.05 * t + 20.0)) + 0.4 * math.exp(-x / (0.5 * t + 50.0))
    return end + (l0 - end) * shape


def tokens_before(job: JobSpec, step: int) -> float:
    """Tokens consumed before step `step` runs (step 1 is the first optimizer step)."""
    return float(max(step - 1, 0) * job.tokens_per_step)


def unique_tokens(job: JobSpec) -> float:
    """Tokens in one pass over the dataset: the whole run over its epochs."""
    return float(job.total_steps * job.tokens_per_step) / max(job.epochs, 1)


def data_constrained_tokens(tokens: float, unique: float, r_star: float = R_STAR_DATA) -> float:
    """Muennighoff et al. 2023's effective data D': fresh tokens count fully, repeats decay with R*."""
    if unique <= 0 or tokens <= unique:
        return tokens
    repeats = tokens / unique - 1.0
    return unique + unique * r_star * (1.0 - math.exp(-repeats / r_star))


def effective_tokens(job: JobSpec, step: int) -> float:
    """Tokens the optimizer has learnt from before `step`: repeats decayed (D'), times S1 per step run."""
    done = max(step - 1, 0)
    if done == 0:
        return 0.0
    s1, _ = lr_area(job, done)
    return data_constrained_tokens(float(done * job.tokens_per_step), unique_tokens(job)) * s1 / done


def _softmin(a: float, b: float, t: float = 0.3) -> float:
    if math.isinf(a):
        return b
    lo = min(a, b)
    return lo - t * math.log(math.exp((lo - a) / t) + math.exp((lo - b) / t))


def _softmax(a: float, b: float, t: float = _SMOOTH) -> float:
    hi = max(a, b)
    return hi + t * math.log1p(math.exp(-abs(a - b) / t))


@functools.lru_cache(maxsize=256)
def _anneal_calibration(job: JobSpec) -> tuple[float, float]:
    """(lift, bonus per unit of S2): the un-annealed excess and what a cooldown takes off per peak-lr step.

    The reference cosine-to-10% schedule of the same length ends exactly on the law at the run's tokens:
    its S1 shortfall plus the lift are what its annealing area S2 buys back (Tissue et al. 2024's -C * S2).
    """
    lw, n = law(job), effective_params(job.model)
    t = job.total_steps
    d_end = data_constrained_tokens(float(t * job.tokens_per_step), unique_tokens(job))
    s1, s2 = lr_area_at(
        t, peak=1.0, min_lr=REFERENCE_MIN_LR_RATIO, warmup=job.warmup_steps, total=t, kind="cosine"
    )
    on_law = lw.loss(n, d_end)
    # The lift is the schedule's: the same for fresh and repeated data (the law at the fresh tokens).
    lift = ANNEAL_LIFT * lw.loss(n, float(t * job.tokens_per_step))
    if s2 <= 0:
        return lift, 0.0
    return lift, (lw.loss(n, d_end * s1 / t) + lift - on_law) / s2


def expected_loss(job: JobSpec, step: int) -> float:
    """The noiseless curve at `step`: ln(vocab) at first, as fast as the integrated lr allows, then the law.

    Three bounds, the highest binding: the optimizer's (how far the lr applied so far can move the weights
    from initialisation), the data's (the law at the effective tokens, less the annealing bonus of the
    cooldown so far), and the start (never above ln(V) plus the init excess).
    """
    if job.regime == "finetune":
        return _finetune_loss(job, step)
    l0 = initial_loss(job)
    lw, n = law(job), effective_params(job.model)
    s1, s2 = lr_area(job, max(step - 1, 0))
    d_eff = effective_tokens(job, step)
    lift, per_s2 = _anneal_calibration(job)
    data = lw.loss(n, d_eff) + lift - per_s2 * s2 if d_eff > 0 else math.inf
    unigram = UNIGRAM_FRAC * math.log(job.model.vocab)
    early = unigram + (l0 - unigram) * math.exp(-d_eff / UNIGRAM_TOKENS)
    data = _softmin(data, early)
    opt = lw.E + (l0 - lw.E) * math.exp(-s1 * job.lr / OPT_SCALE)
    return min(l0, _softmax(data, opt))


@dataclass(frozen=True)
class Spike:
    """A loss spike in progress: `age` steps after its start, with its loss and grad-norm peaks."""

    start: int
    age: int
    loss_peak: float  # fraction of the way back up to the initial loss at the peak
    grad_peak: float  # grad-norm multiplier at the peak


def _spike_in_block(job: JobSpec, block: int) -> int | None:
    if rand.uniform(job.seed, "spike", block) >= SPIKE_PROB:
        return None
    start = block * SPIKE_BLOCK + int(rand.uniform(job.seed, "spike-at", block) * (SPIKE_BLOCK - SPIKE_SPAN))
    # Never in the first steps: early training has its own large grad norms.
    return start if start > max(job.warmup_steps // 2, 50) else None


def spike_at(job: JobSpec, step: int) -> Spike | None:
    """The spike affecting `step`, if any: rare natural ones (seeded) or the job's forced ones."""
    best: Spike | None = None
    for s in job.spike_steps:
        if s <= step < s + SPIKE_SPAN:
            best = Spike(s, step - s, 0.35 + 0.15 * rand.uniform(job.seed, "spike-mag", s), 400.0)
    if best is not None or not job.spikes or job.regime == "finetune":
        return best
    block = step // SPIKE_BLOCK
    for b in (block, block - 1):
        if b < 0:
            continue
        start = _spike_in_block(job, b)
        if start is not None and start <= step < start + SPIKE_SPAN:
            u = rand.uniform(job.seed, "spike-mag", start)
            return Spike(start, step - start, 0.04 + 0.12 * u, 5.0 + 40.0 * u)
    return None


def spike_loss_factor(spike: Spike | None) -> float:
    """Share of (initial - expected) loss a spike adds back; the loss trails the grad norm by 2-3 steps."""
    if spike is None or spike.age < 2:
        return 0.0
    t = spike.age
    # BLOOM-176B (excerpt 22): loss 2.20 -> 5.10 peak -> 2.21 within ~30 iterations.
    rise = min(1.0, (t - 1) / 3.0)
    return spike.loss_peak * rise * math.exp(-max(0.0, t - 4.0) / 7.0)


def is_nan_step(job: JobSpec, step: int) -> bool:
    """Whether the step's loss is NaN (a failure scenario): the iteration is skipped."""
    return step in job.nan_steps


_UNSET: object = object()


def train_loss(job: JobSpec, step: int, spike: object = _UNSET) -> float:
    """The all-reduced training loss at `step`: the same on every rank (seeded by seed and step only)."""
    if is_nan_step(job, step):
        return math.nan
    sp = spike_at(job, step) if spike is _UNSET else spike
    base = expected_loss(job, step)
    if isinstance(sp, Spike):
        base += (initial_loss(job) - base) * spike_loss_factor(sp)
    drift = DRIFT_REL * rand.value_noise(loss_seed(job), "loss-drift", step / 50.0)
    # Clipped at 2.5 sigma: batch losses have no heavy tails away from spikes (which are modelled apart).
    noise = NOISE_REL * max(-2.5, min(2.5, rand.normal(loss_seed(job), "loss-noise", step)))
    if job.regime == "finetune":
        # Small SFT batches of uneven examples: ~5% step-to-step (excerpt 60: 1.58, 1.60, 1.21, 1.16).
        return base * (1.0 + 5.0 * noise + drift)
    # No extra noise early: near initialisation every batch scores ~ln(vocab), and the fast descent
    # dominates, so real logs fall step after step at first (excerpt 70: 12.25 at step 1, 10.24 at 10).
    return base * (1.0 + drift + noise)


def eval_loss(job: JobSpec, step: int, split: str = "validation") -> float:
    """Validation loss after `step`: consistently above the noiseless training curve, small noise; the test
    split (`split` "test") is held-out data of the same distribution, with noise of its own; the train split
    ("train", nanoGPT's estimate_loss) has no generalisation gap but the same sampling noise."""
    base = expected_loss(job, step + 1)
    spike = spike_at(job, step)
    if spike is not None:
        base += (initial_loss(job) - base) * spike_loss_factor(spike) * 0.8
    if split == "train":
        gap = 0.0
    elif job.pretrained_losses:
        # The published validation loss sits where it does against the training one (below it, for some).
        gap = job.pretrained_losses[1] / job.pretrained_losses[0] - 1.0
    else:
        gap = EVAL_GAP * (2.0 if job.regime == "finetune" else 1.0)
    stream = "eval-noise" if split == "validation" else f"{split}-noise"
    return base * (1.0 + gap + 0.003 * rand.normal(loss_seed(job), stream, step))


def perplexity(loss: float) -> float:
    """exp(loss), capped where it would overflow."""
    return math.exp(min(loss, 700.0)) if not math.isnan(loss) else math.nan
