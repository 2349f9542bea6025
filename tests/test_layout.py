"""The layout's import rules (README, "Layout"), checked on every module's source with ``ast``.

Imports inside functions count too: a rule holds for every ``import`` and
``from ... import`` statement anywhere in a module, relative ones resolved.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jaxmed"
LAYERS = ("io", "data", "models", "likelihood", "losses", "train", "metrics", "plots")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, list[str]]]:
    """``(line, modules it may import)`` of every import statement in the file, relative imports made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from jaxmed import tasks` imports jaxmed.tasks.
            found.append((node.lineno, [base] + [f"{base}.{a.name}" for a in node.names]))
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _rule_breaks(path: Path) -> list[str]:
    module = _module_name(path)
    layer = module.split(".")[1] if module.count(".") else ""
    breaks = {}
    for line, names in _imports(path):
        for name in names:
            for rule in _rules_broken(module, layer, name):
                breaks.setdefault((line, rule), f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}: {rule}")
    return list(breaks.values())


def _rules_broken(module: str, layer: str, name: str) -> list[str]:
    broken = []
    if _within(name, "experiments") or _within(name, "benchmarks"):
        broken.append("nothing under jaxmed/ imports experiments or benchmarks")
    if layer in LAYERS and (_within(name, "jaxmed.tasks") or _within(name, "jaxmed.cli")):
        broken.append(f"the layer jaxmed.{layer} never imports a task or the CLI")
    if layer == "likelihood" and _within(name, "flax"):
        broken.append("jaxmed.likelihood knows nothing of Flax")
    if layer == "models" and _within(name, "jaxmed.train"):
        broken.append("jaxmed.models knows nothing of training")
    if layer == "tasks" and module.count(".") >= 2:
        task = module.split(".")[2]
        other = name.split(".")[2] if _within(name, "jaxmed.tasks") and name.count(".") >= 2 else task
        if other != task:
            broken.append("a task never imports another task (move the shared piece down a layer)")
    return broken


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_module_is_checked():
    names = {_module_name(p) for p in MODULES}
    assert {"jaxmed.likelihood.ais", "jaxmed.train.run", "jaxmed.tasks.scan_quality.study", "jaxmed.cli"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_follow_the_layout(path):
    assert _rule_breaks(path) == []


def test_the_rules_catch_violations(tmp_path, monkeypatch):
    # The checker itself, on files written to look like modules of each layer.
    fake = tmp_path / "jaxmed"
    cases = {
        "data/bad.py": "from jaxmed.tasks.scan_quality import run_demo\n",
        "train/bad.py": "def f():\n    import jaxmed.cli\n",
        "likelihood/bad.py": "import flax.linen as nn\n",
        "models/bad.py": "from ..train import fit\n",
        "metrics/bad.py": "from jaxmed import tasks\n",
        "tasks/lesions/bad.py": "from jaxmed.tasks.scan_quality.scores import score_images\n",
        "tasks/chest/bad.py": "import benchmarks._machine\n",
    }
    for rel, source in cases.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(source)
    (fake / "tasks" / "lesions" / "good.py").write_text("from jaxmed.tasks.lesions import x\nfrom jaxmed.train import fit\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    for rel in cases:
        assert len(_rule_breaks(fake / rel)) == 1, rel
    assert _rule_breaks(fake / "tasks" / "lesions" / "good.py") == []
