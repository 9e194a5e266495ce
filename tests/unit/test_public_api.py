"""The package's public names are imported lazily, and no submodule shadows one of them."""
import subprocess
import sys

import raydal


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, timeout=120).stdout.strip()


def test_import_raydal_is_lazy():
    # a scoring actor imports raydal without the loop, the config (pydantic) or timm
    out = _run("import sys, raydal; print(sorted(m for m in ('raydal.loop', 'raydal.config', "
               "'raydal.selection', 'timm', 'pydantic') if m in sys.modules))")
    assert out == "[]"


def test_select_is_the_function_after_importing_the_selection_module():
    out = _run("import raydal.selection, raydal; print(callable(raydal.select), "
               "raydal.select is raydal.selection.select, type(raydal.select).__name__)")
    assert out == "True True function"


def test_every_public_name_resolves():
    for name in raydal.__all__:
        assert getattr(raydal, name) is not None, name
    assert set(raydal.__all__) <= set(dir(raydal))
