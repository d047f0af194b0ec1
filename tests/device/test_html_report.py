"""`liteship report`: the HTML page opened in a real headless Chromium (Debian's, installed by .ci/chromium): it
renders its tables and SVG plots with no console message (the page has no script, so any console line is an error
or a blocked request), and a screenshot is kept as a test artifact. Also the Markdown and the error paths."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from liteship.device.bench import BenchSettings
from liteship.device.budget import load_budget
from liteship.device.check import run_check

ARTIFACTS = Path(os.environ.get("LITESHIP_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed but CI=true: .ci/run must run .ci/chromium")
        pytest.skip("chromium is not installed (bash .ci/chromium installs Debian's)")
    return found


def open_in_chromium(page: Path, tmp_path: Path, *extra: str) -> tuple[str, list[str]]:
    """(DOM after load, console messages) of ``page`` in a fresh headless profile."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    res = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    return res.stdout, console


def phone_bench_document(check_doc: dict) -> dict:
    """A liteship.device-bench/1 document as a phone returns it for a GPT-2 bundle: thermal zones, CPU
    frequencies, tok/s by context and a sustained run (made here from the local cell's real latency samples)."""
    local = next(c for c in check_doc["cells"] if c["ok"])
    entry = copy.deepcopy(local["entry"])
    entry["target"] = "adb:PHONE"
    entry["device"] = dict(entry["device"] or {}, model="Pixel 7", soc="gs201", abi="arm64-v8a")
    entry["run"]["thermal_before"] = [{"zone": "cpu", "temp_c": 31.5}]
    entry["run"]["thermal_after"] = [{"zone": "cpu", "temp_c": 44.0}]
    entry["run"]["freq_before"] = [{"cpu": "cpu7", "cur_khz": 2850000, "max_khz": 2850000}]
    entry["run"]["freq_after"] = [{"cpu": "cpu7", "cur_khz": 1950000, "max_khz": 2850000}]
    entry["bench"]["generation"] = {"decode_tok_s": 21.0, "prefill_tok_s": 180.0, "max_context": 1024,
                                    "decode_tok_s_by_context": {"32": 25.0, "128": 24.0, "256": 21.0, "1024": 15.0}}
    entry["bench"]["sustained"] = {"points": [{"t_s": 30.0 * i, "runs_per_s": 100.0 - 3 * i,
                                               "max_temp_c": 35.0 + 2 * i} for i in range(8)]}
    return {"schema": "liteship.device-bench/1", "created": "2026-12-01T00:00:00Z",
            "bundle": {"path": "gpt2-int8", "name": "gpt2-int8", "model_size_bytes": 130_000_000},
            "settings": {}, "host": {}, "results": [entry]}


@pytest.fixture(scope="module")
def results(fixture_bundles, tmp_path_factory):
    """Real check results (two classifier variants on this host, one failing device) and a phone's bench JSON."""
    root = tmp_path_factory.mktemp("report")
    (root / "budget.toml").write_text("max_p90_ms = 1000\nmax_file_size_mb = 0.006\n")
    inputs = []
    for q in ("fp32", "int8"):
        shutil.copytree(fixture_bundles / f"classifier-{q}", root / f"clf-{q}")
        inputs.append(str(root / f"clf-{q}"))
    doc = run_check(inputs, load_budget(root / "budget.toml"), devices=["local", "ssh:nobody@127.0.0.1:9"],
                    quants=[], results_dir=root / "check", settings=BenchSettings(runs=20, warmup=2, threads=1))
    (root / "phone.json").write_text(json.dumps(phone_bench_document(doc)))
    return root


def run_cli(*args):
    return subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium_with_no_console_errors(results, tmp_path):
    html, md = tmp_path / "report.html", tmp_path / "report.md"
    res = run_cli("report", str(results / "check"), str(results / "phone.json"), "--html", str(html), "--md", str(md))
    assert res.returncode == 0, res.stderr
    text = html.read_text()
    # Self-contained: no URL but the SVG namespace name (an identifier, never fetched); no script at all.
    assert set(re.findall(r"https?://[^\s\"'<>)]+", text)) <= {"http://www.w3.org/2000/svg"}
    assert "<script" not in text.lower()

    dom, console = open_in_chromium(html, tmp_path, "--dump-dom")
    assert console == [], console
    assert "<title>liteship report</title>" in dom
    assert dom.count("<table") >= 2 and dom.count("<svg") >= 5  # budget + devices; latency, scatter, tok/s, 2 sustained
    for heading in ("Budget", "Latency distributions", "Size vs latency vs quality", "GPT-2 decode speed by context",
                    "Sustained runs", "Devices", "Devices that failed"):
        assert f"<h2>{heading}</h2>" in dom, heading
    assert "clf-int8 @ local" in dom and "adb:PHONE" in dom and "31.5 / 44.0" in dom and "2850-2850 / 1950-1950" in dom
    assert 'class="fail"' in dom and 'class="pass"' in dom  # the fp32 file is over 0.006 MB, int8 under

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    _, console = open_in_chromium(html, tmp_path, f"--screenshot={shot}", "--window-size=1200,2400")
    assert console == [] and shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a page of tables and plots, not a blank one
    shutil.copy(html, ARTIFACTS / "report.html")

    markdown = md.read_text()
    assert "| clf-fp32 | local | FAIL |" in markdown and "| clf-int8 | local | pass |" in markdown
    assert "| gpt2-int8 | adb:PHONE | 130.00 |" in markdown and "connection refused" in markdown


def test_the_console_check_sees_errors_and_blocked_requests(tmp_path):
    """The test above would pass on any page if Chromium's console never reached us: show that it does."""
    from liteship.device.html_report import CSP

    page = tmp_path / "bad.html"
    page.write_text(f'<html><head><meta http-equiv="Content-Security-Policy" content="{CSP}"></head><body>'
                    '<img src="https://example.invalid/plot.png"></body></html>')
    _, console = open_in_chromium(page, tmp_path, "--dump-dom")
    assert any("example.invalid" in line and "Content Security Policy" in line for line in console), console


def test_bad_results_are_one_line_and_keep_old_outputs(results, tmp_path):
    html = tmp_path / "report.html"
    html.write_text("old")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something/9"}))
    res = run_cli("report", str(results / "check"), str(bad), "--html", str(html))
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"error: {bad}: schema 'something/9' is neither")
    assert html.read_text() == "old" and not list(tmp_path.glob(".report.html*"))
    bad.write_text("{not json")
    res = run_cli("report", str(bad), "--md", str(tmp_path / "r.md"))
    assert res.returncode == 1 and res.stderr.startswith(f"error: {bad}: cannot read it as results")
    res = run_cli("report", str(results / "check"))  # no --html/--md: Markdown on stdout
    assert res.returncode == 0 and res.stdout.startswith("## liteship report")
