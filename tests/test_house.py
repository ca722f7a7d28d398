"""The boundaries between the packages (docs/design.md): the contract at the bottom needs only the standard
library, the library never needs the cluster or the analysis, the analysis never needs torch or Ray, and a
sweep's trial (on the workers) never needs pandas."""
import subprocess
import sys

import pytest


def modules_after(code: str) -> set[str]:
    """The names in sys.modules after running `code` in a fresh process."""
    code += "\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def imported_after(package: str) -> set[str]:
    """The top-level packages in sys.modules after importing every module of `package`, in a fresh process."""
    code = (f"import importlib, pkgutil, {package}\n"
            f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
            "    importlib.import_module(m.name)")
    return {name.split(".")[0] for name in modules_after(code)}


@pytest.mark.parametrize("package, never", [("locas", {"ray", "orchestration", "analysis"}),
                                            ("analysis", {"torch", "transformers", "ray", "orchestration"})])
def test_a_package_never_imports_the_layers_it_must_not_know(package, never):
    assert imported_after(package) & never == set()


def test_the_contract_imports_only_the_standard_library():
    loaded = modules_after("import locas.contract, locas.run_folder") - modules_after("")  # not the site's own
    outside = {name.split(".")[0] for name in loaded} - set(sys.stdlib_module_names) - {"locas"}
    ours = {name for name in loaded if name.split(".")[0] == "locas"}
    assert outside == set()
    assert ours == {"locas", "locas.contract", "locas.errors", "locas.run_folder"}


def test_the_analysis_reads_only_the_light_modules_of_the_library():
    ours = {name for name in modules_after("import analysis.load, analysis.tables") if name.startswith("locas")}
    assert ours <= {"locas", "locas.contract", "locas.errors", "locas.run_folder"}


def test_a_sweep_trial_imports_no_pandas():
    assert "pandas" not in modules_after("import orchestration.sweep.trial")
