"""Synthetic glioma cohort with planted structure, in the cohort format (docs/cohort-format.md).

It is the embedded default cohort (a new user runs a whole study with no data) and the ground
truth the tests check the pipeline against. A named **scenario** (``SyntheticConfig.scenario``,
``--scenario``; README, "Synthetic scenarios") picks the world, and cohort.json's ``truth`` says
what it plants and which comparisons it decides:

* ``histology_needed`` (the default) -- part of the diagnosis lives only in the slide. WHO 2021
  grades an IDH-mutant astrocytoma 4 when it shows necrosis or microvascular proliferation
  (MVP), which expression sees only weakly: classes 1 and 2 share their tumour and TME centroids
  but for a weak proliferation difference, every gene sees its latent through a per-patient
  noise (sd 0.25), and grade-4 morphology (``Morphology``: in every class-1 and GBM patient, in
  30% of oligodendrogliomas, never in class 2) replaces the tumour cluster's core by necrosis
  and/or its rim by MVP patches (an extra patch type). So a model that reads the slide can beat
  one on expression alone (genomics_only, logreg_pca).
* ``null`` -- the world before scenarios: genes see the latents themselves, patches a noisier
  copy, so histology adds nothing beyond the genes; arms that differ only by seed have a true
  difference of 0. Its files are byte-identical to those of the generator before scenarios.
* ``imbalance`` -- both subspaces carry the diagnosis with independent noise: the tumour genes
  strongly, in clean genes (learned first); the TME subspace (centroids 2x) spread thin over
  noisy genes (per-gene noise 2-3) and noisier patches (learned slowly), so plain summed
  training can starve the TME stream. ``tme_shift: 0`` keeps its TME evidence clean.

The rest of this docstring describes the ``null`` world; the others change the constants
named above (``WORLDS``). What is planted:

* **Tumour state** -- a categorical WHO-2021 diagnosis with TCGA GBM-LGG-like imbalance
  (0 GBM IDH-wt 45%, 1 astrocytoma IDH-mut grade 4 12%, 2 astrocytoma IDH-mut grade 2-3 25%,
  3 oligodendroglioma 18%) plus a continuous 4-d latent (IDH, 1p/19q, proliferation, chr7/EGFR
  programmes) around the class centroid. It drives the tumour genes ``TUM_001..``, the diagnosis,
  the grade (classes 0, 1 -> 4; classes 2, 3 -> 3 when proliferation is high, else 2) and the
  features of tumour patches.
* **TME state** -- a continuous 4-d latent (immune, stroma, necrosis, vascular) whose mean
  depends weakly on the diagnosis. It drives the TME genes ``TME_001..``, how many patches are
  immune/stroma/necrosis and their features, and part of the hazard.
* **Survival** -- Weibull times whose median depends on the diagnosis and whose hazard rises with
  the TME latent; independent exponential censoring tuned so that ~35% are censored.
* **Patches** -- every slide is a contiguous blob of tissue on a 256-px patch lattice (``coords``
  are (x, y) pixels, patches in scan order like CLAM writes them). Tumour patches form one
  spatial cluster, necrosis sits in the tumour core (more when the necrosis latent is high) and
  immune patches concentrate at the tumour border, so spatial arrangement carries signal.
  Patch features = type prototype + a noisy copy of the latent (tumour patches see the tumour
  latent, the others the TME latent; H&E shows molecular state only in part) + a per-slide stain
  shift + noise, so histology alone is informative but weaker than the tumour genes.
  ~10% of patients have two slides.
* ``conflict`` in [0, 1] -- histology conflict between the subspaces, planted where both must
  read: every patient's TME-compartment patches (necrosis, immune, stroma, normal) also carry,
  along the *tumour* feature directions, the tumour signature of a *different* diagnosis (drawn
  per patient), with strength ``conflict`` x that class's centroid signature. Both streams read
  the same patches through the patch projection; the tumour stream's evidence points to the
  diagnosis, the TME stream's to the planted class, so the gradients reaching a shared
  projection through the two streams disagree more as ``conflict`` rises (the measured cosine
  falls: tests/test_shared_trunk.py). 0 = none (the default: the feature files are then those
  of the generator without this knob). The planted class comes from a stream of its own.
* ``tme_shift`` in [0, 1] -- for that fraction of patients (chosen at random, exact count
  round(tme_shift * patients)) the TME latent is drawn around the centroid of a *different*
  diagnosis, so TME genes, TME patches and the TME part of the hazard point to another class
  than the tumour subspace. This is what ``conflict`` meant before; it is read only by
  parameters the TME stream owns, so it plants no gradient conflict on shared parameters. The
  clinical table marks these patients (``synthetic_conflict`` 0/1, ``tme_source_diagnosis``).
* **Clinical covariates** (for the clinical baselines) -- ``age`` (whole years, normal around a
  diagnosis-specific mean as in glioma: GBM IDH-wt ~62, IDH-mutant astrocytoma ~37-39,
  oligodendroglioma ~44, sd 11, clipped to 18..90), ``is_female`` (0/1, 42% female) and
  ``idh_mutant`` (1 for diagnoses 1, 2, 3, 0 for GBM IDH-wt). Age and sex carry no signal beyond
  the diagnosis (the hazard does not use them); ``idh_mutant`` is the diagnosis' IDH status.

Expression is written as raw positive TPM-like values (log1p then z-score is the intended
normalisation); 16 background genes ``BG_001..`` outside both gene sets are included, as a real
expression matrix would have. Tables and labels come from their own random stream, so the same
seed gives identical clinical/expression tables whatever ``patches``/``dim`` are; same arguments
give byte-identical files (h5 written without timestamps). The covariates have a third stream of
their own, so adding them changed no expression value, label or feature file; the planted
conflict class a fourth, so ``conflict`` changes no table and, at 0, no feature file.
``cohort.json`` records the parameters. The parameters and their defaults are
``ksmodel.config.SyntheticConfig``: the one synthetic default of the project.
``ensure_synthetic`` builds a cohort beside its final folder and renames it into place, so
concurrent runs asking for the same cohort never see a half-written one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ksmodel.config import SCENARIOS, ConfigError, SyntheticConfig, to_dict

DIAGNOSES = ("GBM, IDH-wildtype", "Astrocytoma, IDH-mutant, grade 4",
             "Astrocytoma, IDH-mutant, grade 2-3",
             "Oligodendroglioma, IDH-mutant, 1p/19q-codeleted")
PREVALENCE = np.array([0.45, 0.12, 0.25, 0.18])
# Tumour latent programmes: IDH-mutant, 1p/19q codeletion, proliferation, chr7 gain / EGFR.
TUMOUR_CENTROIDS = np.array([[-1.5, 0.0, 1.0, 1.2],
                             [1.2, -0.8, 1.0, 0.0],
                             [1.2, -0.8, -0.6, 0.0],
                             [1.2, 1.2, -0.6, 0.0]])
TUMOUR_NOISE = 0.9
# TME latent: immune, stroma, necrosis, vascular.
TME_CENTROIDS = 0.6 * np.array([[0.8, 0.3, 1.0, 1.0],
                                [0.3, 0.0, 0.6, 0.5],
                                [-0.6, -0.2, -0.9, -0.6],
                                [-0.4, 0.2, -0.9, 0.3]])
TME_NOISE = 0.9
MEDIAN_DAYS = np.array([430.0, 900.0, 2400.0, 3600.0])
HAZARD_TME = np.array([0.25, 0.1, 0.35, 0.15])  # log-hazard per unit of each TME latent
WEIBULL_SHAPE = 1.3
CENSORING = 0.35
TWO_SLIDES = 0.1
HISTOLOGY_NOISE = 1.0  # sd of the latent noise that patches see (genes see the latent itself)
CONFLICT_STRENGTH = 1.0  # at conflict = 1: the planted signature as large as a class centroid's
STAIN_SHIFT = 0.1
N_BACKGROUND = 16
PATCH_PX = 256
PATCH_TYPES = ("tumour", "necrosis", "immune", "stroma", "normal")
MVP_TYPE = len(PATCH_TYPES)  # the extra patch type of grade-4 worlds: microvascular proliferation
# --- clinical covariates (baselines) ---
AGE_MEAN = np.array([62.0, 39.0, 37.0, 44.0])  # years at diagnosis, per diagnosis class
AGE_SD = 11.0
AGE_RANGE = (18, 90)
FEMALE = 0.42


@dataclass(frozen=True)
class Morphology:
    """Grade-4 morphology that only the slide shows (WHO 2021: an IDH-mutant astrocytoma is grade
    4 when it shows necrosis or microvascular proliferation; expression sees this weakly).

    ``present[c]``: probability that a patient of diagnosis c shows it; a patient who does shows
    necrosis, MVP or both (a third each), so the rule "grade-4 morphology" is an OR of two patch
    patterns. Necrosis replaces the tumour cluster's core (``necrosis`` = its share of the tumour
    patches), MVP its rim (``mvp``), so what is planted is also where it sits on the slide."""

    present: tuple[float, float, float, float] = (1.0, 1.0, 0.0, 0.3)
    necrosis: tuple[float, float] = (0.3, 0.5)
    mvp: tuple[float, float] = (0.2, 0.35)


@dataclass(frozen=True)
class World:
    """What one scenario plants: the generator's constants and the truth written to cohort.json.

    ``gene_noise``: sd of a per-patient noise on the latent each gene subspace sees (tumour, TME);
    0 = the genes see the latent itself. ``gene_spread``: per-gene noise range of each subspace
    (how much averaging over its genes a model needs). ``morphology``: grade-4 patch patterns, or
    None (necrosis then follows the TME necrosis latent, as the genes do)."""

    name: str
    tumour_centroids: np.ndarray
    tme_centroids: np.ndarray
    gene_noise: tuple[float, float] = (0.0, 0.0)
    gene_spread: tuple[tuple[float, float], tuple[float, float]] = ((0.3, 0.6), (0.3, 0.6))
    morphology: Morphology | None = None
    low_purity: float = 0.0  # share of patients whose tumour genes read mostly normal tissue
    histology_noise: tuple[float, float] = (HISTOLOGY_NOISE, HISTOLOGY_NOISE)  # (tumour, TME)
    truth: dict[str, Any] = field(default_factory=dict)


NULL_TRUTH = {
    "effect": "none between arms that differ only by their training seed (or by a rule proven "
              "identical to another): their true difference is 0, so a verdict 'better' or "
              "'worse' between them is a false positive",
    "histology": "patches see a noisier copy of the latents the genes see: histology carries "
                 "no information beyond the genes (full vs genomics_only: no planted gain)",
    "comparisons": [{"a": "an arm", "b": "the same arm with other training seeds",
                     "expected": "equivalent or undecided (never better/worse)",
                     "difference": 0.0}],
}
HISTOLOGY_TRUTH = {
    "effect": "part of the diagnosis lives only in the slide: astrocytoma IDH-mutant grade 4 "
              "(class 1) differs from grade 2-3 (class 2) by necrosis at the tumour core and/or "
              "microvascular proliferation at its rim (grade-4 morphology, an OR of two patch "
              "patterns); their expression differs only weakly (proliferation) and every gene "
              "sees its latent through a per-patient noise",
    "histology": "necessary: a model that reads the slide can separate class 1 from class 2, a "
                 "model of expression alone mostly cannot",
    "comparisons": [
        {"a": "full", "b": "genomics_only", "expected": "better"},
        {"a": "full", "b": "logreg_pca", "expected": "better"},
    ],
}
IMBALANCE_TRUTH = {
    "effect": "modality imbalance: both subspaces carry the diagnosis with independent noise; "
              "the tumour genes carry it strongly and in few clean genes (learned first), the "
              "TME subspace as well but spread thin over many noisy genes and the TME patches "
              "(learned slowly). Under plain summed training the tumour stream can fit the "
              "training part before the TME stream has learned, which starves it",
    "histology": "the TME patches carry the TME latent (diagnosis-dependent)",
    "comparisons": [
        {"a": "TME stream (its logits out_m) trained with the tumour stream", "b": "the TME "
         "stream trained alone", "expected": "lower (starvation; measured, not guaranteed)"},
        {"a": "a coordination rule", "b": "uniform", "expected": "unknown: the question"},
    ],
}
WORLDS: dict[str, World] = {w.name: w for w in (
    World("null", TUMOUR_CENTROIDS, TME_CENTROIDS, truth=NULL_TRUTH),
    World("histology_needed",
          np.array([[-1.5, 0.0, 1.0, 1.2],
                    [1.2, -0.8, 0.25, 0.0],  # grade 4 vs 2-3: proliferation differs weakly
                    [1.2, -0.8, -0.25, 0.0],
                    [1.2, 1.2, -0.6, 0.0]]),
          0.6 * np.array([[0.8, 0.3, 1.0, 1.0],
                          [-0.2, -0.1, -0.3, -0.1],  # classes 1, 2: the same TME
                          [-0.2, -0.1, -0.3, -0.1],
                          [-0.4, 0.2, -0.9, 0.3]]),
          gene_noise=(0.25, 0.25), morphology=Morphology(), truth=HISTOLOGY_TRUTH),
    World("imbalance", TUMOUR_CENTROIDS, 2.0 * TME_CENTROIDS, histology_noise=(2.0, 2.0),
          gene_spread=((0.1, 0.2), (2.0, 3.0)), truth=IMBALANCE_TRUTH),
)}
assert tuple(sorted(WORLDS)) == tuple(sorted(SCENARIOS))


def _genes(rng: np.random.Generator, z: np.ndarray, n: int,
           spread: tuple[float, float] = (0.3, 0.6)) -> np.ndarray:
    """TPM-like expression: each gene loads on one latent programme (1 in 5 genes is noise)."""
    k = z.shape[1]
    base = rng.uniform(1.0, 6.0, n)  # log TPM ~ 3..400
    main = rng.integers(0, k, n)
    weight = rng.choice([-1.0, 1.0], n) * rng.uniform(0.4, 1.0, n) * (rng.random(n) >= 0.2)
    loading = np.zeros((k, n))
    loading[main, np.arange(n)] = weight
    noise = rng.uniform(*spread, n)
    log_tpm = base + z @ loading + rng.standard_normal((len(z), n)) * noise
    return np.round(np.expm1(np.maximum(log_tpm, 0.0)) + 0.01, 3)


def _censoring_rate(times: np.ndarray, target: float) -> float:
    """Exponential censoring rate r with mean(P(C < T)) = mean(1 - exp(-r T)) = target."""
    lo, hi = 1e-9, 1.0
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if np.mean(-np.expm1(-mid * times)) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def _tables(seed_seq: np.random.SeedSequence, patients: int, tme_shift: float, n_tumour: int,
            n_tme: int, world: World = WORLDS["null"]) -> dict[str, object]:
    """Clinical labels, latents and expression from their own stream (independent of patches)."""
    rng = np.random.default_rng(seed_seq)
    tumour_c, tme_c = world.tumour_centroids, world.tme_centroids
    diag = rng.choice(4, size=patients, p=PREVALENCE)
    z_t = tumour_c[diag] + rng.normal(0.0, TUMOUR_NOISE, (patients, 4))
    grade = np.where(diag <= 1, 4, np.where(z_t[:, 2] + rng.normal(0, 0.4, patients)
                                            > tumour_c[2, 2], 3, 2))
    order = rng.permutation(patients)
    other = (diag + rng.integers(1, 4, patients)) % 4
    is_conflict = np.zeros(patients, dtype=bool)
    is_conflict[order[:round(tme_shift * patients)]] = True
    tme_src = np.where(is_conflict, other, diag)
    z_m = tme_c[tme_src] + rng.normal(0.0, TME_NOISE, (patients, 4))
    scale = MEDIAN_DAYS[diag] / math.log(2) ** (1 / WEIBULL_SHAPE)
    scale = scale * np.exp(-(z_m @ HAZARD_TME) / WEIBULL_SHAPE)
    event_time = scale * rng.exponential(1.0, patients) ** (1 / WEIBULL_SHAPE)
    censor_time = rng.exponential(1.0, patients) / _censoring_rate(event_time, CENSORING)
    event = (event_time <= censor_time).astype(np.int64)
    days = np.maximum(np.round(np.minimum(event_time, censor_time), 1), 1.0)
    # what the genes see: the latent itself, or (gene_noise > 0) a per-patient noisy copy
    view_t, view_m = z_t, z_m
    if any(world.gene_noise):  # (the null world draws nothing here: its files stay as they were)
        view_t = z_t + rng.normal(0.0, world.gene_noise[0], z_t.shape)
        view_m = z_m + rng.normal(0.0, world.gene_noise[1], z_m.shape)
    if world.low_purity > 0:  # bulk RNA of a low-purity sample: the tumour programme drowns
        low = rng.random(patients) < world.low_purity
        purity = np.where(low, rng.uniform(0.0, 0.15, patients), 1.0)[:, None]
        view_t = purity * view_t + (1 - purity) * rng.normal(0.0, 1.5, view_t.shape)
    spread_t, spread_m = world.gene_spread
    expr = np.concatenate([_genes(rng, view_t, n_tumour, spread_t),
                           _genes(rng, view_m, n_tme, spread_m),
                           _genes(rng, rng.normal(0, 1, (patients, 2)), N_BACKGROUND)], axis=1)
    n_slides = 1 + (rng.random(patients) < TWO_SLIDES)
    return dict(diag=diag, grade=grade, z_t=z_t, z_m=z_m, tme_src=tme_src,
                conflict=is_conflict, days=days, event=event, expr=expr, n_slides=n_slides)


def _covariates(seed_seq: np.random.SeedSequence, diag: np.ndarray) -> dict[str, np.ndarray]:
    """age, is_female, idh_mutant per patient, from their own stream (tables stay unchanged)."""
    rng = np.random.default_rng(seed_seq)
    age = np.clip(np.round(rng.normal(AGE_MEAN[diag], AGE_SD)), *AGE_RANGE).astype(np.int64)
    is_female = (rng.random(len(diag)) < FEMALE).astype(np.int64)
    return dict(age=age, is_female=is_female, idh_mutant=(diag != 0).astype(np.int64))


def _planted_class(seed_seq: np.random.SeedSequence, diag: np.ndarray) -> np.ndarray:
    """Per patient, a diagnosis other than its own (uniform over the three others), from its own
    stream: whose tumour signature the TME patches carry under ``conflict``."""
    rng = np.random.default_rng(seed_seq)
    return (diag + rng.integers(1, 4, len(diag))) % 4


def _morphology(rng: np.random.Generator, diag: np.ndarray,
                morph: Morphology) -> dict[str, np.ndarray]:
    """Per patient: whether grade-4 morphology shows, and the necrotic / MVP share of its tumour
    patches (0 where absent)."""
    n = len(diag)
    present = rng.random(n) < np.asarray(morph.present)[diag]
    kind = rng.integers(0, 3, n)  # 0 necrosis, 1 MVP, 2 both
    necrosis = np.where(present & (kind != 1), rng.uniform(*morph.necrosis, n), 0.0)
    mvp = np.where(present & (kind != 0), rng.uniform(*morph.mvp, n), 0.0)
    return dict(present=present, necrosis=necrosis, mvp=mvp)


def _bag_sizes(rng: np.random.Generator, patients: int, patches: tuple[int, int],
               n_slides: np.ndarray) -> np.ndarray:
    """Patches per patient, uniform in the (validated) [min, max] range."""
    lo, hi = patches
    return np.maximum(rng.integers(lo, hi + 1, patients), n_slides)


def _slide(rng: np.random.Generator, n: int, z_m: np.ndarray, necrosis: float | None = None,
           mvp: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Coords (x, y) in scan order and patch types for one slide of n patches. ``necrosis``:
    the necrotic share of the tumour patches (None: it follows the TME necrosis latent);
    ``mvp``: the share of the tumour rim with microvascular proliferation."""
    side = 2 * math.ceil(math.sqrt(n)) + 3
    gy, gx = np.divmod(np.arange(side * side), side)
    aniso = rng.uniform(0.6, 1.6)
    dist = (np.hypot((gx - side / 2) * aniso, (gy - side / 2) / aniso)
            + rng.random(side * side) * 1.5)
    cells = np.sort(np.argpartition(dist, n - 1)[:n])  # contiguous tissue blob, scan order
    x, y = gx[cells], gy[cells]
    centre = rng.integers(n)
    d = np.hypot(x - x[centre], y - y[centre]) + rng.random(n)
    rank = np.argsort(np.argsort(d))
    n_tum = max(1, round(rng.uniform(0.25, 0.6) * n))
    necrosis_frac = (0.4 / (1.0 + np.exp(-(1.5 * z_m[2] - 1.0))) if necrosis is None
                     else necrosis)
    # non-tumour tissue: immune (favoured near the tumour border) / stroma / normal brain
    radius = np.sort(d)[n_tum - 1]
    near = np.exp(-np.maximum(d - radius, 0.0) / 2.0)
    logits = np.stack([z_m[0] - 1.0 + 1.5 * near, z_m[1] - 0.5 + 0.5 * near, np.zeros(n)], 1)
    gumbel = -np.log(-np.log(rng.random((n, 3))))
    types = 2 + np.argmax(logits + gumbel, axis=1)
    types[rank < n_tum] = 0
    if mvp > 0:  # the rim of the tumour cluster
        types[(rank < n_tum) & (rank >= n_tum - round(mvp * n_tum))] = MVP_TYPE
    types[rank < round(necrosis_frac * n_tum)] = 1  # its core
    origin = rng.integers(0, 40, 2) * PATCH_PX
    coords = np.stack([x, y], 1).astype(np.int64) * PATCH_PX + origin
    return coords, types


