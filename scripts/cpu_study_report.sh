#!/usr/bin/env bash
# Regenerates docs/cpu_study from the committed per-run results (docs/cpu_study/runs: metrics.json and
# analysis.json, no weights): the lr search table, the per-task and claims tables, the subspace table and figures,
# and the generated blocks of docs/cpu_study/README.md. No training, no download.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=docs/cpu_study/runs
out=docs/cpu_study
python -m subspace_tuning.study "$runs/lr_search" --lr-search --out "$out" > /dev/null
python -m subspace_tuning.analyze "$runs/study" --seeds 0 --no-write-runs --figures --out "$out" > /dev/null
python -m subspace_tuning.study "$runs/study" --out "$out" --readme "$out/README.md"
