"""Compare two finished search reports of the same search (e.g. one run on a GPU, one on a CPU).

    python benchmarks/compare_search_reports.py runs/official/search /tmp/pubsearch

Checks that they scored the same candidates (index, genotype, init seed), then prints both
winners, how much of the top 5 they share, and the relative differences of the scores
(median and largest): how far the two devices' fp32 rounding moves Fisher potential.
"""

from __future__ import annotations

import argparse
import statistics

from blockswap_zoo.search import load_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    args = ap.parse_args()
    a, b = load_report(args.first), load_report(args.second)
    ca, cb = {c.index: c for c in a.candidates}, {c.index: c for c in b.candidates}
    common = sorted(set(ca) & set(cb))
    differ = [i for i in common if (ca[i].genotype, ca[i].seed) != (cb[i].genotype, cb[i].seed)]
    if differ:
        raise SystemExit(f"not the same search: candidate {differ[0]} differs in genotype or init seed")
    scored = [i for i in common if ca[i].score == ca[i].score and cb[i].score == cb[i].score]  # not NaN
    rel = sorted(abs(ca[i].score - cb[i].score) / abs(ca[i].score) for i in scored if ca[i].score)
    top_a = sorted(scored, key=lambda i: -ca[i].score)[:5]
    top_b = sorted(scored, key=lambda i: -cb[i].score)[:5]
    for name, r in (("first", a), ("second", b)):
        s = r.settings
        print(f"{name}: {r.report_dir} ({s.device_type}, {s.mode} mode, {len(r.candidates)} candidates)")
    print(f"{len(scored)} candidates scored in both, same genotypes and init seeds")
    print(f"winner: #{a.winner_index} and #{b.winner_index} ({'same' if a.winner == b.winner else 'different'})")
    print(f"top 5: {top_a} and {top_b}; {len(set(top_a) & set(top_b))} shared, same order: {top_a == top_b}")
    if rel:
        print(f"relative score difference: median {statistics.median(rel):.1e}, largest {rel[-1]:.1e}")


if __name__ == "__main__":
    main()
