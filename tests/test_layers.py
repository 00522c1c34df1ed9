"""The layers hold: smt <- baselines <- harness core <- harness.reports <- workflow.

Every project module's imports are read with `ast`, at module level AND inside functions (a
function-level import cannot hide an arrow), and each module gets a layer:

    0  smt/                       the method alone
    1  baselines/                 one module per method, the registry
    2  harness/ (core)            config, run config, data, models, loop, evaluation, records ...
    3  harness/reports/, harness/report_html.py, harness/lr_sweep.py
                                  tables, figures, the report's HTML, the rate choice (read from a report Ctx)
    4  workflow/scripts/, benchmarks/, tools/, examples/   the doors: jobs, checks, tools, examples

A module may import its own layer or a lower one, never a higher one, and no group of modules may
import each other in a circle (within a layer too). Importing a package's submodule runs the
package's __init__ but is not counted as an import of it. Tests are outside the layers.
"""
import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("smt", "baselines", "harness", "benchmarks")
SCRIPT_DIRS = ("workflow/scripts", "tools", "examples")
# first matching prefix wins
LAYERS = (("smt", 0), ("baselines", 1), ("harness.reports", 3), ("harness.report_html", 3),
          ("harness.lr_sweep", 3), ("harness", 2), ("workflow", 4), ("benchmarks", 4), ("tools", 4),
          ("examples", 4))
NAMES = {0: "smt", 1: "baselines", 2: "harness core", 3: "harness.reports", 4: "workflow/benchmarks/tools/examples"}


def project_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """{dotted module name: file} of every project module under root."""
    out = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py") if (root / pkg).is_dir() else ():
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    for folder in SCRIPT_DIRS:
        for path in (root / folder).glob("*.py") if (root / folder).is_dir() else ():
            out[folder.replace("/", ".") + "." + path.stem] = path
    return out


def layer(module: str) -> int:
    for prefix, number in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return number
    raise AssertionError(f"{module}: no layer; add its prefix to LAYERS in {__file__}")


def imports(module: str, path: pathlib.Path, modules: dict) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function?) of every import statement of a module."""
    def resolve(name):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in modules:
                return ".".join(parts[:i])
        return None

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    script_dir = module.rpartition(".")[0] if not module.startswith(PACKAGES) else None
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - child.level + 1] + [base]).strip(".")
                names = [f"{base}.{a.name}" for a in child.names] + [base]
            targets = set()
            for name in names:
                if script_dir and resolve(f"{script_dir}.{name}"):  # a script's sibling (workflow/scripts/_job.py)
                    name = f"{script_dir}.{name}"
                target = resolve(name)
                if target and target != module:
                    targets.add(target)
            if isinstance(child, ast.ImportFrom) and len(targets) > 1:
                targets.discard(resolve(names[-1]))  # `from pkg import sub`: the submodule, not pkg's __init__
            found.extend((t, child.lineno, in_function) for t in sorted(targets))
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def graph(root: pathlib.Path = REPO) -> dict[str, list[tuple[str, int, bool]]]:
    modules = project_modules(root)
    return {m: imports(m, p, modules) for m, p in modules.items()}


def upward(g) -> list[str]:
    return [f"{m} (layer {layer(m)}, {NAMES[layer(m)]}) imports {t} (layer {layer(t)}, {NAMES[layer(t)]}) at line "
            f"{line}{' inside a function' if inner else ''}"
            for m, edges in sorted(g.items()) for t, line, inner in edges if layer(t) > layer(m)]


def circles(g) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    edges = {m: sorted({t for t, _, _ in e}) for m, e in g.items()}
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return sorted(groups)


def counts(g) -> dict:
    """The numbers a reader of the structure asks for (printed by `python tests/test_layers.py`)."""
    return {"modules": len(g), "imports": sum(len({t for t, _, _ in e}) for e in g.values()),
            "upward": len(upward(g)), "circles": len(circles(g)),
            "function_level": sum(1 for e in g.values() for _, _, inner in e if inner)}


# ------------------------------------------------------------------ the project

def test_every_module_has_a_layer():
    for module in project_modules(REPO):
        layer(module)


def test_no_import_goes_up_a_layer():
    assert upward(graph()) == []


def test_no_circle_among_modules():
    assert circles(graph()) == []


# ------------------------------------------------------------------ the checks can fail

def _tree(root: pathlib.Path, files: dict) -> pathlib.Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_planted_upward_import_is_found_even_inside_a_function(tmp_path):
    g = graph(_tree(tmp_path, {
        "smt/__init__.py": "", "harness/__init__.py": "", "harness/reports/__init__.py": "",
        "smt/layer.py": "def f():\n    from harness import records\n",
        "harness/records.py": "",
        "harness/config/__init__.py": "from harness.reports import cells\n",
        "harness/reports/cells.py": "from harness import records\n",
    }))
    found = upward(g)
    assert len(found) == 2
    assert any(f.startswith("smt.layer (layer 0, smt) imports harness.records") and "inside a function" in f
               for f in found)
    assert any(f.startswith("harness.config (layer 2, harness core) imports harness.reports.cells") for f in found)


def test_a_planted_circle_is_found_within_a_layer(tmp_path):
    g = graph(_tree(tmp_path, {
        "harness/__init__.py": "",
        "harness/cloze.py": "def docs():\n    from harness.data import read_records\n",
        "harness/data.py": "from harness import cloze\n",
        "harness/models.py": "import harness.data\n",
    }))
    assert circles(g) == [["harness.cloze", "harness.data"]] and upward(g) == []


def test_relative_imports_and_script_siblings_resolve(tmp_path):
    g = graph(_tree(tmp_path, {
        "baselines/__init__.py": "from .lora import LoRA\n", "baselines/lora.py": "from . import base\n",
        "baselines/base.py": "", "workflow/scripts/_job.py": "", "workflow/scripts/train.py": "from _job import start\n",
    }))
    assert [t for t, _, _ in g["baselines"]] == ["baselines.lora"]
    assert [t for t, _, _ in g["baselines.lora"]] == ["baselines.base"]
    assert [t for t, _, _ in g["workflow.scripts.train"]] == ["workflow.scripts._job"]


if __name__ == "__main__":
    print(counts(graph()))
