# Sourced by .ci/device-like-tests (venvs on this host) and .ci/board-tests (venvs on the emulated aarch64 board):
# the runtime tests as a device runs them, in one place.
#
#   suite_prepare WORK   fixture bundles built with the full install (.venv) into WORK/bundles, and a copy of
#                        tests/ with its own pytest.ini in WORK: the tests run from there, outside the repo, because
#                        from the repo root its liteship/ folder would shadow the installed package and hide a
#                        broken install.
#   SUITE_PYTEST         the pytest arguments, to run from WORK with LITESHIP_TEST_BUNDLES=WORK/bundles.

suite_prepare() {
    local work=$1
    echo "== building fixture bundles with the full install"
    .venv/bin/python -m tests.fixture_bundles "$work/bundles"
    cp -r tests "$work/tests"
    cat > "$work/pytest.ini" <<'INI'
[pytest]
markers =
    slow: slow
    device: real device
    backend: backend
INI
}

SUITE_PYTEST=(-m pytest -q -p no:cacheprovider tests/runtime -m "not slow" -k "not needs_convert")
