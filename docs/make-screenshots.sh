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

"${PYTHON:-python3}" -m cookiecutter "$repo" --no-input --output-dir "$work"
cd "$work"/*/
export UV_PYTHON_DOWNLOADS=never
uv sync --quiet
test=test_a_new_user_signs_up_and_watches_a_reply_stream_in
uv run pytest -m e2e -q "tests/e2e/test_streaming.py::$test"

mkdir -p "$repo/docs/screenshots"
cp "test-results/e2e/$test-streaming.png" "$repo/docs/screenshots/streaming.png"
cp "test-results/e2e/$test.png" "$repo/docs/screenshots/complete.png"
echo "Wrote docs/screenshots/streaming.png and docs/screenshots/complete.png"
