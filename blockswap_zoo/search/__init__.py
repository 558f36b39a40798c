"""BlockSwap search: an exact budget sampler, Fisher potential (and other zero-cost proxies), the search loop.

``fisher_potential`` and ``fisher_per_block`` here run the search's fast CPU path where a model allows it;
``proxies`` holds the definitions in plain PyTorch.

Light at import: no torchvision, no typer; datasets are imported only when a search loads one.
"""

from .proxies import PROXIES, get_proxy, grad_norm, naswot, snip, synflow
from .runner import ReportError, SearchResult, SearchSettings, load_report, run_search
from .sampler import BudgetError, count_feasible, parse_budget, reachable_range, sample_genotypes
from .scoring import (
    MODES,
    Candidate,
    ScoreConfig,
    candidate_seed,
    fisher_per_block,
    fisher_potential,
    mode_config,
    score_genotype,
)

__all__ = [
    "MODES",
    "PROXIES",
    "BudgetError",
    "Candidate",
    "ReportError",
    "ScoreConfig",
    "SearchResult",
    "SearchSettings",
    "candidate_seed",
    "count_feasible",
    "fisher_per_block",
    "fisher_potential",
    "get_proxy",
    "grad_norm",
    "load_report",
    "mode_config",
    "naswot",
    "parse_budget",
    "reachable_range",
    "run_search",
    "sample_genotypes",
    "score_genotype",
    "snip",
    "synflow",
]
