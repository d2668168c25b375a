#!/usr/bin/env bash
# Run HERE, on the CPU machine, right before the device call: puts what the device image lacks into
# the git-ignored folder .gpu_carry/ (the call must carry it):
#   .gpu_carry/site/ml_collections   pure Python, needed by jkd.config (absl-py, PyYAML are on the image)
# Then:  run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_carry"], timeout_s=560)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu_carry/' "$exclude" 2>/dev/null || echo '/.gpu_carry/' >> "$exclude"
rm -rf .gpu_carry
mkdir -p .gpu_carry/site
cp -r "$(python -c 'import ml_collections, os; print(os.path.dirname(ml_collections.__file__))')" .gpu_carry/site/
find .gpu_carry -name __pycache__ -prune -exec rm -rf {} +
git status --porcelain --ignored .gpu_carry | head -2
du -sh .gpu_carry
