"""fakerun.plan: from a compute budget to the model, data, cluster time and job (the library behind
fakerun-plan)."""

from __future__ import annotations

from fakerun.plan.budget import DEFAULT_MFU, Budget, BudgetError, make_budget
from fakerun.plan.laws import DEFAULT_LAW, LAWS, KaplanLaw, Law, ScalingLaw, get_law
from fakerun.plan.optimum import (
    DataConstrained,
    InferenceAware,
    IsoPoint,
    Optimum,
    at_params,
    compute_optimal,
    data_constrained,
    frontier,
    inference_aware,
    isoflop,
    isoflop_curve,
)
from fakerun.plan.report import Report, make_report

__all__ = [
    "DEFAULT_LAW",
    "DEFAULT_MFU",
    "LAWS",
    "Budget",
    "BudgetError",
    "DataConstrained",
    "InferenceAware",
    "IsoPoint",
    "KaplanLaw",
    "Law",
    "Optimum",
    "Report",
    "ScalingLaw",
    "at_params",
    "compute_optimal",
    "data_constrained",
    "frontier",
    "get_law",
    "inference_aware",
    "isoflop",
    "isoflop_curve",
    "make_budget",
    "make_report",
]
