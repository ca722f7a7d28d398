"""The boundaries between the packages (docs/design.md): the library never needs the cluster or the analysis,
and the analysis never needs torch, the library or Ray."""
import subprocess
import sys

import pytest


def imported_after(package: str) -> set[str]:
    """The top-level packages in sys.modules after importing every module of `package`, in a fresh process."""
    code = (f"import importlib, pkgutil, sys, {package}\n"
            f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("package, never", [("locas", {"ray", "orchestration", "analysis"}),
                                            ("analysis", {"torch", "locas", "ray", "orchestration"})])
def test_a_package_never_imports_the_layers_it_must_not_know(package, never):
    assert imported_after(package) & never == set()
