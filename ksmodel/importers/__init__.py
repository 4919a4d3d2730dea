"""Importers: turn published cohort tables into the KS-Study cohort layout (docs/cohort-format.md).

Each importer is a module with a CLI (`python -m ksmodel.importers.<name>`) that writes a
cohort folder `ksmodel.cohort.load_cohort` reads, plus a `cohort.json` recording where the data
came from and every approximation made on the way, so a result can be traced back to its source.

- `mcat`: the TCGA tables and 5-fold splits shared by MCAT, PORPOISE, MOTCat and CMTA.
"""
