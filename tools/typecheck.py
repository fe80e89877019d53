"""Type-check hopscope with mypy, every module under the name it is imported by.

hopscope's subpackages live in top-level folders (``probes/`` is ``hopscope.probes``, ...; the
``package-dir`` table of pyproject.toml). Python finds them through the editable install's import
hook, which mypy cannot follow (python/mypy#13392): run plainly, ``mypy -p hopscope`` sees only the
core package and treats every ``hopscope.probes`` import as missing. This script hands mypy each
source file with its real module name, read from that same table, and mypy's settings from
pyproject.toml.

    python tools/typecheck.py            # the whole package
    python tools/typecheck.py probes/meter.py correlate/    # report only these files or folders

Every module is checked in both cases (a module left out could not be imported by name, and mypy
would treat it as missing); naming files only narrows what is reported.

Exit status: 0 clean, 1 type errors, 2 a usage or configuration error (as mypy's own).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from mypy import build
from mypy.errors import CompileError
from mypy.fscache import FileSystemCache
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent


class UsageError(Exception):
    """A target that is not part of the package."""


def package_dirs() -> dict[str, Path]:
    """pyproject.toml's package-dir table: package name -> its folder."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        table: dict[str, str] = tomllib.load(fh)["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in table.items()}


def module_name(path: Path, roots: dict[str, Path]) -> str | None:
    """The module ``path`` is imported as (the deepest package-dir root holding it), None outside them."""
    best: tuple[int, str] | None = None
    for name, folder in roots.items():
        if path.is_relative_to(folder) and (best is None or len(folder.parts) > best[0]):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            best = (len(folder.parts), ".".join((name, *parts)))
    return None if best is None else best[1]


def sources(targets: list[Path]) -> list[BuildSource]:
    """Every .py and .pyi file below ``targets`` (default: every root), with its module name."""
    roots = package_dirs()
    files: set[Path] = set()
    for target in targets or list(roots.values()):
        target = target.resolve()
        if not target.exists():
            raise UsageError(f"no file or folder {target}")
        found = [target] if target.is_file() else [*target.rglob("*.py"), *target.rglob("*.pyi")]
        files.update(p for p in found if "__pycache__" not in p.parts)
    result = []
    for path in sorted(files):
        module = module_name(path, roots)
        if module is None:
            raise UsageError(f"{path} is not inside a package folder of pyproject.toml")
        if path.suffix == ".py" and path.with_suffix(".pyi").exists():
            continue  # the stub describes the module
        result.append(BuildSource(str(path), module, None))
    return result


def main(argv: list[str]) -> int:
    _, options = process_options(["--config-file", str(ROOT / "pyproject.toml"), "-c", ""])
    try:
        chosen = sources([Path(a) for a in argv])
        result = build.build(sources([]), options, fscache=FileSystemCache())
    except UsageError as exc:
        print(f"typecheck: {exc}", file=sys.stderr)
        return 2
    except CompileError as exc:
        print("\n".join(exc.messages), file=sys.stderr)
        return 2
    shown = {str(Path(s.path).relative_to(ROOT)) for s in chosen if s.path}
    lines = [line for line in result.errors if line.split(":", 1)[0] in shown]
    for line in lines:
        print(line)
    noun = "file" if len(chosen) == 1 else "files"
    errors = sum(1 for line in lines if ": error:" in line)
    if errors:
        print(f"typecheck: {errors} errors in {len(chosen)} source {noun}")
        return 1
    print(f"typecheck: no issues in {len(chosen)} source {noun}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
