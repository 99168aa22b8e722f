"""fraud-edge: export the served ensemble as an ONNX bundle that scores offline (numpy + onnxruntime).

examples:
  fraud-edge export --out dist/edge                       # latest models, float64 (exact)
  fraud-edge export --out dist/edge-compact --variant compact --version v20250101-...
  fraud-edge export --out dist/edge --web                 # + index.html: scores in a browser (onnxruntime-web)
  fraud-edge verify dist/edge --rows 20000                # parity vs the in-process scikit-learn models
  fraud-edge score dist/edge < transactions.jsonl         # = python dist/edge/edge_scorer.py dist/edge

exit status: 0 done, 1 parity outside tolerance, 2 bad input/usage or refused export, 3 models unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fraudserve.edge.scorer import BundleError
from fraudserve.errors import FraudServeError, ModelStoreError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fraud-edge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write an edge bundle from the model store")
    export.add_argument("--out", type=Path, required=True, help="bundle folder to create")
    export.add_argument("--version", help="ensemble version in the store (default: FRAUD_MODEL_VERSION, latest)")
    export.add_argument("--variant", choices=("full", "compact"), default="full", help="default: full")
    export.add_argument("--parity-rows", type=int, default=4_000, help="rows checked before the bundle is written")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    export.add_argument("--web", action="store_true", help="add the browser page (index.html, onnxruntime-web)")
    export.add_argument(
        "--ort-dir", type=Path, help="onnxruntime-web's dist/ folder to copy (default: node_modules at the repo root)"
    )
    export.add_argument(
        "--ort-url",
        help="let the page load onnxruntime-web from this URL or path instead of copying it (implies --web)",
    )
    verify = sub.add_parser("verify", help="check a bundle's files and its parity with the served models")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--rows", type=int, default=10_000, help="generated rows to compare (default 10000)")
    score = sub.add_parser("score", help="score JSON lines with a bundle (the bundle's own edge_scorer.py)")
    score.add_argument("bundle", type=Path)
    score.add_argument("--input", type=Path, help="JSON lines file (default: stdin)")
    score.add_argument("--output", type=Path, help="JSON lines file (default: stdout)")
    score.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "score":
        from fraudserve.edge import scorer

        # The same code path a device runs: the scorer reads its arguments like on the command line.
        forwarded = [str(args.bundle), "--threads", str(args.threads)]
        for flag in ("input", "output"):
            if getattr(args, flag):
                forwarded += [f"--{flag}", str(getattr(args, flag))]
        return scorer.main(forwarded)
    try:
        if args.command == "export":
            return _export(args)
        return _verify(args)
    except ModelStoreError as exc:
        print(f"fraud-edge: {exc.message}", file=sys.stderr)
        return 3
    except (FraudServeError, BundleError) as exc:
        print(f"fraud-edge: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2


def _export(args: argparse.Namespace) -> int:
    from fraudserve.edge.browser import DEFAULT_ORT_DIR, WebOptions
    from fraudserve.edge.bundle import bundle_size, export_bundle
    from fraudserve.local import load_local

    web = None
    if args.web or args.ort_dir or args.ort_url:
        web = WebOptions(ort_dir=args.ort_dir or DEFAULT_ORT_DIR, ort_url=args.ort_url)
    spec, local = load_local(version=args.version)
    manifest, parity = export_bundle(
        spec,
        local.estimators,
        args.out,
        variant=args.variant,
        parity_n=args.parity_rows,
        overwrite=args.overwrite,
        web=web,
    )
    sizes = bundle_size(args.out)
    print(f"exported {spec.prefix} {spec.version} ({args.variant}) to {args.out}")
    for member, info in manifest["members"].items():
        print(f"  {member:9s} {info['estimator']:32s} {sizes[info['file']]:>9,d} bytes  {info['input_dtype']}")
    print(f"  parity on {parity.rows} rows: {_diffs(parity.max_abs_diff)} (tolerance {parity.tolerance:g})")
    if "web" in manifest:
        page = manifest["web"]
        runtime = f"onnxruntime-web {page['onnxruntime_web']}" if page["onnxruntime_web"] else "onnxruntime-web"
        print(
            f"  browser page {args.out / page['page']}: {runtime} from {page['ort_url']} (serve the folder over http)"
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from fraudserve.edge.bundle import verify_bundle
    from fraudserve.edge.scorer import EdgeBundle
    from fraudserve.local import load_local

    version = EdgeBundle(args.bundle).version
    spec, local = load_local(version=version)
    parity = verify_bundle(args.bundle, spec, local.estimators, args.rows)
    print(json.dumps({"bundle": str(args.bundle), "model_version": version, **parity.to_dict()}, indent=2))
    if not parity.ok:
        print(f"fraud-edge: parity outside tolerance {parity.tolerance:g}", file=sys.stderr)
        return 1
    return 0


def _diffs(diffs: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2g}" for k, v in diffs.items())
