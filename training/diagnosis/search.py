"""Timestep-block search (paper Appendix D and Extended Data Fig. 1).

1. Per plane, score every (timestep, block) in ``TIMESTEPS x BLOCKS`` on validation (e.g. validation macro AUROC of
   a per-plane linear probe), given either as a table ``plane -> {(t, block): score}`` or a callback
   ``score_plane(plane, t, block)``.
2. Keep the top 4 per plane (higher is better; NaN counts as worst; ties go to the earlier grid entry: smaller
   timestep, then block order).
3. Score all ``4^3`` cross-plane combinations with ``score_combination({plane: (t, block)})`` (e.g. validation macro
   AUROC of the fused model) and keep the best (ties: first in enumeration order, i.e. best-ranked per-plane
   candidates first).

:func:`write_search_outputs` writes ``per_plane.csv/.md`` (the t x block grid per plane, like Extended Data
Fig. 1), ``combinations.csv/.md`` (all combinations, best first) and ``chosen.json`` (the configuration, in the
``planes`` format of the training configs).
"""
from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from OrthoDiffusionLib.labels import PLANES
from OrthoDiffusionLib.progress import ProgressFn

from ..evaluation.metrics import markdown_table, write_csv

__all__ = [
    "TIMESTEPS",
    "BLOCKS",
    "Candidate",
    "SearchResult",
    "candidate_grid",
    "score_per_plane",
    "top_candidates",
    "search_combinations",
    "timestep_block_search",
    "write_search_outputs",
]

TIMESTEPS: Tuple[int, ...] = (10, 30, 50, 100, 150, 200, 300, 500)
BLOCKS: Tuple[str, ...] = ("mid_0", "mid_1", "mid_2")
Candidate = Tuple[int, str]
PlaneScores = Mapping[str, Mapping[Candidate, float]]


def candidate_grid(timesteps: Sequence[int] = TIMESTEPS, blocks: Sequence[str] = BLOCKS) -> List[Candidate]:
    """``[(t, block), ...]`` in grid order (timestep-major)."""
    return [(int(t), str(b)) for t in timesteps for b in blocks]


def _key(score: float) -> float:
    return -math.inf if score is None or (isinstance(score, float) and math.isnan(score)) else float(score)


def score_per_plane(score_plane: Callable[[str, int, str], float], planes: Sequence[str] = PLANES,
                    timesteps: Sequence[int] = TIMESTEPS, blocks: Sequence[str] = BLOCKS,
                    progress: Optional[ProgressFn] = None) -> Dict[str, Dict[Candidate, float]]:
    """Evaluate ``score_plane(plane, t, block)`` on the whole grid of every plane
    (``progress("per-plane probes", fraction done)`` after each)."""
    grid = candidate_grid(timesteps, blocks)
    total, done = len(planes) * len(grid), 0
    out: Dict[str, Dict[Candidate, float]] = {}
    for p in planes:
        out[p] = {}
        for t, b in grid:
            out[p][(t, b)] = float(score_plane(p, t, b))
            done += 1
            if progress is not None:
                progress("per-plane probes", done / total)
    return out


def top_candidates(plane_scores: PlaneScores, k: int = 4) -> Dict[str, List[Candidate]]:
    """The ``k`` best candidates per plane, best first."""
    out = {}
    for plane, scores in plane_scores.items():
        ranked = sorted(scores.items(), key=lambda item: (-_key(item[1]), int(item[0][0]), str(item[0][1])))
        if len(ranked) < k:
            raise ValueError(f"plane {plane!r} has {len(ranked)} scored candidates, fewer than top-{k}")
        out[plane] = [(int(c[0]), str(c[1])) for c, _s in ranked[:k]]
    return out


def search_combinations(top: Mapping[str, Sequence[Candidate]],
                        score_combination: Callable[[Dict[str, Candidate]], float],
                        progress: Optional[ProgressFn] = None
                        ) -> List[Tuple[Dict[str, Candidate], float]]:
    """Score every cross-plane combination of the per-plane candidates; returns ``[(config, score)]`` best first
    (``progress("cross-plane combinations", fraction done)`` after each)."""
    planes = list(top)
    combos = [dict(zip(planes, choice)) for choice in itertools.product(*[top[p] for p in planes])]
    scored = []
    for i, config in enumerate(combos):
        scored.append((i, config, float(score_combination(dict(config)))))
        if progress is not None:
            progress("cross-plane combinations", (i + 1) / len(combos))
    scored.sort(key=lambda item: (-_key(item[2]), item[0]))
    return [(config, s) for _, config, s in scored]


