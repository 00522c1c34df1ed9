"""Adopt committed run records after preparing the model and data anew (a fresh clone, a new machine).

A clone has the records (results/) but not the prepared model and data (resources/, never
committed). Once `snakemake prepare_model prepare_data`-made files are newer than every record,
Snakemake's mtime rule would retrain every committed run. This tool checks each committed record
against what its train job would run now, and marks as up to date (touches, records first, then
the files made from them) only the runs that would train exactly the same:

* status ok, and
* the record's fingerprint equals the one computed now from the current config's resolved run
  (harness.config.resolve_run), the prepared model's and data's checksums and the training code's
  version (harness.records.fingerprint_inputs: what the train job hashes at start-up).

Any other record is left as it is (Snakemake retrains it, or keeps a failed one, as it would have)
and listed with the keys that differ. Nothing is written but modification times.

    python tools/adopt_records.py [--configfile config/gemma.yaml] [--dry-run]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import config as hc  # noqa: E402
from harness.records import (data_checksums, fingerprint, fingerprint_diff, fingerprint_inputs,  # noqa: E402
                             model_checksums, read_json)
from harness.reports import load_config  # noqa: E402
from harness.train import TRAIN_CODE_VERSION  # noqa: E402



def _files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else []


def check_record(config: dict, record_path: pathlib.Path, cache: dict) -> tuple[bool, str]:
    """(adoptable, why not) for one record.json."""
    record = read_json(record_path, "run record")
    info = record.get("run_info") or {}
    if info.get("status") != "ok":
        return False, f"status {info.get('status')!r}"
    run_id = info.get("run_id")
    try:
        run = hc.resolve_run(config, run_id)
    except (hc.ConfigError, KeyError, ValueError) as err:
        return False, f"not a run of this config ({err})"
    model, data = hc.repo_path(run.model.path), hc.repo_path(run.dataset.path)
    if not (model / "prepared.json").is_file() or not data.is_file():
        return False, f"prepare the model and data first ({model}, {data})"
    key = (str(model), str(data))
    if key not in cache:
        cache[key] = {"model_checksums": model_checksums(model), "data_checksums": data_checksums(data)}
    now = fingerprint_inputs(run.to_json(), cache[key], TRAIN_CODE_VERSION)
    if fingerprint(now) != info.get("fingerprint"):
        # what the record trained from: its own run config and checksums (its fingerprint's inputs
        # unless the training code's version changed since)
        old = fingerprint_inputs(info.get("config") or {}, record.get("meta_info") or {}, TRAIN_CODE_VERSION)
        diff = fingerprint_diff(old, now) if fingerprint(old) == info.get("fingerprint") else \
            [f"the training code's version (now {TRAIN_CODE_VERSION})"]
        return False, "would train differently now: " + ", ".join(diff[:6])
    return True, ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", default=str(REPO / "config/config.yaml"))
    ap.add_argument("--dry-run", action="store_true", help="check and list, touch nothing")
    args = ap.parse_args(argv)
    config = load_config(args.configfile)
    runs_dir = hc.repo_path(config["paths"]["results"]) / "runs"
    records = sorted(runs_dir.rglob("record.json"))
    adopt, refused, cache = [], [], {}
    for path in records:
        ok, why = check_record(config, path, cache)
        (adopt if ok else refused).append((path, why))
    # mtime order = DAG order: 0 the records (and the train job's benchmark file, an output Snakemake
    # dates too); 1 what the evaluate_val jobs made of them, and each model's forgetting baseline
    # whose weights are the prepared model's; 2 the learning-rate choice made from the validation
    # scores; 3 what the evaluate jobs made (eval/, which also records the choice)
    bench = hc.repo_path(config["paths"]["benchmarks"])
    rules = [d for d in bench.iterdir() if d.is_dir()] if bench.is_dir() else []
    tiers: list[list[pathlib.Path]] = [[], [], [], []]
    for path, _ in adopt:
        run_id = str(path.parent.relative_to(runs_dir))
        tiers[0] += [path, bench / "train" / f"{run_id}.tsv"]
        tiers[1] += _files(path.parent / "val") + [f for d in rules if d.name == "evaluate_val"
                                                    for f in _files(d / run_id)]
        tiers[3] += _files(path.parent / "eval") + [f for d in rules if d.name == "evaluate"
                                                     for f in [d / f"{run_id}.tsv", *_files(d / run_id)]]
    for base in sorted((hc.repo_path(config["paths"]["results"]) / "forgetting").rglob("*.json")):
        model = config["models"].get(base.parent.name)
        marker = hc.repo_path(hc.model_dir(config, base.parent.name)) if model is not None else None
        if marker is not None and (marker / "prepared.json").is_file() and \
                read_json(base, "forgetting baseline").get("model_files_sha256") == \
                model_checksums(marker).get("files_sha256"):
            tiers[1].append(base)
        else:
            print(f"left as it is: {base}: not measured on the prepared model's weights")
    if config.get("experiments", {}).get("lr_sweep"):
        from harness import lr_sweep

        tiers[2].append(hc.repo_path(lr_sweep.choice_path(config)))
    if not args.dry_run:
        t0 = time.time()
        for i, files in enumerate(tiers):
            for f in files:
                if f.is_file():
                    os.utime(f, (t0 + i, t0 + i))
    for path, why in refused:
        print(f"left as it is: {path.parent.relative_to(runs_dir)}: {why}")
    print(f"{'would adopt' if args.dry_run else 'adopted'} {len(adopt)} of {len(records)} records under {runs_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
