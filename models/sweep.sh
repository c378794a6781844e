#!/usr/bin/env bash
# The small sweep behind the default model's settings (see models/celeba-64/README.md).
# Each setting trains for a few epochs on the shared CelebA subset and is exported to a bundle
# under runs/, whose manifest and report.png hold the figures the model card compares.
set -euo pipefail
DATA=${DATA:-../shared/data/celeba_subset}
EPOCHS=${EPOCHS:-6}
for kl in 5e-5 2e-4 8e-4; do
    python -m training train --data "$DATA" --epochs "$EPOCHS" --kl-weight "$kl" \
        --name "sweep-kl$kl" --run-dir "runs/sweep-kl$kl" --out "runs/sweep-kl$kl/bundle"
done
