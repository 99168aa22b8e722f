"""The edge bundle's browser page in headless Chromium: the Python edge scorer's scores and errors, row for row.

The bundle folder is served by a local http.server (WASM needs http, not file://); Chromium is driven over
its DevTools protocol with aiohttp's websocket client. Needs `scripts/system-deps.sh web` (Chromium) and
`npm install --no-package-lock` (onnxruntime-web); without them the tests skip, except under CI.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from fraudserve.edge import browser
from fraudserve.edge.bundle import TOLERANCE, export_bundle
from fraudserve.edge.cli import main as edge_main
from fraudserve.edge.parity import reference_scores
from fraudserve.edge.scorer import EdgeBundle, InvalidRow
from fraudserve.local import load_local
from models.transactions import generate_transactions

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Waits for the page's module to define window.edgeDone, then for it; errors come back as {"error": ...}.
_DONE = """new Promise(ok => { const wait = () => window.edgeDone
    ? ok(window.edgeDone.then(r => ({results: r}), e => ({error: `${e.name}: ${e.message}`})))
    : setTimeout(wait, 50); wait(); })"""


def _require(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing (scripts/test.sh installs it)")
        pytest.skip(f"{what} is missing: bash scripts/system-deps.sh web && npm install --no-package-lock")


class Chromium:
    """Headless Chromium with its DevTools endpoint; one tab per page opened."""

    def __init__(self, executable: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="fraud-chromium-")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1300"]
        self.process = subprocess.Popen(
            [executable, *flags, "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.is_file() and active.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.1)
        self.endpoint = f"http://127.0.0.1:{int(active.read_text().split()[0])}"

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, url: str) -> Page:
        return asyncio.run(self._open(url))

    async def _open(self, url: str) -> Page:
        async with aiohttp.ClientSession() as session:
            response = await session.put(f"{self.endpoint}/json/new?{url}")
            target = await response.json()
        return Page(self.endpoint, target["id"], target["webSocketDebuggerUrl"])


class Page:
    def __init__(self, endpoint: str, target: str, websocket: str) -> None:
        self.endpoint, self.target, self.websocket = endpoint, target, websocket

    def evaluate(self, expression: str, timeout: float = 90) -> Any:
        """The value of ``expression`` (awaited) in the page; retried while the page is still navigating."""
        deadline = time.monotonic() + timeout
        while True:
            reply = asyncio.run(
                self._call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
            )
            # A protocol error here means no page context yet (or it went away with the first navigation).
            if "error" in reply and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            result = reply.get("result", {})
            if "error" in reply or "exceptionDetails" in result:
                raise AssertionError(f"evaluate failed: {reply}")
            return result["result"].get("value")

    def done(self) -> dict[str, Any]:
        value: dict[str, Any] = self.evaluate(_DONE)
        return value

    def screenshot(self, path: Path) -> None:
        import base64

        reply = asyncio.run(self._call("Page.captureScreenshot", format="png", captureBeyondViewport=True))
        path.write_bytes(base64.b64decode(reply["result"]["data"]))

    def close(self) -> None:
        async def close() -> None:
            async with aiohttp.ClientSession() as session:
                await session.get(f"{self.endpoint}/json/close/{self.target}")

        asyncio.run(close())

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=120)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.ws_connect(self.websocket, max_msg_size=0) as ws,
        ):
            await ws.send_json({"id": 1, "method": method, "params": params})
            async for message in ws:
                reply: dict[str, Any] = json.loads(message.data)
                if reply.get("id") == 1:
                    return reply
        raise AssertionError(f"no reply to {method}")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site(trained: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A served folder with a full and a compact bundle, each with its page; yields (folder, base URL)."""
    _require(browser.DEFAULT_ORT_DIR.is_dir(), f"onnxruntime-web ({browser.DEFAULT_ORT_DIR})")
    spec, local = load_local(version=trained)
    root = tmp_path_factory.mktemp("edge-web")
    for variant in ("full", "compact"):
        export_bundle(
            spec,
            local.estimators,
            root / variant,
            variant=variant,  # type: ignore[arg-type]
            parity_n=1_000,
            web=browser.WebOptions(),
        )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    _require(CHROMIUM is not None, "chromium")
    assert CHROMIUM is not None
    running = Chromium(CHROMIUM)
    try:
        yield running
    finally:
        running.close()


