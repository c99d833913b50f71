#!/usr/bin/env bash
# Copy manifests/base into the chart (charts/bindha-rwx/base/): Helm reads only files
# inside a chart. The manifests stay the one source; tests/kube/test_chart.py fails when
# the copy differs, and when the chart renders other objects than kustomize does.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf charts/bindha-rwx/base
mkdir -p charts/bindha-rwx/base
for f in manifests/base/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] && continue
  cp "$f" charts/bindha-rwx/base/
done
echo "charts/bindha-rwx/base: $(ls charts/bindha-rwx/base | wc -l) files from manifests/base"
