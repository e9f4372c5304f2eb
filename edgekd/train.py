"""`edgekd train`: fit a detector's student on normal images, calibrate its threshold, write the checkpoint.

The teacher is frozen and sees each image unchanged every epoch, so its features are computed once and
cached; each epoch then only runs (and back-propagates through) the student.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekd.calibration import ADVISED_NORMAL, MIN_NORMAL, ThresholdRule, score_statistics, thresholds_from_normal
from edgekd.checkpoint import build_model, read_checkpoint, save_checkpoint
from edgekd.data.augment import augment_batch, check_augment
from edgekd.data.images import to_model_input
from edgekd.data.layouts import load_dataset
from edgekd.data.loading import load_images
from edgekd.data.splits import split_normals
from edgekd.device import resolve_device
from edgekd.distributed import Rank, barrier, end_process_group, mean_over_ranks, rank_from_environment, start_process_group
from edgekd.errors import EdgekdError
from edgekd.outputs import check_output_folder, remove_stale_temps
from edgekd.progress import make_progress
from edgekd.runtime.torch_backend import TorchRuntime


@dataclass
class TrainResult:
    checkpoint: Path
    epochs: int
    final_loss: float
    seconds: float
    thresholds: dict
    device: str
    warnings: list[str]
    resumed_at: int = 0  # epochs already done when --resume picked the run up
    notes: tuple[str, ...] = ()  # what fitting the normal statistics decided, for the user (e.g. the colour gate)

    @property
    def epochs_run(self) -> int:
        return self.epochs - self.resumed_at


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC frames -> the model's (B,3,H,W) float input, on the device."""
    return torch.from_numpy(to_model_input(images)).to(device)


class TeacherFeatureCache:
    """Teacher features of the training images, kept in memory when they fit the configured budget."""

    def __init__(self, model, images: np.ndarray, device: torch.device, budget_gb: float, batch_size: int, progress):
        self.model, self.images, self.device = model, images, device
        probe = model.teacher_features(_device_batch(images[:1], device))
        per_image = sum(f[0].numel() for f in probe) * 4
        self.cached = None
        if per_image * len(images) <= budget_gb * 2**30:
            task = progress.add_task("teacher features", total=len(images))
            chunks: list[list[torch.Tensor]] = []
            for start in range(0, len(images), batch_size):
                chunks.append([f.cpu() for f in self._compute(np.arange(start, min(start + batch_size, len(images))))])
                progress.advance(task, len(chunks[-1][0]))
            self.cached = [torch.cat(parts) for parts in zip(*chunks)]

    def _compute(self, index: np.ndarray) -> list[torch.Tensor]:
        return self.model.teacher_features(_device_batch(self.images[index], self.device))

    def __call__(self, index: np.ndarray) -> list[torch.Tensor]:
        if self.cached is None:
            return self._compute(index)
        return [f[torch.from_numpy(index)].to(self.device, non_blocking=True) for f in self.cached]


class TrainingStep(torch.nn.Module):
    """One step's loss as a module's forward, so DistributedDataParallel can wrap it (the models' own forward is
    inference; training runs the student and the loss)."""

    def __init__(self, model, use_amp: bool):
        super().__init__()
        self.model, self.use_amp = model, use_amp

    def forward(self, batch: torch.Tensor, teacher_feats: list[torch.Tensor]) -> torch.Tensor:
        with torch.autocast(batch.device.type, enabled=self.use_amp):
            student_feats = self.model.student_features(batch, teacher_feats)
        return self.model.loss(teacher_feats, student_feats)


def shard_of(n: int, rank: Rank | None) -> np.ndarray:
    """The training images a rank trains on (all of them without distribution): its teacher-feature cache holds
    these only."""
    return np.arange(n) if rank is None else np.arange(rank.rank, n, rank.world)