def _records(n: int, seed: int) -> list[dict[str, Any]]:
    frame = generate_transactions(n, seed=seed).drop(columns="is_fraud")
    records: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return records


def _score_in_page(chromium: Chromium, site: tuple[Path, str], bundle: str, records: list[Any]) -> dict[str, Any]:
    root, url = site
    name = f"rows-{len(list(root.glob('rows-*.json')))}.json"
    (root / name).write_text(json.dumps(records))
    page = chromium.open(f"{url}/{bundle}/index.html?rows=../{name}")
    try:
        outcome = page.done()
        outcome["errors_shown"] = page.evaluate(
            "[...document.querySelectorAll('#results td.error')].map(td => td.textContent)"
        )
        outcome["status"] = page.evaluate("document.getElementById('status').textContent")
    finally:
        page.close()
    return outcome


@pytest.mark.parametrize("variant", ["full", "compact"])
def test_page_scores_equal_the_python_edge_scorer(
    variant: str, site: tuple[Path, str], chromium: Chromium, trained: str
) -> None:
    records = _records(600, seed=77)
    outcome = _score_in_page(chromium, site, variant, records)
    assert "error" not in outcome, outcome
    web = outcome["results"]
    bundle = EdgeBundle(site[0] / variant)
    expected = bundle.predictions(bundle.encode(records))
    assert len(web) == len(expected)
    tolerance = TOLERANCE[variant]  # type: ignore[index]
    diffs = {
        "ensemble": max(
            abs(w["fraud_probability"] - e["fraud_probability"]) for w, e in zip(web, expected, strict=True)
        )
    }
    for member in bundle.members:
        diffs[member] = max(abs(w["scores"][member] - e["scores"][member]) for w, e in zip(web, expected, strict=True))
    print(f"{variant}: page vs edge_scorer.py, max abs diff on {len(records)} rows: {diffs}")
    assert max(diffs.values()) <= tolerance, diffs
    assert [w["is_fraud"] for w in web] == [e["is_fraud"] for e in expected]
    assert {w["model_version"] for w in web} == {trained}
    assert {w["threshold"] for w in web} == {bundle.threshold}
    assert all(set(w) == {"fraud_probability", "is_fraud", "threshold", "scores", "model_version"} for w in web)

    # ...and against scikit-learn itself, the check `fraud-edge verify` makes.
    spec, local = load_local(version=trained)
    matrix = bundle.encode(records)
    reference = reference_scores({m: local.estimators[m] for m in spec.members}, matrix)
    for member in spec.members:
        got = np.array([w["scores"][member] for w in web])
        np.testing.assert_allclose(got, reference[member], rtol=0, atol=tolerance, err_msg=member)
    probabilities = np.array([w["fraud_probability"] for w in web])
    np.testing.assert_allclose(probabilities, spec.combine(reference), rtol=0, atol=tolerance)


def test_page_rejects_bad_rows_naming_the_field_like_the_python_scorer(
    site: tuple[Path, str], chromium: Chromium
) -> None:
    good = _records(2, seed=3)
    bad: list[Any] = [
        {**good[0], "merchant_category": "casino"},
        {k: v for k, v in good[0].items() if k != "amount"},
        {**good[0], "amount": "12"},
        {**good[0], "colour": "red"},
        {**good[0], "hour": 3.5},
        {**good[0], "amount": -1},
        {**good[0], "card_present": "yes"},
        {**good[0], "txn_count_1h": None},
        7,
    ]
    records = [good[0], *bad, good[1]]
    outcome = _score_in_page(chromium, site, "full", records)
    web = outcome["results"]
    bundle = EdgeBundle(site[0] / "full")
    for index, record in enumerate(records):
        try:
            expected = bundle.predictions(bundle.encode([record]))[0]
        except InvalidRow as exc:
            field = exc.field.partition(".")[2] or None
            assert web[index] == {"index": index, "error": "invalid_input", "field": field, "message": exc.message}
            continue
        assert abs(web[index]["fraud_probability"] - expected["fraud_probability"]) <= TOLERANCE["full"]
    assert [r.get("field") for r in web[1:-1]] == [
        "merchant_category",
        "amount",
        "amount",
        "colour",
        "hour",
        "amount",
        "card_present",
        "txn_count_1h",
        None,
    ]
    shown = outcome["errors_shown"]
    assert len(shown) == len(bad)
    assert shown[0].startswith("invalid_input: merchant_category: unknown category 'casino'")
    assert shown[3] == "invalid_input: colour: unknown field"
    assert outcome["status"] == f"{len(records)} transactions: 2 scored, {len(bad)} rejected"


