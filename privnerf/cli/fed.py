"""``privnerf fed run --data CROWD --aggregator {learned,fedavg,fednerf,centralized,oracle,dac} --rounds M
--local-epochs G --engine simulation|deployment [--insecure]``; every field of :class:`privnerf.fed.config.FedConfig` is a flag."""

from __future__ import annotations

import sys

import tyro

from privnerf.fed.config import FedConfig


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: privnerf fed run --data CROWD [--aggregator A] [--rounds M] [--local-epochs G] ...\n"
              "       privnerf fed run --help   (all options)")
        return 0 if argv else 2
    if argv[0] != "run":
        print(f"error: unknown fed command {argv[0]!r} (expected 'run')", file=sys.stderr)
        return 2
    import logging

    # Flower logs every SecAgg+ stage at DEBUG and Ray warns per actor; keep the console to progress lines
    logging.getLogger("flwr").setLevel(logging.INFO)
    cfg = tyro.cli(FedConfig, args=argv[1:], prog="privnerf fed run",
                   description="Federated NeRF training on Flower (DecentNeRF and baselines).")
    if not cfg.data:
        print("error: --data is required (a crowd dataset: privnerf data crowd --out DIR)", file=sys.stderr)
        return 2
    if cfg.engine == "deployment":
        from privnerf.fed.deploy import run_deployment

        results = run_deployment(cfg)
    else:
        from privnerf.fed.run import run_federated

        results = run_federated(cfg)
    print(f"global PSNR {results['psnr']:.2f} dB  SSIM {results['ssim']:.3f}  LPIPS {results['lpips']:.3f}  "
          f"leakage {results['leakage_psnr']:.2f} dB  server FLOPs {results['server_flops']:.3g}")
    print(f"results: {results['run_dir']}/results.json  rounds: {results['run_dir']}/rounds.jsonl")
    if results.get("report"):
        print(f"report: {results['report']}")
    return 0
