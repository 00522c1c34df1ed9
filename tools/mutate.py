#!/usr/bin/env python3
"""Mutation testing for this repository: plant one bug at a time in a COPY, run the mapped tests.

A mutant is killed when its mapped tests fail; it survives when they pass. The working tree is
never touched: the repository is copied into a temporary directory (the current working tree:
tracked plus untracked, non-ignored files; or, with --rev, `git archive <rev>`), with a
`shared` link next to it so that `../shared/data` (the offline mirror) resolves as it does for
the real checkout. Each mutant is planted in the copy, its mapped test files run there with
`python3 -m pytest` (cwd = the copy, PYTHONPATH = the copy; the tool checks that `import
harness` resolves to the copy and not to the installed editable package), and the file is
restored before the next mutant.

Mutants come from tools/mutants.yaml:

* curated mutants: `{id, file, original, replacement, description, tests, tags}`; `original`
  must occur exactly once in `file`, else the mutant is reported as "stale" (the code moved:
  re-target it), never as killed;
* generated operator mutants (`generate:` entries `{file, functions, tests, kinds, limit}`):
  comparison flips, +/- and * / swaps, integer constants +1, `and`/`or` swaps and dropped
  statements, found with `ast` in the named functions.

Before the mutants, the mapped test files run once on the unmutated copy; a mutant whose tests
already fail there is reported as "error" (it cannot be judged). Results: killed (tests
failed or could not be collected), survived, timeout (counted as killed), stale, error.
The kill rate of a module is (killed + timeout) / (killed + timeout + survived).

    python3 tools/mutate.py --list                      # the mutants and their tests
    python3 tools/mutate.py                             # all mutants, working tree copy
    python3 tools/mutate.py --module smt --jobs 2       # one module, two copies in parallel
    python3 tools/mutate.py --only train-lr-no-decay,eval-ignores-delta
    python3 tools/mutate.py --tag smoke                 # the fast subset CI runs
    python3 tools/mutate.py --rev HEAD --json out.json  # a committed revision (the "before")
"""
from __future__ import annotations

import argparse
import ast
import atexit
import concurrent.futures as cf
import dataclasses
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_YAML = REPO / "tools" / "mutants.yaml"
# module (for kill rates) of each source file; first matching prefix wins
MODULES = [("smt/", "smt"), ("harness/train.py", "train"), ("harness/train_data.py", "train"),
           ("harness/step.py", "train"), ("harness/checkpoint.py", "train"), ("harness/records.py", "train"),
           ("harness/loss.py", "train"), ("harness/launch.py", "train"), ("harness/evaluate.py", "evaluate"), ("harness/stats.py", "evaluate"),
           ("harness/tasks/", "evaluate"), ("harness/data.py", "data"), ("harness/prompts.py", "data"),
           ("harness/models.py", "data"), ("harness/reports/", "report"), ("harness/profile.py", "report"),
           ("baselines/", "baselines"), ("harness/config/", "config"), ("harness/run_config.py", "config")]


def module_of(path: str) -> str:
    for prefix, name in MODULES:
        if path.startswith(prefix):
            return name
    return path.split("/")[0]


@dataclasses.dataclass
class Mutant:
    id: str
    file: str
    original: str
    replacement: str
    description: str
    tests: list
    tags: list = dataclasses.field(default_factory=list)
    module: str = ""
    generated: bool = False
    # generated mutants: exact character span in the file
    span: tuple | None = None
    deselect: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.module = self.module or module_of(self.file)


# ----------------------------------------------------------------------------- mutant sources