def test_page_scores_its_form(site: tuple[Path, str], chromium: Chromium) -> None:
    record = _records(1, seed=21)[0]
    page = chromium.open(f"{site[1]}/full/index.html")
    try:
        page.done()
        fill = "\n".join(
            f"form.elements[{name!r}].{'checked' if isinstance(value, bool) else 'value'} = {json.dumps(value)};"
            for name, value in record.items()
        )
        click = "document.getElementById('score-form').click();"
        results = "window.lastRun.then(() => document.getElementById('results-json').textContent)"
        scored = json.loads(page.evaluate(f"const form = document.getElementById('form'); {fill} {click} {results}"))
        missing = json.loads(page.evaluate(f"form.elements['amount'].value = ''; {click} {results}"))
    finally:
        page.close()
    bundle = EdgeBundle(site[0] / "full")
    expected = bundle.predictions(bundle.encode([record]))[0]
    assert abs(scored[0]["fraud_probability"] - expected["fraud_probability"]) <= TOLERANCE["full"]
    assert missing == [{"index": 0, "error": "invalid_input", "field": "amount", "message": "field is required"}]


def test_page_refuses_a_tampered_member(site: tuple[Path, str], chromium: Chromium) -> None:
    root, _ = site
    shutil.copytree(root / "full", root / "tampered")
    with (root / "tampered" / "members" / "hgb.onnx").open("ab") as fh:
        fh.write(b"\0")
    outcome = _score_in_page(chromium, site, "tampered", _records(3, seed=1))
    assert (
        outcome["error"] == "BundleError: members/hgb.onnx does not match its sha256 in the manifest; refusing to load"
    )
    assert "does not match its sha256" in outcome["status"]


def test_cli_export_web_with_runtime_loaded_from_a_given_path(
    trained: str, site: tuple[Path, str], chromium: Chromium, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = site
    shutil.copytree(browser.DEFAULT_ORT_DIR, root / "ort", ignore=shutil.ignore_patterns("*.map"))
    out = root / "remote-ort"
    argv = ["export", "--out", str(out), "--version", trained, "--parity-rows", "500", "--ort-url", "/ort/"]
    assert edge_main(argv) == 0
    assert "browser page" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["web"]["ort_url"] == "/ort/"
    assert {"index.html", "web/edge_scorer.mjs"} <= set(manifest["files"])
    assert not any(name.startswith("web/ort/") for name in manifest["files"])
    records = _records(50, seed=4)
    outcome = _score_in_page(chromium, site, "remote-ort", records)
    assert "error" not in outcome, outcome
    bundle = EdgeBundle(out)
    expected = bundle.predictions(bundle.encode(records))
    np.testing.assert_allclose(
        [w["fraud_probability"] for w in outcome["results"]],
        [e["fraud_probability"] for e in expected],
        rtol=0,
        atol=TOLERANCE["full"],
    )


def test_web_files_are_covered_by_the_manifest(site: tuple[Path, str]) -> None:
    root = site[0] / "full"
    manifest = json.loads((root / "manifest.json").read_text())
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    assert {"index.html", "web/edge_scorer.mjs", *(f"web/ort/{name}" for name in browser.ORT_FILES)} <= files
    assert (
        manifest["web"]["onnxruntime_web"]
        == json.loads((browser.DEFAULT_ORT_DIR.parents[2] / "package.json").read_text())["dependencies"][
            "onnxruntime-web"
        ]
    )
