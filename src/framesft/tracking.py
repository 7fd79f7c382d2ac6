"""Experiment tracking (W&B, TensorBoard). Tracking must never make training fail."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from .config import FrameSFTConfig

log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def start_tracking(config: FrameSFTConfig, run_dir: Path, is_main_process: bool = True) -> list[str]:
    """Start the configured trackers and return the `report_to` list for the trainer.

    W&B runs offline (files under <run>/wandb, `wandb sync` uploads them later) when there is no API key or
    the service cannot be reached; if even that fails, W&B is dropped with a warning.
    """
    targets = [t for t in config.tracking.report_to if t != "none"]
    if "tensorboard" in targets:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if "wandb" in targets and is_main_process and not _start_wandb(config, run_dir):
        targets.remove("wandb")
    return targets


def _start_wandb(config: FrameSFTConfig, run_dir: Path) -> bool:
    try:
        import wandb
    except ImportError:
        log.warning("W&B requested but the wandb package is not installed; continuing without it")
        return False
    os.environ["WANDB_PROJECT"] = config.tracking.project
    mode = "online" if wandb_has_credentials() and os.environ.get("WANDB_MODE") != "offline" else "offline"
    if mode == "offline":
        log.warning("W&B: no API key found, logging offline to %s/wandb; upload later with "
                    "`wandb sync %s/wandb/offline-run-*`", run_dir, run_dir)
    for attempt in (mode, "offline"):
        try:
            wandb.init(
                project=config.tracking.project,
                name=config.run_name(),
                config=config.model_dump(mode="json"),
                dir=str(run_dir),
                mode=attempt,
                settings=wandb.Settings(init_timeout=60, silent=True),
            )
            os.environ["WANDB_MODE"] = attempt  # the trainer's callback must not start a second, online run
            return True
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not stop training
            log.warning("W&B %s start failed (%s)", attempt, exc)
    return False


def log_final_metrics(metrics_by_split: dict[str, dict]) -> None:
    """Final metrics, per-class table and confusion matrix as W&B objects (when a W&B run is active)."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is None:
        return
    try:
        for split, metrics in metrics_by_split.items():
            wandb.run.summary.update({f"{split}/{k}": v for k, v in metrics.items() if isinstance(v, float)})
            rows = [[label, s["precision"], s["recall"], s["f1"], s["support"]]
                    for label, s in metrics["per_class"].items()]
            table = wandb.Table(columns=["label", "precision", "recall", "f1", "support"], data=rows)
            matrix = wandb.Table(columns=["true", "predicted", "count"], data=[
                [metrics["labels"][i], metrics["labels"][j], count]
                for i, row in enumerate(metrics["confusion_matrix"]) for j, count in enumerate(row)])
            wandb.log({f"{split}/per_class": table, f"{split}/confusion_matrix": matrix})
    except Exception as exc:  # noqa: BLE001
        log.warning("W&B logging of final metrics failed (%s)", exc)


def finish_tracking() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception as exc:  # noqa: BLE001
        log.warning("W&B finish failed (%s)", exc)
