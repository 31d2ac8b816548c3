"""Print pip constraints that pin every floored dependency of pyproject.toml to its floor.

    python .ci/min_versions.py diffusers train triton test > min.txt
    pip install -c min.txt -e ".[diffusers,train,triton,test]"

Each ``name>=X`` among the core dependencies and the named extras becomes ``name==X``, so that
the min-versions CI job tests exactly the minimums pyproject.toml promises. torch is left out: the
only torch this CI machine can install is the CPU build 2.13.0 on its disk (its floor is read off the
code, see the comment in pyproject.toml)."""

from __future__ import annotations

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOT_PINNED = {"torch"}
# name, optional [extras], then a single ">=" floor (a further ",<Y" cap is allowed and ignored)
FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")


def floors(extras: list[str]) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"min_versions.py: no extra(s) {unknown} in pyproject.toml; known: {sorted(optional)}")
    pins: dict[str, str] = {}
    for requirement in project["dependencies"] + [r for e in extras for r in optional[e]]:
        m = FLOOR.match(requirement)
        if not m or m.group(1).lower() in NOT_PINNED:
            continue
        name, version = m.group(1).lower(), m.group(2)
        if pins.get(name, version) != version:
            raise SystemExit(f"min_versions.py: {name} has two floors in pyproject.toml ({pins[name]} and {version})")
        pins[name] = version
    return pins


if __name__ == "__main__":
    for name, version in sorted(floors(sys.argv[1:]).items()):
        print(f"{name}=={version}")
