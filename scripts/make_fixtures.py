"""Write small example datasets, one per supported format, under a folder.

Usage::

    python scripts/make_fixtures.py OUT_DIR

Writes ``OUT_DIR/<format>/...`` (the same five images and objects in every format, see
``tests/fixtures_data.py``) and ``OUT_DIR/data-<format>.toml``, a ``[data]`` section with paths
relative to ``OUT_DIR``, ready to paste into (or sit beside) an example audit config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fixtures_data import MAKERS  # noqa: E402


def _toml_value(value: object) -> str:
    return json.dumps(value)  # strings and lists of str/numbers are valid TOML in JSON form


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the datasets into")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name, maker in MAKERS.items():
        table = maker(out)
        lines = ["[data]"]
        for key, value in table.items():
            if isinstance(value, str) and Path(value).is_absolute():
                value = Path(value).relative_to(out).as_posix()
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append('classes = ["cat", "dog"]')
        (out / f"data-{name}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {out / name} and {out / f'data-{name}.toml'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
