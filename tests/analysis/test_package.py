"""``scorebank.analysis`` imports each analysis on first use: a command needing one does not
pay for the others (scipy.stats, matplotlib), and every public name is still there."""

import subprocess
import sys


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_importing_the_package_imports_no_other_analysis():
    out = _run("import sys, scorebank.analysis, scorebank.analysis.registry; "
               "print(sorted(m for m in ('scipy.stats', 'matplotlib', 'scorebank.analysis.correlation', "
               "'scorebank.analysis.plots', 'scorebank.analysis.noise') if m in sys.modules))")
    assert out == "[]"


def test_every_public_name_resolves_to_what_its_module_defines():
    import importlib

    import scorebank.analysis as analysis

    for name in analysis.__all__:
        value = getattr(analysis, name)
        module = importlib.import_module(f"scorebank.analysis.{analysis._EXPORTS[name]}")
        assert value is getattr(module, name), name
    # functions named like their module stay the functions once the modules are imported
    out = _run("import scorebank.analysis.forgetting, scorebank.analysis.difficulty; "
               "from scorebank.analysis import forgetting, difficulty; print(callable(forgetting), callable(difficulty))")
    assert out == "True True"
