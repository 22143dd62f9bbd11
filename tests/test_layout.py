"""The package's layout rules (README, "Architecture"), checked on the source: no import circle,
no package import hidden in a function, report/ independent of train/, short functions, each
name exported from the module that defines it, benchmarks on public names, a light CLI import."""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "lipschitz_rnn"

#: package imports inside functions that are allowed: the optional Ray adapter (imported when a
#: sweep runs, Ray being an extra). The command functions of cli/ import the library lazily by
#: design and are not listed.
LAZY_IMPORTS = {("lipschitz_rnn.sweep.runner", "lipschitz_rnn.sweep._tune")}
MAX_LINES = 100  # a function, docstring excluded
REASON_OVER = 80  # above this, a comment in the function says why (it mentions "80 lines")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
TREES = {m: ast.parse(p.read_text(encoding="utf-8")) for m, p in MODULES.items()}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node: ast.AST) -> set[str]:
    """The modules of this package that an import statement loads (a submodule where a name
    is one, else the module imported from)."""
    out = set()
    if isinstance(node, ast.ImportFrom):
        target = _resolve(module, node)
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            out.add(sub if sub in MODULES else target)
    elif isinstance(node, ast.Import):
        out = {a.name for a in node.names}
    return {t for t in out if t == "lipschitz_rnn" or t.startswith("lipschitz_rnn.")}


def _top_level_imports(module: str) -> set[str]:
    """What ``module`` imports when it is imported (statements outside functions and classes,
    ``if TYPE_CHECKING:`` blocks excluded)."""
    found: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(_targets(module, node))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)

    visit(TREES[module].body)
    return found


def _function_imports(module: str):
    """(function node, import node) for the imports inside functions."""
    for fn in ast.walk(TREES[module]):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield fn, node


def _with_parents(names: set[str]) -> set[str]:
    """``names`` and the packages above them (importing a module runs its packages first)."""
    out = set(names)
    for n in names:
        parts = n.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out & set(MODULES)


def test_no_import_circle():
    graph = {m: _top_level_imports(m) & set(MODULES) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_package_import_hidden_in_a_function():
    hidden = []
    for m in MODULES:
        if m == "lipschitz_rnn.cli" or m.startswith("lipschitz_rnn.cli."):
            continue
        for fn, node in _function_imports(m):
            for target in _targets(m, node):
                if (m, target) not in LAZY_IMPORTS:
                    hidden.append(f"{MODULES[m].relative_to(ROOT)}:{node.lineno} ({fn.name}) "
                                  f"imports {target}")
    assert not hidden, "\n".join(hidden)


def test_report_imports_nothing_from_train():
    # everything importing the report loads, and everything the report imports when it runs
    seen, todo = set(), [m for m in MODULES if m.startswith("lipschitz_rnn.report")]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        loads = _top_level_imports(m) | {
            t for _, node in _function_imports(m) for t in _targets(m, node)
        }
        todo.extend(_with_parents(loads) - seen)
    assert not [m for m in seen if m.startswith("lipschitz_rnn.train")], sorted(seen)


def test_no_long_functions():
    long, unexplained = [], []
    for m, tree in TREES.items():
        src = MODULES[m].read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = fn.end_lineno - fn.lineno + 1
            first = fn.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                lines -= first.end_lineno - first.lineno + 1
            where = f"{MODULES[m].relative_to(ROOT)}:{fn.lineno} {fn.name} ({lines} lines)"
            if lines > MAX_LINES:
                long.append(where)
            elif lines > REASON_OVER and "80 lines" not in "\n".join(
                src[fn.lineno - 1: fn.end_lineno]
            ):
                unexplained.append(where)
    assert not long, f"functions over {MAX_LINES} lines: {long}"
    assert not unexplained, f"over {REASON_OVER} lines without a reason beside them: {unexplained}"


def _defined_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [e.value for e in node.value.elts]
    return None


def test_modules_export_only_what_they_define():
    # a package gathers its modules' names; a module re-exports none of its siblings'
    shims = []
    for m, tree in TREES.items():
        if MODULES[m].name == "__init__.py":
            continue
        names = _all(tree) or []
        shims += [f"{m}.{n}" for n in names if n not in _defined_names(tree)]
    assert not shims, shims


def _reference_modules() -> set[str]:
    pages = (ROOT / "docs" / "api").glob("*.md")
    return {re.search(r"^::: (\S+)", p.read_text(), re.M)[1] for p in pages}


def test_benchmarks_use_public_names_only():
    public = _reference_modules()
    assert "lipschitz_rnn.models" in public
    bad = []
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lipschitz_rnn"):
                where = f"{script.name}:{node.lineno}"
                if node.module not in public:
                    bad.append(f"{where}: {node.module} has no page in the API reference")
                    continue
                exported = _all(TREES[node.module]) or []
                bad += [f"{where}: {node.module}.{a.name} is not in its __all__"
                        for a in node.names if a.name not in exported]
            elif isinstance(node, ast.Import):
                bad += [f"{script.name}:{node.lineno}: import {a.name}" for a in node.names
                        if a.name.startswith("lipschitz_rnn") and a.name not in public]
    assert not bad, "\n".join(bad)


def _run_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_cli_and_package_import_without_torch():
    code = (
        "import sys, lipschitz_rnn, lipschitz_rnn.cli\n"
        "heavy = [m for m in ('torch', 'numpy', 'lipschitz_rnn.models', 'lipschitz_rnn.train',"
        " 'lipschitz_rnn.analysis', 'lipschitz_rnn.data', 'lipschitz_rnn.runs') if m in sys.modules]\n"
        "lipschitz_rnn.cli.build_parser()\n"
        "heavy += [m for m in ('torch',) if m in sys.modules]\n"
        "from lipschitz_rnn import LipschitzRNN\n"
        "import lipschitz_rnn.models as models\n"
        "print(heavy, LipschitzRNN is models.LipschitzRNN, 'torch' in sys.modules)\n"
    )
    assert _run_python(code) == "[] True True"


def test_cli_robustness_defaults_are_the_librarys():
    from lipschitz_rnn.cli import analysis as cli_analysis
    from lipschitz_rnn.runs import analyses

    assert cli_analysis.INPUT_SIGMAS == analyses.DEFAULT_INPUT_SIGMAS
    assert cli_analysis.WEIGHT_SIGMAS == analyses.DEFAULT_WEIGHT_SIGMAS


def test_version_is_the_installed_one_and_unknown_for_a_bare_tree():
    import lipschitz_rnn

    try:
        expected = importlib.metadata.version("lipschitz-rnn")
    except importlib.metadata.PackageNotFoundError:
        expected = "0+unknown"
    assert lipschitz_rnn.__version__ == expected
    code = (
        "import importlib.metadata as md\n"
        "def missing(name): raise md.PackageNotFoundError(name)\n"
        "md.version = missing\n"
        "import lipschitz_rnn\n"
        "print(lipschitz_rnn.__version__)\n"
    )
    assert _run_python(code) == "0+unknown"
    with pytest.raises(AttributeError, match="no_such_name"):
        lipschitz_rnn.no_such_name  # noqa: B018
