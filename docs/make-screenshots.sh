#!/usr/bin/env bash
# Retakes docs/screenshots/streaming.png and complete.png for the README: generates the
# default project, runs its first end-to-end test (Debian's Chromium against the real
# server, offline demo model) and copies the two screenshots that test saves, one while
# the reply streams and one after it completed.
# Needs cookiecutter and uv (pip install -r requirements-dev.txt) and chromium.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Generate from what git would ship, not from caches that tools leave in the working tree.
mkdir "$work/template"
git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d "" name; do
        if [ -f "$repo/$name" ]; then (cd "$repo" && cp --parents "$name" "$work/template"); fi
    done
"${PYTHON:-python3}" -m cookiecutter "$work/template" --no-input --output-dir "$work/out"
cd "$work"/out/*/
export UV_PYTHON_DOWNLOADS=never
uv sync --quiet
test=test_a_new_user_signs_up_and_watches_a_reply_stream_in
uv run pytest -m e2e -q "tests/e2e/test_streaming.py::$test"

mkdir -p "$repo/docs/screenshots"
cp "test-results/e2e/$test-streaming.png" "$repo/docs/screenshots/streaming.png"
cp "test-results/e2e/$test.png" "$repo/docs/screenshots/complete.png"
echo "Wrote docs/screenshots/streaming.png and docs/screenshots/complete.png"
