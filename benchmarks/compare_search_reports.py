"""Compare two finished search reports of the same search (e.g. one run on a GPU, one on a CPU).

    python benchmarks/compare_search_reports.py runs/official/search /tmp/pubsearch
    python benchmarks/compare_search_reports.py device-checks/candidates.jsonl /tmp/cpu-search

Either argument may be a report's ``candidates.jsonl`` alone (what a lent GPU session brings back);
its winner is then the highest score. Checks that both scored the same candidates (index, genotype,
init seed), then prints both winners, how much of the top 5 they share, and the relative
differences of the scores (median and largest): how far the two devices' fp32 rounding moves
Fisher potential.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from blockswap_zoo.search import Candidate, load_report


def _load(path: str) -> tuple[str, dict[int, Candidate], int]:
    """A description, the candidates by index and the winner's index, of a report or a candidates file."""
    if Path(path).is_file():
        lines = Path(path).read_text().splitlines()
        found = {c.index: c for c in (Candidate.from_dict(json.loads(line)) for line in lines if line.strip())}
        best = max((c for c in found.values() if c.score == c.score), key=lambda c: c.score)  # NaN never wins
        return f"{path} ({len(found)} candidates, no settings)", found, best.index
    r = load_report(path)
    s = r.settings
    label = f"{r.report_dir} ({s.device_type}, {s.mode} mode, {len(r.candidates)} candidates)"
    return label, {c.index: c for c in r.candidates}, r.winner_index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", help="a finished report directory, or its candidates.jsonl")
    ap.add_argument("second", help="the same, of the other run")
    args = ap.parse_args()
    (la, ca, wa), (lb, cb, wb) = _load(args.first), _load(args.second)
    common = sorted(set(ca) & set(cb))
    differ = [i for i in common if (ca[i].genotype, ca[i].seed) != (cb[i].genotype, cb[i].seed)]
    if differ:
        raise SystemExit(f"not the same search: candidate {differ[0]} differs in genotype or init seed")
    scored = [i for i in common if ca[i].score == ca[i].score and cb[i].score == cb[i].score]  # not NaN
    rel = sorted(abs(ca[i].score - cb[i].score) / abs(ca[i].score) for i in scored if ca[i].score)
    top_a = sorted(scored, key=lambda i: -ca[i].score)[:5]
    top_b = sorted(scored, key=lambda i: -cb[i].score)[:5]
    print(f"first: {la}")
    print(f"second: {lb}")
    print(f"{len(scored)} candidates scored in both, same genotypes and init seeds")
    print(f"winner: #{wa} and #{wb} ({'same' if wa == wb else 'different'})")
    print(f"top 5: {top_a} and {top_b}; {len(set(top_a) & set(top_b))} shared, same order: {top_a == top_b}")
    if rel:
        print(f"relative score difference: median {statistics.median(rel):.1e}, largest {rel[-1]:.1e}")


if __name__ == "__main__":
    main()