def load_curated(spec: dict, fast: bool = False) -> list[Mutant]:
    """The curated mutants; with fast, a mutant's `fast_tests` (if any) replace its `tests`."""
    out, seen = [], set()
    for i, m in enumerate(spec.get("mutants") or []):
        missing = [k for k in ("id", "file", "original", "replacement", "tests") if k not in m]
        if missing:
            raise SystemExit(f"mutants.yaml: mutant #{i} ({m.get('id', '?')}) lacks {missing}")
        if m["id"] in seen:
            raise SystemExit(f"mutants.yaml: repeated mutant id {m['id']!r}")
        if m["original"] == m["replacement"]:
            raise SystemExit(f"mutants.yaml: mutant {m['id']!r} replaces its snippet by itself")
        seen.add(m["id"])
        tests = m["tests"] if isinstance(m["tests"], list) else [m["tests"]]
        if fast and m.get("fast_tests"):
            tests = list(m["fast_tests"])
        out.append(Mutant(m["id"], m["file"], m["original"], m["replacement"], m.get("description", ""),
                          tests, list(m.get("tags") or []), m.get("module", "")))
    return out


_CMP_FLIP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
             ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv}


def _offsets(text: str) -> list[int]:
    starts, pos = [0], 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        starts.append(pos)
    return starts


def generate(entry: dict, root: pathlib.Path) -> list[Mutant]:
    """Operator mutants of entry['functions'] in entry['file'] (kinds: cmp, binop, const, boolop, drop)."""
    rel, kinds = entry["file"], set(entry.get("kinds") or ["cmp", "binop", "const", "boolop", "drop"])
    path = root / rel
    if not path.is_file():
        return [Mutant(f"gen:{rel}", rel, "<file missing>", "", "file missing", entry["tests"], generated=True)]
    text = path.read_text()
    tree, starts = ast.parse(text), _offsets(text)
    wanted = set(entry["functions"])
    found_funcs = set()

    def span(node):
        return (starts[node.lineno - 1] + node.col_offset, starts[node.end_lineno - 1] + node.end_col_offset)

    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name not in wanted:
            continue
        found_funcs.add(fn.name)
        k = 0
        fstrings = [span(n) for n in ast.walk(fn) if isinstance(n, ast.JoinedStr)]  # no mutants inside f-strings
        for node in ast.walk(fn):
            if hasattr(node, "lineno") and any(a <= span(node)[0] < b for a, b in fstrings):
                continue
            muts = []  # (kind, new source, description)
            if "cmp" in kinds and isinstance(node, ast.Compare) and len(node.ops) == 1 \
                    and type(node.ops[0]) in _CMP_FLIP:
                new = ast.Compare(node.left, [_CMP_FLIP[type(node.ops[0])]()], node.comparators)
                muts.append(("cmp", "(" + ast.unparse(new) + ")", "comparison flipped"))
            if "binop" in kinds and isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP \
                    and not (isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)):
                new = ast.BinOp(node.left, _BIN_SWAP[type(node.op)](), node.right)
                muts.append(("binop", "(" + ast.unparse(new) + ")", "arithmetic operator swapped"))
            if "boolop" in kinds and isinstance(node, ast.BoolOp):
                new = ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values)
                muts.append(("boolop", "(" + ast.unparse(new) + ")", "and/or swapped"))
            if "const" in kinds and isinstance(node, ast.Constant) and type(node.value) in (int, float) \
                    and not isinstance(node.value, bool):
                muts.append(("const", repr(node.value + 1), f"constant {node.value!r} -> {node.value + 1!r}"))
            if "drop" in kinds and isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign)) \
                    and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
                muts.append(("drop", "pass", "statement dropped"))
            for kind, new_src, desc in muts:
                a, b = span(node)
                orig = text[a:b]
                if kind == "drop" and "\n" in orig:
                    continue
                k += 1
                out.append(Mutant(f"gen:{rel}:{fn.name}:{kind}:{node.lineno}:{k}", rel, orig, new_src,
                                  f"{desc} in {fn.name} (line {node.lineno}): {orig[:60]!r} -> {new_src[:60]!r}",
                                  entry["tests"], list(entry.get("tags") or []), entry.get("module", ""),
                                  generated=True, span=(a, b)))
    for name in wanted - found_funcs:
        out.append(Mutant(f"gen:{rel}:{name}", rel, f"<def {name}>", "", "function not found", entry["tests"],
                          generated=True))
    limit = entry.get("limit")
    return out[:limit] if limit else out