def make_optimizer(parameters, settings: dict) -> torch.optim.Optimizer:
    """Adam (the RD family's choice) or SGD with momentum (STFPM's and MTHF's: lr 0.4, momentum 0.9)."""
    name = str(settings["optimizer"]).lower()
    if name == "adam":
        return torch.optim.Adam(parameters, lr=settings["lr"], betas=tuple(settings["betas"]),
                                weight_decay=settings["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=settings["lr"], momentum=settings["momentum"],
                               weight_decay=settings["weight_decay"])
    raise EdgekdError(f"train.optimizer '{settings['optimizer']}' is unknown: use adam or sgd")


def normal_views(fit_images: np.ndarray, augment: str, seed: int) -> np.ndarray:
    """What the statistics of normal images (a patch memory, the colour branch) are fitted on: each training image
    as stored and, when training augments, once more as a camera would deliver it (a fixed stream per seed)."""
    if augment == "none":
        return fit_images
    return np.concatenate([fit_images, augment_batch(fit_images, augment, np.random.default_rng([seed, 2**31]))])


def _batches(images: np.ndarray, batch_size: int, device: torch.device):
    """(B,3,H,W) model-input batches of uint8 NHWC images, on the device."""
    for start in range(0, len(images), batch_size):
        yield _device_batch(images[start:start + batch_size], device)


def _check_resumable(state: dict, config: dict, path: Path) -> None:
    for key in ("model", "teacher", "input_size", "model_options"):
        if state["config"].get(key) != config.get(key):
            raise EdgekdError(f"cannot resume from {path}: its {key} is {state['config'].get(key)!r}, the config says "
                              f"{config.get(key)!r}; use a new --out folder or drop --resume")


MIN_TRAIN_IMAGES = 3  # at least one to fit on and two held out to calibrate on


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Before anything is loaded: the run folder can be written, a finished model in it is not replaced unasked,
    and what a killed run left half-written is gone (a whole last.ckpt stays for --resume)."""
    check_output_folder(out, "train --out")
    remove_stale_temps(out, ["last.ckpt", "model.ckpt"])
    if not resume and not overwrite and (out / "model.ckpt").exists():
        raise EdgekdError(f"{out / 'model.ckpt'} already exists: pass --overwrite to replace it, --resume to continue "
                          f"that run, or another --out")


def train(config: dict, data: str | Path, category: str | None, out: str | Path, resume: bool = False,
          overwrite: bool = False) -> TrainResult | None:
    """Under torchrun (several ranks) every rank trains its share; rank 0 returns the result, the others None."""
    settings = config["train"]
    augment = check_augment(settings["augment"])
    seed_everything(settings["seed"])
    out = Path(out)
    rank = rank_from_environment()
    main = rank is None or rank.main
    if main:
        check_run_folder(out, resume, overwrite)
    dataset = load_dataset(data, category, seed=settings["seed"])
    device = resolve_device(settings["device"])
    if rank is not None:
        device = start_process_group(rank, device)
        barrier()  # rank 0 has checked (and cleaned) the run folder
    model = build_model(config).to(device)
    if len(dataset.train) < MIN_TRAIN_IMAGES:
        raise EdgekdError(f"{dataset.root} has {len(dataset.train)} normal training image(s); training needs at least "
                          f"{MIN_TRAIN_IMAGES} (some to fit on, others held out to set the thresholds), and dozens to "
                          "be reliable")
    fit_idx, val_idx = split_normals(len(dataset.train), settings["val_fraction"], settings["seed"])
    started = time.time()
    last_path, final_path = out / "last.ckpt", out / "model.ckpt"

    optimizer = make_optimizer(model.student_parameters(), settings)
    use_amp = bool(settings["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, epoch_loss = 0, math.nan
    if resume:
        if not last_path.is_file():
            raise EdgekdError(f"nothing to resume: {last_path} does not exist (a run writes it after its first whole "
                              "epoch; train without --resume)")
        state = read_checkpoint(last_path, resume=True)
        _check_resumable(state, config, last_path)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, epoch_loss = state["epoch"], state["loss"]
        if start_epoch >= settings["epochs"] and final_path.exists():
            raise EdgekdError(f"nothing to resume: {last_path} already has all {start_epoch} epochs and {final_path} "
                              f"is written; raise --epochs above {start_epoch} to train longer")

    with make_progress(enabled=main) as progress:
        images = load_images(dataset.train, model.input_size, progress, "load images")
        fit_images, val_images = images[fit_idx], images[val_idx]
        world = rank.world if rank is not None else 1
        own_images = fit_images if rank is None else fit_images[shard_of(len(fit_images), rank)]  # no copy alone
        # Augmented images change every step, so their teacher features cannot be cached.
        features = TeacherFeatureCache(model, own_images, device, settings["feature_cache_gb"], settings["batch_size"],
                                       progress) if augment == "none" else None
        # The configured batch is the global one: each of the world's ranks takes its share of it.
        batch_size = max(1, min(settings["batch_size"], len(fit_images)) // world)
        steps = (len(fit_images) // world) // batch_size  # equal on every rank; the ragged last batch is dropped
        if steps == 0:
            raise EdgekdError(f"{len(fit_images)} training images cannot feed {world} ranks a batch each: use fewer "
                              "ranks or more images")
        step_loss = TrainingStep(model, use_amp)
        if rank is not None:
            step_loss = torch.nn.parallel.DistributedDataParallel(
                step_loss, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        # Linear warm-up of the learning rate over the first warmup_epochs (ViTKD's SGD at lr 0.2 needs it).
        warmup_steps, done = max(1, int(settings["warmup_epochs"] * steps)), start_epoch * steps  # resumed runs
        for group in optimizer.param_groups:
            group["initial_lr"] = settings["lr"]  # the target rate, also after a resumed optimizer state
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (done + i + 1) / warmup_steps))
        task = progress.add_task("train", total=settings["epochs"] * steps, completed=start_epoch * steps,
                                 info=f"loss {epoch_loss:.4f}")
        for epoch in range(start_epoch, settings["epochs"]):
            model.train()
            streams = [settings["seed"], epoch] + ([rank.rank] if rank is not None else [])
            order = np.random.default_rng(streams).permutation(len(own_images))
            total = 0.0
            for step in range(steps):
                index = np.sort(order[step * batch_size:(step + 1) * batch_size])
                if augment == "none":
                    teacher_feats, batch = features(index), _device_batch(own_images[index], device)
                else:
                    seen = augment_batch(own_images[index], augment, np.random.default_rng([*streams[:2], step, *streams[2:]]))
                    batch = _device_batch(seen, device)
                    teacher_feats = model.teacher_features(batch)
                loss = step_loss(batch, teacher_feats)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if settings["grad_clip"]:
                    scaler.unscale_(optimizer)
                    for group in model.clip_groups():  # independent students are clipped apart
                        torch.nn.utils.clip_grad_norm_(group, settings["grad_clip"])
                scaler.step(optimizer)
                scheduler.step()
                scaler.update()
                total += loss.item()
                progress.update(task, advance=1, info=f"epoch {epoch + 1}/{settings['epochs']} loss {total / (step + 1):.4f}")
            epoch_loss = total / max(steps, 1)
            if rank is not None:  # every rank sees the same figure, so they stop (or go on) together
                epoch_loss = mean_over_ranks(epoch_loss, device)
            if not math.isfinite(epoch_loss):
                raise EdgekdError(f"training diverged at epoch {epoch + 1} (loss {epoch_loss}): lower train.lr or "
                                  "set train.grad_clip")
            if main:
                save_checkpoint(last_path, model, config, epoch=epoch + 1, loss=epoch_loss,
                                optimizer=optimizer.state_dict())
        if rank is not None:
            barrier()
            del step_loss  # the DDP wrapper holds the process group: it goes first (see end_process_group)
            end_process_group()  # rank 0 alone goes on: normal statistics, thresholds, the checkpoint
            if not main:
                return None

        # Calibrate on held-out normal images (the training images would give optimistic, too-low thresholds).
        calib = val_images if len(val_images) else fit_images
        model.eval()
        views = normal_views(fit_images, augment, settings["seed"])
        normal_stats = model.fit_normal(lambda: _batches(views, settings["batch_size"], device),
                                        lambda: _batches(calib, settings["batch_size"], device))
        calibrated = TorchRuntime(model, device=device).infer(calib, settings["batch_size"], progress, "calibrate")
        maps, scores = calibrated.maps, calibrated.scores
    thresholds = thresholds_from_normal(scores, maps, ThresholdRule.from_config(config["threshold"]))
    warnings = []
    if len(calib) < ADVISED_NORMAL:
        warnings.append(f"thresholds come from only {len(calib)} held-out normal images "
                        f"({'fewer than ' + str(MIN_NORMAL) + ': unreliable' if len(calib) < MIN_NORMAL else 'a small sample'}); "
                        f"before going live run 'edgekd calibrate {final_path} --source <a clip of good parts>' "
                        f"(or raise train.val_fraction)")
    seconds = time.time() - started
    save_checkpoint(final_path, model, config, score_stats=score_statistics(scores), thresholds=thresholds,
                    training={"epochs": settings["epochs"], "final_loss": epoch_loss, "seconds": seconds,
                              "device": str(device), "dataset": str(dataset.root), "category": dataset.category,
                              "data": str(Path(data).resolve()), "category_arg": category,
                              "layout": dataset.layout, "n_fit": len(fit_images), "n_calibration": len(calib),
                              **({"normal_fit": normal_stats} if normal_stats else {})})
    return TrainResult(final_path, settings["epochs"], epoch_loss, seconds, thresholds, str(device), warnings,
                       start_epoch, tuple(normal_stats.get("notes", ())) if normal_stats else ())
