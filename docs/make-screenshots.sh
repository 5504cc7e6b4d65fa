#!/usr/bin/env bash
# Retakes the README's screenshots in docs/screenshots/: generates the default project, runs
# the end-to-end tests that take them (Debian's Chromium against the real server, offline
# demo model) and copies what they saved: a reply streaming and finished at desktop width,
# the phone layout with its drawer, and dark mode.
# Needs cookiecutter and uv (pip install -r requirements-dev.txt), chromium and npm.
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
npm ci --silent --no-audit --no-fund
streaming=test_a_new_user_signs_up_and_watches_a_reply_stream_in
uv run pytest -m e2e -q "tests/e2e/test_streaming.py::$streaming" \
    "tests/e2e/test_ui.py::test_a_reply_is_formatted_while_it_streams_and_ends_without_a_jump" \
    "tests/e2e/test_ui.py::test_on_a_phone_a_drawer_holds_new_chat_the_list_and_log_out_and_nothing_overflows" \
    "tests/e2e/test_ui.py::test_dark_mode_follows_the_system_and_a_chosen_theme_persists" \
    "tests/e2e/test_ui.py::test_axe_finds_no_serious_or_critical_violations_on_login_sign_up_and_chat"

shots="$repo/docs/screenshots"
mkdir -p "$shots"
cp "test-results/e2e/$streaming-streaming.png" "$shots/streaming.png"
cp test-results/e2e/desktop.png "$shots/desktop.png"
cp test-results/e2e/phone.png "$shots/phone.png"
cp test-results/e2e/phone-drawer.png "$shots/phone-drawer.png"
cp test-results/e2e/dark.png "$shots/dark.png"
cp test-results/e2e/dark-empty.png "$shots/dark-empty.png"
echo "Wrote docs/screenshots/: streaming, desktop, phone, phone-drawer, dark, dark-empty"