# ----------------------------------------------------------------------------- copies

def repo_files(rev: str | None) -> list[str]:
    if rev:
        return []
    res = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                         capture_output=True)
    return [f for f in res.stdout.decode().split("\0") if f]


def make_copy(dest_parent: pathlib.Path, rev: str | None) -> pathlib.Path:
    """A plain copy of the repository at <dest_parent>/main with <dest_parent>/shared -> ../shared."""
    dest = dest_parent / "main"
    dest.mkdir(parents=True)
    if rev:
        tar = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, check=True,
                             capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            tf.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(dest)
    else:
        for rel in repo_files(None):
            src = REPO / rel
            if not src.is_file() or src.is_symlink():
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    shared = (REPO / ".." / "shared").resolve()
    if shared.exists():
        (dest_parent / "shared").symlink_to(shared)
    return dest


def env_for(copy: pathlib.Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env.update(PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def check_imports(copy: pathlib.Path) -> dict:
    """Where harness, smt and baselines resolve from in the copy; raise if not from the copy."""
    code = "import json, harness, smt, baselines; print(json.dumps({m.__name__: m.__file__ for m in (harness, smt, baselines)}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env_for(copy), capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"cannot import the packages in the copy {copy}:\n{res.stderr[-2000:]}")
    where = json.loads(res.stdout.strip().splitlines()[-1])
    for name, file in where.items():
        if not pathlib.Path(file).resolve().is_relative_to(copy.resolve()):
            raise SystemExit(f"`import {name}` in the copy resolves to {file}, not to the copy {copy}: "
                             "the installed package shadows it; mutants would not be tested")
    return where


def run_tests(copy: pathlib.Path, tests: list, timeout: float, deselect=(), stop_first=True
              ) -> tuple[str, int | None, float, str]:
    """Run pytest on tests in the copy; returns (outcome, rc, seconds, output or its tail)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--no-header",
           "-o", "addopts=", *(["-x"] if stop_first else []), *tests]
    for node in deselect:
        cmd += ["--deselect", node]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=copy, env=env_for(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        return "timeout", None, time.time() - start, (out or "")[-1500:]
    rc = proc.returncode
    outcome = {0: "passed", 1: "failed", 2: "failed"}.get(rc, "error")  # 2: collection error / interrupted
    return outcome, rc, time.time() - start, out if not stop_first else out[-1500:]


# ----------------------------------------------------------------------------- running

def plant(text: str, m: Mutant) -> tuple[str | None, str]:
    """The mutated text, or (None, reason) when the mutant is stale."""
    if m.generated:
        a, b = m.span
        if m.span is None or text[a:b] != m.original:
            return None, "generated span no longer matches"
        return text[:a] + m.replacement + text[b:], ""
    # YAML block scalars lose the snippet's leading indentation: try the snippet (and its
    # replacement) re-indented by 0, 4, 8, ... spaces; exactly one occurrence must match.
    hits = []
    for indent in range(0, 25, 4):
        orig, repl = _indent(m.original, indent), _indent(m.replacement, indent)
        n = text.count(orig)
        if n:
            hits.append((indent, n, orig, repl))
    if not hits:
        return None, f"original snippet not found in {m.file}"
    # the least indentation that matches counts every occurrence (deeper ones included)
    indent, n, orig, repl = hits[0]
    if n != 1:
        return None, f"original snippet found {n} times in {m.file}"
    return text.replace(orig, repl), ""


def _compiles(text: str, name: str) -> None:
    """compile() the mutated file (SyntaxError if it does not), without its warnings. Only Python
    files: a Snakemake file (.smk, Snakefile) is not Python; its mutants are checked by running."""
    import warnings

    if not name.endswith(".py"):
        return

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compile(text, name, "exec")


def _indent(snippet: str, n: int) -> str:
    if not n:
        return snippet
    return "\n".join((" " * n + line) if line else line for line in snippet.split("\n"))


class Worker:
    def __init__(self, base: pathlib.Path, rev: str | None, timeout: float, verbose: bool):
        self.copy = make_copy(base, rev)
        self.where = check_imports(self.copy)
        self.timeout, self.verbose = timeout, verbose

    def clean(self, tests: list) -> tuple[str, float, str, list]:
        """Run the tests on the unmutated copy; tests failing there are deselected for the mutants."""
        outcome, rc, secs, out = run_tests(self.copy, tests, self.timeout, stop_first=False)
        failing = []
        if outcome == "failed" and rc == 1:
            failing = sorted({ln.split()[1] for ln in out.splitlines()
                              if ln.startswith(("FAILED ", "ERROR ")) and "::" in ln})
            if failing:
                outcome2, _, secs2, out2 = run_tests(self.copy, tests, self.timeout, failing)
                if outcome2 == "passed":
                    return "passed", secs2, out2[-1500:], failing
        return outcome, secs, out[-1500:], failing

    def run(self, m: Mutant) -> dict:
        res = {"id": m.id, "module": m.module, "file": m.file, "description": m.description, "tests": m.tests}
        path = self.copy / m.file
        if not path.is_file():
            return {**res, "status": "stale", "detail": f"{m.file} does not exist"}
        if m.generated and m.span is None:
            return {**res, "status": "stale", "detail": m.description}
        text = path.read_text()
        mutated, why = plant(text, m)
        if mutated is None:
            return {**res, "status": "stale", "detail": why}
        try:
            _compiles(mutated, m.file)
        except SyntaxError as err:
            return {**res, "status": "error", "detail": f"mutant does not compile: {err}"}
        path.write_text(mutated)
        try:
            outcome, rc, secs, tail = run_tests(self.copy, m.tests, self.timeout, m.deselect)
        finally:
            path.write_text(text)
        status = {"failed": "killed", "passed": "survived", "timeout": "timeout"}.get(outcome, "error")
        if m.deselect:
            res["deselected"] = m.deselect
        return {**res, "status": status, "rc": rc, "seconds": round(secs, 1),
                "detail": _summary_line(tail) if status != "survived" else ""}


def _summary_line(tail: str) -> str:
    lines = [ln for ln in tail.strip().splitlines() if ln.strip()]
    fails = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return (fails[0] if fails else (lines[-1] if lines else ""))[:200]


def rates(results: list[dict]) -> dict:
    table = {}
    for r in results:
        t = table.setdefault(r["module"], {"killed": 0, "survived": 0, "timeout": 0, "stale": 0, "error": 0})
        t[r["status"]] += 1
    for t in table.values():
        judged = t["killed"] + t["timeout"] + t["survived"]
        t["kill_rate"] = None if not judged else round(100 * (t["killed"] + t["timeout"]) / judged, 1)
    return dict(sorted(table.items()))


def markdown(table: dict) -> str:
    lines = ["| module | mutants | killed | survived | timeout | stale | error | kill rate |",
             "|---|---|---|---|---|---|---|---|"]
    tot = {"killed": 0, "survived": 0, "timeout": 0, "stale": 0, "error": 0}
    for mod, t in table.items():
        n = sum(t[k] for k in tot)
        for k in tot:
            tot[k] += t[k]
        rate = "n/a" if t["kill_rate"] is None else f"{t['kill_rate']:.0f} %"
        lines.append(f"| {mod} | {n} | {t['killed']} | {t['survived']} | {t['timeout']} | {t['stale']} | "
                     f"{t['error']} | {rate} |")
    judged = tot["killed"] + tot["timeout"] + tot["survived"]
    rate = "n/a" if not judged else f"{100 * (tot['killed'] + tot['timeout']) / judged:.0f} %"
    lines.append(f"| **all** | {sum(tot.values())} | {tot['killed']} | {tot['survived']} | {tot['timeout']} | "
                 f"{tot['stale']} | {tot['error']} | {rate} |")
    return "\n".join(lines)


def select(mutants: list[Mutant], args) -> list[Mutant]:
    if args.module:
        mods = set(args.module.split(","))
        mutants = [m for m in mutants if m.module in mods]
    if args.only:
        ids = args.only.split(",")
        unknown = [i for i in ids if not any(m.id == i for m in mutants)]
        if unknown:
            raise SystemExit(f"unknown mutant ids {unknown}; see --list")
        mutants = [m for m in mutants if m.id in ids]
    if args.tag:
        mutants = [m for m in mutants if args.tag in m.tags]
    if args.generated_only:
        mutants = [m for m in mutants if m.generated]
    elif not args.generated:
        mutants = [m for m in mutants if not m.generated]
    return mutants


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mutants", default=str(DEFAULT_YAML), help="mutant list (default tools/mutants.yaml)")
    p.add_argument("--module", help="only these modules (comma-separated: smt,train,evaluate,data,report,...)")
    p.add_argument("--only", help="only these mutant ids (comma-separated)")
    p.add_argument("--tag", help="only mutants with this tag (e.g. smoke)")
    p.add_argument("--fast", action="store_true",
                   help="run each mutant's `fast_tests` (single test ids) instead of its `tests` where given")
    p.add_argument("--generated", action="store_true", help="also run the generated operator mutants")
    p.add_argument("--generated-only", action="store_true", help="only the generated operator mutants")
    p.add_argument("--rev", help="test a committed revision (git archive REV) instead of the working tree")
    p.add_argument("--jobs", type=int, default=1, help="parallel copies (default 1)")
    p.add_argument("--timeout", type=float, default=420, help="seconds per mutant's test run (default 420)")
    p.add_argument("--list", action="store_true", help="list the selected mutants and exit")
    p.add_argument("--check", action="store_true",
                   help="only check that every selected mutant still applies (not stale) and compiles")
    p.add_argument("--json", help="write the results (list of mutants + kill rates) to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary copies")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)

    spec = yaml.safe_load(pathlib.Path(args.mutants).read_text()) or {}
    mutants = load_curated(spec, args.fast)
    src_root = REPO
    tmp_src = None
    if args.rev and (args.generated or args.generated_only):  # generated spans must come from the revision's text
        tmp_src = pathlib.Path(tempfile.mkdtemp(prefix="mutate-src-"))
        atexit.register(shutil.rmtree, tmp_src, True)  # also after --list / --check
        src_root = make_copy(tmp_src, args.rev)
    for entry in (spec.get("generate") or []) if (args.generated or args.generated_only) else []:
        mutants += generate(entry, src_root)
    mutants = select(mutants, args)
    if args.list:
        for m in mutants:
            tags = f" [{','.join(m.tags)}]" if m.tags else ""
            print(f"{m.id}{tags}  ({m.module}: {m.file})\n    {m.description}\n    tests: {' '.join(m.tests)}")
        print(f"{len(mutants)} mutants")
        return 0
    if not mutants:
        raise SystemExit("no mutant selected")
    if args.check:
        bad = 0
        for m in mutants:
            try:
                text = (subprocess.run(["git", "show", f"{args.rev}:{m.file}"], cwd=REPO, check=True,
                                       capture_output=True, text=True).stdout if args.rev
                        else (REPO / m.file).read_text())
            except (subprocess.CalledProcessError, FileNotFoundError):
                text = None
            mutated, why = (None, f"{m.file} does not exist") if text is None else (
                (None, m.description) if m.generated and m.span is None else plant(text, m))
            if mutated is not None:
                try:
                    _compiles(mutated, m.file)
                except SyntaxError as err:
                    mutated, why = None, f"does not compile: {err}"
            if mutated is None:
                bad += 1
                print(f"STALE  {m.id}: {why}")
        print(f"{len(mutants) - bad} of {len(mutants)} mutants apply")
        return 1 if bad else 0

    base = pathlib.Path(tempfile.mkdtemp(prefix="mutate-"))
    started = time.time()
    lock = threading.Lock()
    try:
        workers = [Worker(base / f"w{i}", args.rev, args.timeout, args.verbose) for i in range(max(1, args.jobs))]
        print(f"copies of {'revision ' + args.rev if args.rev else 'the working tree'} under {base}; "
              f"imports resolve to {workers[0].where['harness']}", flush=True)
        # mapped test files absent from this copy (e.g. an older --rev) are left out; a mutant
        # with none left is an error. The mapped tests must pass on the unmutated copy.
        absent = set()
        for m in mutants:
            kept = [t for t in m.tests if (workers[0].copy / t.split("::")[0]).exists()]
            absent |= set(m.tests) - set(kept)
            m.tests = kept
        if absent:
            print(f"test files not in this copy (left out): {' '.join(sorted(absent))}", flush=True)
        early = [{"id": m.id, "module": m.module, "file": m.file, "description": m.description, "tests": [],
                  "status": "error", "detail": "none of its mapped test files exists here"}
                 for m in mutants if not m.tests]
        mutants_run = [m for m in mutants if m.tests]
        # one clean run over every mapped test (split over the copies): tests failing there are
        # deselected for the mutants; a copy whose run errs makes its tests' mutants errors
        units = list(dict.fromkeys(t for m in mutants_run for t in m.tests))
        chunks = [c for c in (units[i::len(workers)] for i in range(len(workers))) if c]
        bad, failing_all, why = set(), [], ""
        with cf.ThreadPoolExecutor(len(workers)) as pool:
            futs = {pool.submit(workers[i].clean, chunk): chunk for i, chunk in enumerate(chunks)}
            for f in cf.as_completed(futs):
                outcome, secs, tail, failing = f.result()
                print(f"clean run of {len(futs[f])} test files/ids: {outcome} ({secs:.0f} s)"
                      + (f"; failing on the unmutated code, deselected: {' '.join(failing)}" if failing else ""),
                      flush=True)
                failing_all += failing
                if outcome != "passed":
                    bad |= set(futs[f])
                    why = _summary_line(tail)
                    print("    " + why, flush=True)
        for m in mutants_run:
            files = {t.split("::")[0] for t in m.tests}
            m.deselect = [n for n in failing_all if n.split("::")[0] in files]
        todo = [m for m in mutants_run if not set(m.tests) & bad]
        results = early + [{"id": m.id, "module": m.module, "file": m.file, "description": m.description,
                            "tests": m.tests, "status": "error",
                            "detail": f"mapped tests fail on the unmutated code: {why}"}
                           for m in mutants_run if set(m.tests) & bad]
        free = list(workers)

        def job(m):
            with lock:
                w = free.pop()
            try:
                return w.run(m)
            finally:
                with lock:
                    free.append(w)

        with cf.ThreadPoolExecutor(len(workers)) as pool:
            for res in pool.map(job, todo):
                results.append(res)
                print(f"{res['status']:>8}  {res['id']}  {res.get('seconds', '')}"
                      + (f"  {res['detail']}" if res.get("detail") and (args.verbose or res["status"] in ("stale", "error")) else ""),
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        if tmp_src:
            shutil.rmtree(tmp_src, ignore_errors=True)
    order = {m.id: i for i, m in enumerate(mutants)}
    results.sort(key=lambda r: order[r["id"]])
    table = rates(results)
    print()
    print(markdown(table))
    surv = [r for r in results if r["status"] == "survived"]
    if surv:
        print("\nSurvivors:")
        for r in surv:
            print(f"  {r['id']} ({r['file']}): {r['description']}")
    other = [r for r in results if r["status"] in ("stale", "error")]
    if other:
        print("\nStale / error:")
        for r in other:
            print(f"  {r['status']}: {r['id']}: {r['detail']}")
    print(f"\n{len(results)} mutants in {time.time() - started:.0f} s")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"source": args.rev or "working tree", "rates": table, "results": results,
             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")
    return 0 if not surv and not other else 1


if __name__ == "__main__":
    sys.exit(main())
