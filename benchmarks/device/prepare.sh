#!/usr/bin/env bash
# Rebuild the git-ignored folders a device call carries (they do not survive a session):
#   .whl     hydra-core, omegaconf, antlr4 (built from its sdist), liger-kernel: what the GPU image lacks
#   .fa3src  FlashAttention-3's sources and CUTLASS's headers, for `python -m core.fa3_build` on the device
#   .head    `git archive HEAD`: the committed tree the rows run (their commit is STEPBENCH_GIT_COMMIT)
# FA_GIT and CUTLASS_GIT are git directories of the two repositories (the session's fetch tool brings
# them, e.g. /work/.mirror/Dao-AILab+flash-attention/repo); without them .fa3src is left as it is.
#   FA_GIT=... CUTLASS_GIT=... bash benchmarks/device/prepare.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
for d in .whl .fa3src .fa3whl .head; do
  grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
if [ ! -f .whl/done ]; then
  mkdir -p .whl /tmp/antlr-sdist
  python3 -m pip download -q --no-deps -d .whl hydra-core==1.3.2 omegaconf==2.3.0 liger-kernel==0.6.2
  python3 -m pip download -q --no-deps --no-binary :all: -d /tmp/antlr-sdist antlr4-python3-runtime==4.9.3
  python3 -m pip install -q wheel
  python3 -m pip wheel -q --no-build-isolation --no-deps -w .whl /tmp/antlr-sdist/antlr4*
  touch .whl/done
fi
if [ -n "${FA_GIT:-}" ] && [ -n "${CUTLASS_GIT:-}" ] && [ ! -d .fa3src/flash-attention/hopper ]; then
  mkdir -p .fa3src/flash-attention .fa3src/cutlass
  # core.fa3_build's PINNED_COMMIT and CUTLASS_COMMIT (its submodule at that commit)
  pins=$(python3 -c "from core.fa3_build import PINNED_COMMIT as a, CUTLASS_COMMIT as b; print(a, b)")
  git --git-dir="$FA_GIT" archive "${pins% *}" hopper csrc/flash_attn/src README.md | tar -x -C .fa3src/flash-attention
  git --git-dir="$CUTLASS_GIT" archive "${pins#* }" include tools/util/include | tar -x -C .fa3src/cutlass
fi
rm -rf .head && mkdir .head && git archive HEAD | tar -x -C .head
echo "prepared: $(ls .whl | grep -c whl) wheels, .fa3src $(du -sh .fa3src 2>/dev/null | cut -f1), .head at $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (uncommitted changes are not in it)')"
