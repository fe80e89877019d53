"""hopscope as a user gets it: a wheel built from the repository, installed in a fresh venv.

The wheel must build without warnings, carry every subpackage and its data (the UI's static files,
the kernels' C sources and stubs, the lab samples) and give a working ``hopscope demo`` when run from
a directory outside the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    """The environment without the venv's own settings; bytecode allowed (else setuptools warns
    that byte-compiling is disabled)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, the build's output)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, env=_env(), cwd=out, timeout=600,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    wheels = list(out.glob("hopscope-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], log


def test_wheel_builds_without_warnings(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)


def test_wheel_carries_every_package_and_its_data(wheel: tuple[Path, str]) -> None:
    names = set(zipfile.ZipFile(wheel[0]).namelist())
    with open(ROOT / "pyproject.toml", "rb") as fh:
        roots = tomllib.load(fh)["tool"]["setuptools"]["package-dir"]
    for package, folder in roots.items():
        prefix = package.replace(".", "/")
        for source in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in source.parts:
                continue
            assert f"{prefix}/{source.relative_to(ROOT / folder).as_posix()}" in names, source
    expected = [
        "hopscope/py.typed",
        "hopscope/api/static/index.html",
        "hopscope/probes/csrc/meter.c",
        "hopscope/probes/_meter.pyi",
        "hopscope/samples/lab/manifest.json",
        "hopscope/samples/lab/client1-pod.pcap",
        "hopscope/lab/envoy.yaml",
        "hopscope/lab/nginx.conf",
        "hopscope/lab/haproxy.cfg",
        "hopscope/lab/flood.c",
    ]
    assert [n for n in expected if n not in names] == []
    assert any(n.startswith("hopscope/probes/_meter.") and n.endswith(".so") for n in names)


def test_demo_runs_from_a_fresh_venv_outside_the_checkout(wheel: tuple[Path, str], tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = _env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel[0])],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-4000:]
    env["HOPSCOPE_VAR"] = str(tmp_path / "state")
    work = tmp_path / "elsewhere"
    work.mkdir()
    demo = subprocess.run(
        [str(venv / "bin" / "hopscope"), "demo"], capture_output=True, text=True, env=env, cwd=work, timeout=600
    )
    assert demo.returncode == 0, demo.stderr[-4000:]
    assert "41 traces" in demo.stdout, demo.stdout[-3000:]
    assert "recall" in demo.stdout
    # the kernels were compiled into the wheel and load from the installed package
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import hopscope.probes._meter as m; print(m.__file__)"],
        capture_output=True, text=True, env=env, cwd=work, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0 and str(venv) in probe.stdout, probe.stderr
