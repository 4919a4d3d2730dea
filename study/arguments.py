"""Mistakes on `study.run`'s command line, found and explained before anything heavy is imported.

A mistyped study file, ``--set`` key or parameter name is answered at once (no torch, Ray,
MLflow or scikit-learn import comes before it), with the closest valid names ("did you mean")
and the list to choose from. An error is blamed on where the mistake is: a ``--set`` value the
study file would not have had is a command-line mistake, not the file's. ``--once`` turns any
study into one trial of its fixed parameters (searched ones at their defaults), evaluated on
every fold with no early stopping.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from study.space import StudyConfig

SEARCH_SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
"""The example study files (a mistyped file name is also looked up here)."""
ONCE_SUFFIX = "-once"
"""``--once`` runs under ``<name>-once`` (its own folder and MLflow experiment)."""


class ArgumentMistake(ValueError):
    """A command-line mistake; the message is the whole explanation (one line)."""


def print_error(exc: BaseException | str) -> None:
    """One ``error:`` line (a YAML parser's multi-line message included), no traceback."""
    print("error: " + " ".join(str(exc).split()), file=sys.stderr)


def close(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The valid names nearest to ``word``: those it abbreviates (``grace`` ->
    ``grace_period``), else difflib's closest (similarity >= 0.6), keeping only names about as
    close as the closest one (within 0.1), at most ``n``."""
    names = sorted(set(choices))
    starts = [c for c in names if len(word) >= 3 and c.startswith(word)]
    if starts:
        return starts[:n]
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in names),
                    reverse=True)
    best = scored[0][0] if scored else 0.0
    return [c for r, c in scored if r >= 0.6 and r >= best - 0.1][:n]


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    near = close(word, choices)
    return f"did you mean {' or '.join(near)}? " if near else ""



# --- the study file -----------------------------------------------------------------------

def check_space(path: Path) -> None:
    """The study file exists; otherwise the nearest file names (beside it and in
    search_spaces/) and the example files."""
    if path.is_file():
        return
    folders = [f for f in (path.parent, SEARCH_SPACES) if f.is_dir()]
    files = {p.name: p for f in reversed(folders) for p in sorted(f.glob("*.y*ml"))}
    near = close(path.name, files)
    suggestion = ""
    if near:
        shown = [str(files[n].relative_to(Path.cwd())) if files[n].is_relative_to(Path.cwd())
                 else str(files[n]) for n in near]
        suggestion = f"did you mean {' or '.join(shown)}? "
    examples = ", ".join(p.stem for p in sorted(SEARCH_SPACES.glob("*.yaml")))
    raise ArgumentMistake(f"--space {path}: no such study file; {suggestion}"
                          f"the example studies in search_spaces/: {examples}")


# --- --set keys ---------------------------------------------------------------------------

def _registries() -> tuple[set[str], set[str], dict[str, list[str]]]:
    """(study keys, parameter names, {section: its keys}) as the study-file parser knows them."""
    from study.space import _NESTED, _TOP_KEYS, TRIAL_KEYS

    params = set(TRIAL_KEYS)
    sections = {name: [f.name for f in dataclasses.fields(spec)]
                for name, spec in _NESTED.items()}
    sections.update({"resources": ["cpu", "gpu"], "fixed": sorted(params),
                     "search": sorted(params)})
    return set(_TOP_KEYS), params, sections


def check_set_keys(overrides: Mapping[str, Any]) -> None:
    """Every ``--set`` key is a study key, a dotted study key or a parameter name; otherwise
    the closest names and the list. Sections the parser takes as they are (``variants.<name>``)
    are left to it."""
    top, params, sections = _registries()
    for key in overrides:
        head, dot, tail = key.partition(".")
        if not dot:
            if key in top or key in params:
                continue
            raise ArgumentMistake(
                f"--set {key}: unknown key; {_did_you_mean(key, top | params)}"
                f"parameter names: {', '.join(sorted(params))}; study keys: "
                f"{', '.join(sorted(top))} (python -m study.run --help lists every key)")
        if head not in top:
            dotted = [f"{s}.{k}" for s, keys in sections.items() for k in keys]
            raise ArgumentMistake(
                f"--set {key}: unknown key; {_did_you_mean(key, dotted + sorted(top))}"
                f"dotted keys start with one of {', '.join(sorted(sections))}")
        if head in sections and tail not in sections[head]:
            what = "parameter" if head in ("fixed", "search") else f"{head} key"
            near = [f"{head}.{k}" for k in close(tail, sections[head])]
            hint = f"did you mean {' or '.join(near)}? " if near else ""
            raise ArgumentMistake(f"--set {key}: unknown {what} '{tail}'; {hint}"
                                  f"{head} keys: {', '.join(sections[head])}")


# --- errors blamed on the command line ------------------------------------------------------

def _effective_keys(key: str, params: set[str]) -> set[str]:
    """The names an error about ``--set key`` may use for it."""
    names = {key, key.rpartition(".")[2]}
    if key in params:
        names |= {f"fixed.{key}", f"search.{key}"}
    return names


def attribute(message: str, source: str, given: Mapping[str, str]) -> str:
    """Re-word a study-file error (``<file>: key 'k': ...``) caused by the command line:
    ``given`` maps each override key to how it was typed (``--set lr=-1``, ``--epochs 0``).
    An error naming an overridden key is the command line's; any other one stays the file's,
    noting the overrides it was read with."""
    if not given:
        return message
    _, params, _ = _registries()
    named = set(re.findall(r"key '([^']+)'", message))
    for key, typed in given.items():
        names = _effective_keys(key, params)
        if any(n in names or n.startswith(tuple(f"{k}." for k in names)) for n in named):
            rest = message.removeprefix(f"{source}: ").removeprefix("--set: ")
            return f"{typed}: {rest} (a command-line value; {source} itself is not changed)"
    return f"{message} (reading {source} with {', '.join(given.values())})"


# --- --once ---------------------------------------------------------------------------------

def default_value(name: str) -> Any:
    """A parameter's default: the model's, the training's or the coordination rule's."""
    from ksmodel.config import ModelConfig, TrainConfig
    from ksmodel.coordination.registry import hyper_params

    for cls in (ModelConfig, TrainConfig):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name in fields and fields[name].default is not dataclasses.MISSING:
            value = fields[name].default
            return list(value) if isinstance(value, tuple) else value
    return hyper_params()[name].default


def once(cfg: StudyConfig, name: str | None = None) -> tuple[StudyConfig, str]:
    """One trial of the study's fixed parameters, the searched ones at their defaults (a
    variants study: the reference variant), every fold, no early stopping (sampler grid,
    scheduler none), under ``<name>-once`` unless ``name`` is given; and a line saying so."""
    from study.space import parse_study

    raw = cfg.to_yaml_dict()
    fixed = dict(raw.get("fixed") or {})
    defaults = {p: default_value(p) for p in cfg.searched if p not in ("seed",)}
    if cfg.variants:
        fixed.update(cfg.variants[cfg.reference])
    raw.update(fixed=fixed, search={}, sampler="grid", scheduler={"type": "none"},
               name=name or f"{cfg.name}{ONCE_SUFFIX}")
    for key in ("variants", "reference", "num_samples"):
        raw.pop(key, None)
    if "seeds" not in raw and "seed" not in fixed:  # the seed was searched: one seed
        raw["seeds"] = [0]
    source = f"{cfg.source} (--once)"
    one = parse_study(raw, source, Path(cfg.source).resolve().parent)
    shown = " ".join(f"{k}={v}" for k, v in defaults.items())
    what = (f"the reference variant {cfg.reference}" if cfg.variants
            else "the study's fixed parameters")
    line = (f"--once: one trial of {what}"
            + (f", searched parameters at their defaults ({shown})" if shown else "")
            + f"; {len(one.seeds) or 1} seed(s) x every fold, {one.epochs} epochs, no early "
              f"stopping; study {one.name}")
    return dataclasses.replace(one, source=cfg.source), line


__all__ = ["ArgumentMistake", "check_space", "check_set_keys", "attribute", "once",
           "default_value", "close", "SEARCH_SPACES", "ONCE_SUFFIX"]
