"""Rebuild every table and figure data file of a config from the committed records into a scratch
directory and compare them byte for byte with the committed ones (a refactor must not move them).

    python tools/rebuild_check.py [config/config.yaml] [--keep DIR]

Prints one line per file (same / DIFFERS / missing) and exits 1 if any differs.
"""
import filecmp
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv):
    from harness import config as hc
    from harness import reports as report

    import os

    os.chdir(ROOT)  # record paths as the DAG passes them: relative to the repository root
    cfg_path = next((a for a in argv if not a.startswith("--")), "config/config.yaml")
    config = hc.load_config(ROOT / cfg_path)
    res, figs = pathlib.Path(config["paths"]["results"]), pathlib.Path(config["paths"]["figures"])
    out = pathlib.Path(tempfile.mkdtemp(prefix="rebuild-"))
    bad = 0
    for target in report_targets():
        records = report.files(config, target) or [str(res / "runs" / r / "record.json")
                                                    for r in expand_runs(config, target)]
        params = {k: v for k, v in config.items() if k != "data_root"}
        if target.startswith("table"):
            report.make_table(target, params, records, out / target)
            files = [(res / "tables" / f"{target}.{e}", out / f"{target}.{e}") for e in ("csv", "md", "tex")]
        else:
            report.make_figure(target, params, records, out / target)
            files = [(figs / f"{target}.data.csv", out / f"{target}.data.csv")]
        for committed, rebuilt in files:
            if not committed.is_file():
                print(f"missing  {committed}")
                continue
            same = rebuilt.is_file() and filecmp.cmp(committed, rebuilt, shallow=False)
            bad += not same
            print(f"{'same    ' if same else 'DIFFERS '} {committed}")
    print(f"rebuilt into {out}; {bad} file(s) differ")
    return 1 if bad else 0


def report_targets():
    from harness.reports import TARGETS
    return list(TARGETS)


def expand_runs(config, target):
    from harness.reports import expand_runs as expand
    return expand(config, target)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