def _truth(world: World, diag: np.ndarray, morph: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """The planted truth of the scenario (cohort.json ``truth``): what is planted, which
    comparisons it decides and in which direction; for grade-4 morphology, how often it shows."""
    truth: dict[str, Any] = {"scenario": world.name, **world.truth,
                             "gene_noise": list(world.gene_noise),
                             "gene_spread": [list(s) for s in world.gene_spread]}
    if morph is not None:
        truth["morphology"] = {
            "present_by_diagnosis": [round(float(morph["present"][diag == c].mean()), 3)
                                     if (diag == c).any() else None for c in range(4)],
            "necrosis_cases": int((morph["necrosis"] > 0).sum()),
            "mvp_cases": int((morph["mvp"] > 0).sum()),
            "rule": "grade-4 morphology = necrosis (tumour core) or MVP (tumour rim) or both; "
                    f"probability by diagnosis {list(world.morphology.present)}"}
    return truth


def _write_table(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path,
                       compression="snappy", write_statistics=False)
    else:
        df.to_csv(path, index=False, lineterminator="\n")


def _clear(out: Path, overwrite: bool) -> None:
    ours = [p for p in ("clinical.parquet", "clinical.csv", "expression.parquet",
                        "expression.csv", "gene_sets.csv", "cohort.json", "features")
            if (out / p).exists()]
    if ours and not overwrite:
        raise FileExistsError(f"{out} already holds a cohort ({', '.join(ours)}); choose another "
                              f"--out or pass --overwrite")
    for name in ours:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


def generate(out: str | Path, params: SyntheticConfig | None = None, *, fmt: str = "parquet",
             overwrite: bool = False, quiet: bool = False, shown_as: str | Path | None = None,
             **changes: Any) -> Path:
    """Write a synthetic cohort to ``out`` and return its path.

    ``params`` defaults to ``SyntheticConfig()``; keyword ``changes`` (patients=..., seed=...)
    are applied on top. ``patches``: (min, max) patches per patient, uniform; an int N means mean
    N, i.e. (ceil(N/2), 3N/2). A patient with two slides splits its patches between them.
    ``fmt``: "parquet" or "csv" for the clinical and expression tables. ``shown_as``: the folder
    named in the printed summary (where the cohort ends up, when ``out`` is a staging folder).
    """
    params = replace(params or SyntheticConfig(), **changes)
    patients, patches, dim, seed = params.patients, params.patches, params.dim, params.seed
    n_tumour, n_tme = params.n_tumour, params.n_tme
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be parquet or csv, got {fmt!r}")
    start = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out, overwrite)
    (out / "features").mkdir()

    # child i of spawn(4) equals child i of spawn(2) and spawn(3): the table, patch and covariate
    # streams are unchanged by the streams added after them
    # child i of spawn(5) equals child i of spawn(2), spawn(3) and spawn(4): the table, patch,
    # covariate and conflict streams are unchanged by the streams added after them; the fifth
    # (grade-4 morphology) is drawn only by worlds that plant it
    world = WORLDS[params.scenario]
    table_seq, patch_seq, covariate_seq, conflict_seq, morph_seq = \
        np.random.SeedSequence(seed).spawn(5)
    t = _tables(table_seq, patients, params.tme_shift, n_tumour, n_tme, world)
    covariates = _covariates(covariate_seq, t["diag"])
    planted = _planted_class(conflict_seq, t["diag"])
    rng = np.random.default_rng(patch_seq)
    sizes = _bag_sizes(rng, patients, patches, t["n_slides"])
    prototypes = rng.normal(0.0, 1.0, (len(PATCH_TYPES), dim)).astype(np.float32)
    m_tumour = rng.normal(0.0, 0.1, (4, dim))
    m_tme = rng.normal(0.0, 0.1, (4, dim))
    morph = None
    if world.morphology is not None:
        morph_rng = np.random.default_rng(morph_seq)
        morph = _morphology(morph_rng, t["diag"], world.morphology)
        # an oligodendroglioma with necrosis or MVP is grade 3 (not 2)
        t["grade"] = np.where((t["diag"] == 3) & morph["present"], 3, t["grade"])
        mvp_prototype = morph_rng.normal(0.0, 1.0, (1, dim)).astype(np.float32)
        prototypes = np.concatenate([prototypes, mvp_prototype])

    case_ids = [f"SYN-{i + 1:04d}" for i in range(patients)]
    rows, n_files, n_bytes = [], 0, 0
    step = max(1, patients // 10)
    # H&E shows the molecular state only in part: patches see a noisy copy of each latent
    seen_t = t["z_t"] + rng.normal(0.0, world.histology_noise[0], t["z_t"].shape)
    seen_m = t["z_m"] + rng.normal(0.0, world.histology_noise[1], t["z_m"].shape)
    # histology conflict: TME patches carry another diagnosis' tumour signature (see the top)
    planted_sig = (params.conflict * CONFLICT_STRENGTH * world.tumour_centroids[planted]
                   ) @ m_tumour
    for i, case in enumerate(case_ids):
        shift_t = (seen_t[i] @ m_tumour).astype(np.float32)
        shift_m = (seen_m[i] @ m_tme).astype(np.float32)
        if params.conflict > 0:  # at 0 the features stay bit for bit those without the knob
            shift_m = shift_m + planted_sig[i].astype(np.float32)
        k = int(t["n_slides"][i])
        parts = np.diff(np.linspace(0, sizes[i], k + 1).round().astype(int))
        for s, n in enumerate(parts):
            slide = f"{case}-{s + 1:02d}"
            shares = {} if morph is None else {"necrosis": float(morph["necrosis"][i]),
                                               "mvp": float(morph["mvp"][i])}
            coords, types = _slide(rng, int(n), t["z_m"][i], **shares)
            feats = prototypes[types] + rng.standard_normal((int(n), dim), dtype=np.float32)
            stain = rng.normal(0.0, STAIN_SHIFT, dim).astype(np.float32)  # per-slide batch effect
            feats += np.where((types == 0)[:, None], shift_t, shift_m) + stain
            path = out / "features" / f"{slide}.h5"
            with h5py.File(path, "w", libver="earliest") as f:
                f.create_dataset("features", data=feats, track_times=False)
                f.create_dataset("coords", data=coords, track_times=False)
            n_files += 1
            n_bytes += path.stat().st_size
            rows.append((case, slide))
        if not quiet and ((i + 1) % step == 0 or i + 1 == patients):
            say(f"  {i + 1}/{patients} patients ({time.perf_counter() - start:.1f} s)")

    by_case = {c: j for j, c in enumerate(case_ids)}
    idx = np.array([by_case[c] for c, _ in rows])
    clinical = pd.DataFrame({
        "case_id": [c for c, _ in rows], "slide_id": [s for _, s in rows],
        "diagnosis": t["diag"][idx].astype(np.int64), "grade": t["grade"][idx].astype(np.int64),
        "survival_days": t["days"][idx], "event": t["event"][idx],
        "diagnosis_name": [DIAGNOSES[d] for d in t["diag"][idx]],
        "synthetic_conflict": t["conflict"][idx].astype(np.int64),
        "tme_source_diagnosis": t["tme_src"][idx].astype(np.int64),
        **{name: values[idx] for name, values in covariates.items()}})
    if morph is not None:  # the planted morphology, for checks (not a model input)
        clinical["synthetic_necrosis"] = (morph["necrosis"][idx] > 0).astype(np.int64)
        clinical["synthetic_mvp"] = (morph["mvp"][idx] > 0).astype(np.int64)
    genes = ([f"TUM_{j + 1:03d}" for j in range(n_tumour)] + [f"TME_{j + 1:03d}" for j in
             range(n_tme)] + [f"BG_{j + 1:03d}" for j in range(N_BACKGROUND)])
    expression = pd.DataFrame(t["expr"], columns=genes)
    expression = expression[sorted(genes)]  # loaders must pick and order the set genes
    expression.insert(0, "case_id", case_ids)
    _write_table(clinical, out / f"clinical.{fmt}")
    _write_table(expression, out / f"expression.{fmt}")
    gene_sets = pd.DataFrame({"gene": genes[:n_tumour + n_tme],
                              "subspace": ["tumour"] * n_tumour + ["tme"] * n_tme})
    _write_table(gene_sets, out / "gene_sets.csv")
    meta = {"generator": "ksmodel.synthetic", "format_version": 1, **to_dict(params),
            "key": params.key(), "n_background": N_BACKGROUND, "diagnoses": list(DIAGNOSES),
            "prevalence": PREVALENCE.tolist(), "censoring_target": CENSORING,
            "grade_rule": "diagnosis 0,1 -> 4; 2,3 -> 3 if proliferation latent high else 2"
                          + ("; 3 -> 3 with grade-4 morphology" if morph is not None else ""),
            "patch_types": list(PATCH_TYPES) + (["mvp"] if morph is not None else []),
            "patch_px": PATCH_PX, "tme_shift_cases": int(t["conflict"].sum()),
            "truth": _truth(world, t["diag"], morph)}
    (out / "cohort.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    seconds = time.perf_counter() - start
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    counts = np.bincount(t["diag"], minlength=4)
    header = f"synthetic cohort ({params.scenario}) ->"
    shown = str(shown_as or out)  # a long path on a line of its own (lines <= 119 columns)
    say(f"{header} {shown}" if len(header) + 1 + len(shown) <= 119 else f"{header}\n  {shown}")
    lines = ["  diagnosis:"]  # at most 119 columns, a class never split over two lines
    for d, c in enumerate(counts):
        part = f" {c} x {DIAGNOSES[d]};"
        if len(lines[-1]) + len(part) > 119:
            lines.append("   ")
        lines[-1] += part
    say("\n".join(lines).rstrip(";"))
    say(f"  grade 2/3/4: {', '.join(str(int((t['grade'] == g).sum())) for g in (2, 3, 4))}; "
        f"censored {1 - t['event'].mean():.1%}; TME-shift patients {int(t['conflict'].sum())}; "
        f"histology conflict {params.conflict:g}")
    say(f"  {n_files} feature files ({n_bytes / 1e6:.1f} MB), {sizes.sum()} patches x D={dim}; "
        f"total {total / 1e6:.1f} MB in {seconds:.1f} s")
    return out


def ensure_synthetic(out: str | Path, params: SyntheticConfig | None = None,
                     quiet: bool = False) -> Path:
    """The synthetic cohort of ``params`` in ``out``, generated on first use.

    The cohort is written into a private folder beside ``out`` and renamed into place, so a
    reader never sees a half-written cohort and two processes asking at once both end up
    reading one complete copy (the loser of the rename discards its own).
    """
    out, params = Path(out), params or SyntheticConfig()
    if not (out / "cohort.json").is_file():
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        generate(tmp, params, quiet=quiet, shown_as=out)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, out)
        except OSError:  # another process renamed its copy first (or out is not empty)
            shutil.rmtree(tmp, ignore_errors=True)
    meta_path = out / "cohort.json"
    if not meta_path.is_file():
        raise FileExistsError(f"{out} exists but holds no synthetic cohort (no cohort.json); "
                              "remove it or choose another folder")
    meta = json.loads(meta_path.read_text())
    differ = {k: (meta.get(k), v) for k, v in to_dict(params).items() if meta.get(k) != v}
    if differ:
        raise FileExistsError(
            f"{out} holds a synthetic cohort made with other parameters "
            f"({', '.join(f'{k}: {a} != {b}' for k, (a, b) in differ.items())}); "
            "remove it or choose another folder")
    return out


def main(argv: list[str] | None = None) -> int:
    d = SyntheticConfig()
    parser = argparse.ArgumentParser(
        prog="python -m ksmodel.synthetic",
        description="Write a synthetic glioma cohort (clinical, expression, gene sets, "
                    "features/<slide_id>.h5) with planted tumour/TME structure. The defaults are "
                    "the project's synthetic default: the cohort `cohort: synthetic` in a study "
                    "file and `python -m ksmodel.train` use.",
        epilog="The tumour latent drives TUM_* genes, diagnosis, grade and tumour patches; the "
               "TME latent drives TME_* genes, immune/stroma/necrosis patches and part of the "
               "hazard. Same arguments -> byte-identical files.")
    parser.add_argument("--out", required=True, type=Path, help="output cohort directory")
    parser.add_argument("--scenario", choices=SCENARIOS, default=d.scenario,
                        help="which world to plant (README, 'Synthetic scenarios'): "
                             "histology_needed - part of the diagnosis only the slide shows "
                             "(grade-4 necrosis / microvascular proliferation); null - histology "
                             "adds nothing beyond the genes (arms differing only by seed: no "
                             "difference); imbalance - a strong, easy tumour-gene signal that "
                             f"starves the TME stream (default {d.scenario}); the planted truth "
                             "is written to cohort.json")
    parser.add_argument("--patients", type=int, default=d.patients,
                        help=f"number of patients ({d.patients})")
    parser.add_argument("--patches", type=int, default=None,
                        help="mean patches per patient: sizes uniform in [N/2, 3N/2] "
                             f"(default: uniform {d.patches[0]}..{d.patches[1]})")
    parser.add_argument("--dim", type=int, default=d.dim,
                        help=f"patch feature dimension D ({d.dim})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"random seed ({d.seed})")
    parser.add_argument("--conflict", type=float, default=d.conflict,
                        help="histology conflict in [0, 1]: TME-compartment patches also carry, "
                             "along the tumour feature directions, the tumour signature of a "
                             "different diagnosis with this strength, so the two subspaces "
                             "disagree on what they both read (gradients reaching a shared patch "
                             f"projection conflict more as it rises; default {d.conflict})")
    parser.add_argument("--tme-shift", type=float, default=d.tme_shift,
                        help="fraction in [0, 1] of patients whose TME genes/patches/hazard are "
                             "drawn as if from a different diagnosis (what --conflict meant "
                             f"before; default {d.tme_shift}; 0 = none)")
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet",
                        help="table format for clinical and expression (parquet)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a cohort already in --out")
    args = parser.parse_args(argv)
    changes = {"scenario": args.scenario, "patients": args.patients, "dim": args.dim,
               "seed": args.seed, "conflict": args.conflict, "tme_shift": args.tme_shift}
    if args.patches is not None:
        changes["patches"] = args.patches
    try:
        generate(args.out, fmt=args.format, overwrite=args.overwrite, **changes)
    except (ConfigError, ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
