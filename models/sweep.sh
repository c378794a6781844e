#!/usr/bin/env bash
# The small sweep behind the default model's settings (see models/celeba-64/README.md).
# Each setting trains for a few epochs on the shared CelebA subset and is exported to a bundle
# under runs/, whose manifest and card/figures.json hold the figures the model card compares.
set -euo pipefail
DATA=${DATA:-../shared/data/celeba_subset}
EPOCHS=${EPOCHS:-4}
for setting in "128 5e-5" "128 2e-4" "64 5e-5"; do
    read -r z kl <<< "$setting"
    name="sweep-z$z-kl$kl"
    python -m training train --data "$DATA" --epochs "$EPOCHS" --z-dim "$z" --kl-weight "$kl" \
        --name "$name" --run-dir "runs/$name" --out "runs/$name/bundle"
    python -m training card --data "$DATA" --bundle "runs/$name/bundle"
done
