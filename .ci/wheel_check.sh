#!/usr/bin/env bash
# The wheel, not the checkout: build stepbench's wheel, install it (no -e) into a fresh virtual
# environment, and from an empty temporary directory run a CPU row through the `stepbench` console
# script, its SFT twin through `python -m core.bench`, and the report. Fails unless both rows are ok,
# the report is written, and `core` (and its configs) come from the venv.
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
t0=$SECONDS

# quiet NAME CMD...: run CMD with its output in a log, shown only when it fails
quiet() {
  local name=$1; shift
  if ! "$@" >"$TMP/$name.log" 2>&1; then
    echo "wheel check: '$name' failed ($*):"; tail -n 40 "$TMP/$name.log"; exit 1
  fi
}

# Build from a clean copy of the working tree (tracked and untracked files that git does not ignore):
# an in-tree build reuses ./build, where files since deleted or moved would leak into the wheel.
"$PY" - "$SRC" "$TMP/src" <<'EOF'
import shutil, subprocess, sys
from pathlib import Path
src, dst = map(Path, sys.argv[1:])
out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src, check=True,
                     capture_output=True).stdout.decode()
for name in filter(None, out.split("\0")):
    if (src / name).is_file():  # not a tracked file deleted in the working tree
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, dst / name)
EOF
quiet build "$PY" -m pip wheel --no-deps -w "$TMP/dist" "$TMP/src"
WHEEL=$(ls "$TMP"/dist/stepbench-*.whl)

# --system-site-packages: torch, hydra-core, peft, ... come from the environment CI already set up
# (not downloaded again); stepbench itself comes from the wheel. The checkout's editable install is
# visible there too, so the wheel is force-installed into the venv (which is first on sys.path) and
# where `core` is imported from is checked below.
quiet venv "$PY" -m venv --system-site-packages "$TMP/venv"
VPY="$TMP/venv/bin/python"
quiet install "$VPY" -m pip install --no-deps --force-reinstall "$WHEEL"

mkdir "$TMP/run" && cd "$TMP/run"
"$VPY" - <<'EOF'
import sys
from pathlib import Path
import core
from core.options import conf_dir
from core.paths import reference_dir
venv = Path(sys.prefix).resolve()
for what, p in (("core", Path(core.__file__)), ("conf_dir()", conf_dir()), ("reference_dir()", reference_dir())):
    p = p.resolve()
    if venv not in p.parents:
        sys.exit(f"wheel check: {what} is {p}, not in the venv {venv}: the checkout leaked in")
print(f"wheel check: core.__file__ = {core.__file__}")
EOF
quiet bench-rl "$TMP/venv/bin/stepbench" bench results=rows.jsonl steps=2 device=cpu
quiet bench-sft "$VPY" -m core.bench results=rows.jsonl steps=2 task=sft device=cpu
quiet report "$TMP/venv/bin/stepbench" report --results rows.jsonl --out report.md --no-plots
"$VPY" - <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in Path("rows.jsonl").read_text().splitlines() if line.strip()]
ok = [r for r in rows if r.get("status") == "ok"]
if len(ok) != 2 or len(rows) != 2:
    sys.exit(f"wheel check: expected 2 ok rows in rows.jsonl, got {len(ok)} ok of {len(rows)}")
if not Path("report.md").is_file() or not Path("report.md").stat().st_size:
    sys.exit("wheel check: report.md was not written")
print("wheel check: rows " + ", ".join(f"{r['model']} {r['task']} {r['tps'] / 1e3:.2f}k tok/s" for r in ok)
      + f"; report.md {Path('report.md').stat().st_size} bytes")
EOF
echo "wheel check: ok ($(basename "$WHEEL"), $((SECONDS - t0)) s)"
