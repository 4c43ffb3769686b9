"""The packages depend one way: core <- data <- train <- export, core <- runtime <- train; cli on
top, benchmarks and the experiment reproduction above it. The runtime never imports the training
code (nor torch)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT = {"core": {"core"}, "data": {"core", "data"}, "runtime": {"core", "runtime"},
              "train": {"core", "data", "runtime", "train"}, "export": {"core", "data", "runtime", "train", "export"}}
MAY_IMPORT["dicom"] = {"core", "runtime", "dicom"}
MAY_IMPORT["cli"] = MAY_IMPORT["export"] | {"dicom", "cli"}
MAY_IMPORT["benchmarks"] = MAY_IMPORT["cli"] | {"benchmarks"}
MAY_IMPORT["reproduce"] = MAY_IMPORT["benchmarks"] | {"reproduce"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_packages_import_only_the_layers_below(package):
    wrong = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in sorted((ROOT / package).rglob("*.py"))
             for line, name in imports(path)
             if name.startswith("neoseg.") and name.split(".")[1] not in MAY_IMPORT[package]]
    assert not wrong, "\n".join(wrong)


def test_the_runtime_does_not_import_torch():
    wrong = [f"{path.relative_to(ROOT)}:{line}" for path in sorted((ROOT / "runtime").rglob("*.py"))
             for line, name in imports(path) if name.split(".")[0] == "torch"]
    assert not wrong, wrong


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from neoseg.train import checkpoint\n")
    assert imports(tmp_path / "m.py") == [(2, "neoseg.train")]
