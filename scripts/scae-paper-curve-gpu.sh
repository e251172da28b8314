#!/usr/bin/env bash
# The SCAE's paper preset trained on a GPU for at most an hour (or $SECONDS_LIMIT), its four heads
# evaluated every 5,025 steps (leaderboards/scae-mnist-paper-curve.toml). Stopped at the limit, the
# run keeps every finished point and the training's last checkpoint: run the script again to go on.
#   bash scripts/scae-paper-curve-gpu.sh [DATA_DIR]     (default ../shared/datasets/mnist-9k)
set -uo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-../shared/datasets/mnist-9k}
suite=leaderboards/scae-mnist-paper-curve.toml
# A checkpoint every 5 minutes; SIGINT at the limit stops the run as Ctrl-C does (rows kept).
timeout --signal=INT "${SECONDS_LIMIT:-3600}" harness run "$suite" --data-dir "$data_dir" \
    --device "${DEVICE:-cuda}" --checkpoint-every 5 --no-progress
status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$status" -ne 130 ]; then
    exit "$status"
fi
harness show "${suite%.toml}.csv"
