"""The boundaries between the packages (docs/design.md): the contract at the bottom needs only the standard
library, the library never needs the cluster (nor the analysis, but for the task folders' tables, which sit on
its helpers), the analysis never needs torch or Ray, and a sweep's trial (on the workers) never needs pandas."""
import subprocess
import sys

import pytest


def modules_after(code: str) -> set[str]:
    """The names in sys.modules after running `code` in a fresh process."""
    code += "\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def imported_after(package: str, skip: str = "") -> set[str]:
    """The top-level packages in sys.modules after importing every module of `package` (but those whose name
    ends with `skip`), in a fresh process."""
    code = (f"import importlib, pkgutil, {package}\n"
            f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
            f"    if not ('{skip}' and m.name.endswith('{skip}')):\n"
            "        importlib.import_module(m.name)")
    return {name.split(".")[0] for name in modules_after(code)}


@pytest.mark.slow  # importing every module of the library loads torch and transformers: seconds each
@pytest.mark.parametrize("package, skip, never", [
    ("locas", ".tables", {"ray", "orchestration", "analysis"}),
    ("locas", "", {"ray", "orchestration"}),
    ("analysis", "", {"torch", "transformers", "ray", "orchestration"})])
def test_a_package_never_imports_the_layers_it_must_not_know(package, skip, never):
    assert imported_after(package, skip) & never == set()


def test_the_contract_imports_only_the_standard_library():
    loaded = modules_after("import locas.contract, locas.run_folder") - modules_after("")  # not the site's own
    outside = {name.split(".")[0] for name in loaded} - set(sys.stdlib_module_names) - {"locas"}
    ours = {name for name in loaded if name.split(".")[0] == "locas"}
    assert outside == set()
    assert ours == {"locas", "locas.contract", "locas.errors", "locas.run_folder"}


def test_the_analysis_reads_only_the_light_modules_of_the_library():
    ours = {name for name in modules_after("import analysis.load, analysis.tables") if name.startswith("locas")}
    light = {"locas", "locas.contract", "locas.errors", "locas.run_folder", "locas.tasks"}
    assert {name for name in ours if not name.endswith((".rows", ".tables"))} <= light | {
        f"locas.tasks.{name}" for name in ("pg19", "locomo", "mmlu")}


def test_a_sweep_trial_imports_no_pandas():
    assert "pandas" not in modules_after("import orchestration.sweep.trial")
