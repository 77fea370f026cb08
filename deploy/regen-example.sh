#!/usr/bin/env bash
# Regenerates the commented [detect]/[heal] part of sentinel.example.toml from the built-in
# defaults (`sentinel config show`); the hand-written part up to the marker line is kept.
set -euo pipefail
cd "$(dirname "$0")"
bin=${1:-../target/release/sentinel}
marker='# Docker reports unhealthy (as docker-autoheal does).'
line=$(grep -nF -- "$marker" sentinel.example.toml | cut -d: -f1)
{
    head -n "$line" sentinel.example.toml
    echo
    "$bin" config show | sed -n '/^\[detect\]/,$p' | sed -e 's/^\(.\)/# \1/'
} > sentinel.example.toml.new
mv sentinel.example.toml.new sentinel.example.toml