@dataclass
class SearchResult:
    """``plane_scores``: the per-plane grid; ``top``: the kept candidates per plane; ``combinations``: all scored
    combinations best first; ``best``/``best_score``: the chosen configuration."""

    plane_scores: Dict[str, Dict[Candidate, float]]
    top: Dict[str, List[Candidate]]
    combinations: List[Tuple[Dict[str, Candidate], float]]
    metric: str = "validation macro AUROC"

    @property
    def best(self) -> Dict[str, Candidate]:
        return self.combinations[0][0]

    @property
    def best_score(self) -> float:
        return self.combinations[0][1]

    def chosen_config(self) -> Dict:
        """``{"planes": {plane: {"timestep": t, "block": b}}, "score": s, "metric": ...}``."""
        return {"planes": {p: {"timestep": t, "block": b} for p, (t, b) in self.best.items()},
                "score": self.best_score, "metric": self.metric}


def timestep_block_search(plane_scores: Union[PlaneScores, Callable[[str, int, str], float]],
                          score_combination: Callable[[Dict[str, Candidate]], float], top_k: int = 4,
                          planes: Sequence[str] = PLANES, timesteps: Sequence[int] = TIMESTEPS,
                          blocks: Sequence[str] = BLOCKS, metric: str = "validation macro AUROC",
                          progress: Optional[ProgressFn] = None) -> SearchResult:
    """The whole search (see module doc). ``plane_scores`` is a finished table or a per-plane scoring callback."""
    if callable(plane_scores):
        table = score_per_plane(plane_scores, planes, timesteps, blocks)
    else:
        table = {p: {(int(t), str(b)): float(s) for (t, b), s in plane_scores[p].items()} for p in planes}
    top = top_candidates(table, top_k)
    return SearchResult(table, top, search_combinations(top, score_combination, progress), metric)


def _per_plane_rows(result: SearchResult) -> List[Dict]:
    rows = []
    for plane, scores in result.plane_scores.items():
        rank = {c: i + 1 for i, c in enumerate(result.top[plane])}
        for (t, b), s in scores.items():
            rows.append({"plane": plane, "timestep": t, "block": b, "score": s, "top_rank": rank.get((t, b), "")})
    return rows


def _grid_markdown(result: SearchResult, digits: int) -> str:
    parts = [f"# Timestep-block search: per-plane {result.metric}\n",
             "Rows: timestep; columns: block. `*` marks the top candidates kept per plane.\n"]
    for plane, scores in result.plane_scores.items():
        timesteps = sorted({t for t, _ in scores})
        blocks = sorted({b for _, b in scores})
        rows = []
        for t in timesteps:
            row = {"t": str(t)}
            for b in blocks:
                s = scores.get((t, b), math.nan)
                mark = "*" if (t, b) in result.top[plane] else ""
                row[b] = "–" if math.isnan(s) else f"{s:.{digits}f}{mark}"
            rows.append(row)
        parts.append(f"## {plane}\n\n" + markdown_table(rows, digits))
    return "\n".join(parts)


def write_search_outputs(result: SearchResult, out_dir: Union[str, os.PathLike], digits: int = 4,
                         figure: bool = True) -> Dict[str, Path]:
    """Write ``per_plane.csv``, ``per_plane.md``, ``combinations.csv``, ``combinations.md``, ``chosen.json`` and (with
    ``figure``) the heatmap ``per_plane.png`` into ``out_dir`` (created); returns their paths keyed by file name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("per_plane.csv", "per_plane.md", "combinations.csv", "combinations.md",
                                           "chosen.json")}
    write_csv(_per_plane_rows(result), paths["per_plane.csv"])
    paths["per_plane.md"].write_text(_grid_markdown(result, digits), encoding="utf-8")
    combo_rows = []
    for rank, (config, score) in enumerate(result.combinations, start=1):
        row: Dict = {"rank": rank}
        for p, (t, b) in config.items():
            row[f"{p}_timestep"], row[f"{p}_block"] = t, b
        row["score"] = score
        combo_rows.append(row)
    write_csv(combo_rows, paths["combinations.csv"])
    paths["combinations.md"].write_text(f"# Cross-plane combinations ({result.metric}), best first\n\n"
                                        + markdown_table(combo_rows, digits), encoding="utf-8")
    paths["chosen.json"].write_text(json.dumps(result.chosen_config(), indent=2) + "\n", encoding="utf-8")
    if figure:
        from ..evaluation.plots import plot_timestep_block_grid

        paths["per_plane.png"] = plot_timestep_block_grid(result.plane_scores, out / "per_plane.png", top=result.top,
                                                          title=f"Per-plane {result.metric}")
    return paths
