"""Length-extension LoRA fine-tuning with radial attention.

The recipe of Radial Attention (Li et al. 2025, section 5.3): a pretrained Wan or HunyuanVideo
transformer, radial attention in every block except the first ``dense_layers`` (2), a LoRA on the
self-attention projections, trained with the model's own flow-matching objective on longer videos
than it was trained for. The radial mask's O(n log n) attention is what makes long-video steps
affordable.

Python::

    from radial_attention.train import TrainConfig, train_lora
    result = train_lora(TrainConfig(model="path/to/Wan2.1-T2V-1.3B-Diffusers", data="my_latents",
                                    output_dir="runs/wan-4x", max_steps=2000))
    # then: pipe.load_lora_weights("runs/wan-4x")

Command line: ``radial-attention train-lora --model ... --data ... --output ...``; several GPUs:
``torchrun --nproc-per-node 8 -m radial_attention train-lora ...``.
"""

from __future__ import annotations

import contextlib
import hashlib
import dataclasses
import json
import math
import os
import pathlib
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from radial_attention.models import FAMILIES

from . import checkpoint as ckpt
from . import data_parallel as dp
from .config import ATTENTIONS, LR_SCHEDULES, TrainConfig, upgrade_saved_settings  # noqa: F401 (re-exported)
from .data import PROMPT_EMBEDS, PROMPT_EMBEDS_2, LatentDataset, collate
from .lora import LORA_WEIGHTS_NAME, add_lora, load_lora_into, lora_parameters, save_lora
from .model import (
    autocast_context,
    cast_like_from_pretrained,
    default_shift,
    expert_timestep_range,
    trainable_family,
    latent_layout,
    load_transformer,
    lora_input_cast_off,
    model_spec,
    resolve_precision,
    transformer_inputs,
)
from .memory import enable_checkpointing, offload_context, prepare_offload_input
from .objective import FlowMatching
from .plot import plot_loss

# Settings that must not change between a run and its resumption (they change the data order,
# the random draws, the adapter's shape, the model being trained or the data). data_fingerprint
# identifies the data folder's samples, not its path (a moved folder still resumes).
_RESUME_MUST_MATCH = (
    "lora_rank",
    "alpha",
    "train_ff",
    "attention",
    "batch_size",
    "grad_accum",
    "seed",
    "world_size",
    "timestep_sampling",
    "transformer_subfolder",
    "timestep_range",
    "data_fingerprint",
)
_SETTING_DEFAULTS = {"transformer_subfolder": "transformer", "timestep_range": None}
# Checked only when the checkpoint records them (older checkpoints do not).
_CHECKED_IF_SAVED = ("data_fingerprint", "attention")
# What a run writes into its output folder besides checkpoints/ (cleared by overwrite).
_RUN_FILES = ("loss.jsonl", "loss.png", "train_config.json", LORA_WEIGHTS_NAME)


class NonFiniteLossError(ValueError):
    """The loss, the gradients or the LoRA weights became NaN/inf: the run stops before saving
    anything of that step (the message names the step and the samples)."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: pathlib.Path
    lora_path: pathlib.Path
    steps: int
    losses: List[float] = field(default_factory=list)  # per optimizer step, this run only


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            span = max(1, cfg.max_steps - cfg.warmup_steps)
            t = min(1.0, (step - cfg.warmup_steps) / span)
            return 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return f


class LoRATrainer:
    """One training run: builds the model, LoRA, radial attention, optimizer and data order, then
    :meth:`train` (or :meth:`step` for one optimizer step at a time).

    The transformer (unwrapped) is ``self.transformer``; under several processes the DDP wrapper
    is ``self.model``.
    """

    def __init__(self, config: TrainConfig, *, transformer=None):
        """``transformer``: an already built diffusers transformer to train instead of loading
        ``config.model`` (tests, notebooks); it is modified in place (LoRA, processors)."""
        self.cfg = cfg = config
        if cfg.deterministic:
            _use_deterministic_kernels()
        self.info = dp.setup(cfg.device, timeout_s=cfg.collective_timeout_s)
        # torch's global RNG drives LoRA dropout: seed it so a run is reproducible (per process).
        torch.manual_seed(cfg.seed + 1_000 * self.info.rank)
        self.device = self.info.device
        self.precision = resolve_precision(cfg.precision, self.device)
        loaded_from_model = transformer is None  # else cfg.model may name nothing loadable (tests, notebooks)
        if transformer is None:
            transformer = load_transformer(
                cfg.model, dtype=self.precision.weights, seed=cfg.seed, subfolder=cfg.transformer_subfolder
            )
        elif transformer.dtype != self.precision.weights:
            transformer = cast_like_from_pretrained(transformer, self.precision.weights)
        self.family = trainable_family(transformer).name  # a registry family name (saved in settings)
        self.spec = model_spec(transformer)

        # Data first: bad data fails here, before anything expensive happens.
        self.dataset = LatentDataset(cfg.data, self.spec, batch_size=cfg.batch_size, world_size=self.info.world_size)
        _warn_on_prompt_length(self.dataset, self.family)
        i2v = bool(self.spec.condition_channels)  # image-to-video: the family's I2V shift where it has one
        self.shift = (
            default_shift(cfg.model, self.family, image_to_video=i2v) if cfg.shift is None else float(cfg.shift)
        )
        # One Wan2.2 A14B expert learns only the noise levels its pipeline gives it.
        self.timestep_range = cfg.timestep_range or (
            expert_timestep_range(cfg.model, cfg.transformer_subfolder) if loaded_from_model else None
        )
        sigma_range = None if self.timestep_range is None else tuple(t / 1000.0 for t in self.timestep_range)
        self.objective = FlowMatching(shift=self.shift, sampling=cfg.timestep_sampling, sigma_range=sigma_range)

        self.lora_config = add_lora(
            transformer,
            self.family,
            rank=cfg.lora_rank,
            alpha=cfg.alpha,
            dropout=cfg.lora_dropout,
            train_ff=cfg.train_ff,
            init_seed=cfg.seed,
        )
        transformer.to(self.device)
        if cfg.attention == "radial":
            from radial_attention.integrations.diffusers import apply_radial_attention

            apply_radial_attention(
                transformer,
                preset=cfg.preset,
                decay=cfg.decay,
                dense_layers=cfg.dense_layers,
                block_size=cfg.block_size,
                backend=cfg.backend,
            )
        if cfg.gradient_checkpointing:
            enable_checkpointing(transformer, offload=cfg.offload_checkpoints)
        transformer.train()
        self.transformer = transformer
        if cfg.offload_checkpoints and self.info.distributed:
            # Reentrant checkpointing under DDP needs a static graph; not set up or tested here.
            raise ValueError(
                f"offload_checkpoints is single-process only for now; got {self.info.world_size} processes"
            )
        self.model = dp.wrap(transformer, self.info)
        self.params = lora_parameters(transformer)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.step_count = 0  # optimizer steps done
        self.epoch = 0
        self.position = 0  # micro-batches of this epoch already consumed
        self._order = None
        self._step_samples: List[Tuple[int, int]] = []  # (epoch, sample index) of this process in the current step
        self._saved_path: Optional[pathlib.Path] = None  # the last checkpoint this run wrote or resumed from
        self._io_warned = set()  # log/plot files whose write failure was already reported
        # Identifies this run's checkpoints (rotation deletes only these); a resumed run keeps its id.
        self.run_id = uuid.uuid4().hex
        self.output_dir = pathlib.Path(cfg.output_dir)

        resume_from = ckpt.resolve_resume(cfg.resume, self.output_dir)
        self._check_output_folder(resume_from)
        # Every process has looked at the folder before the main one writes into it (else a slow
        # process would take this run's first files for another run's).
        dp.barrier(self.info)
        if self.info.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is not None:
            self._load_checkpoint(resume_from)

    def _check_output_folder(self, resume_from: Optional[pathlib.Path]) -> None:
        """Refuse to start a run in a folder that holds another one (its checkpoints would be
        rotated away and its log truncated), or with ``overwrite`` delete that run's files first."""
        out = self.output_dir
        checkpoints = ckpt.list_checkpoints(out)
        if self.cfg.overwrite:
            if self.info.is_main:
                self._clear_previous_run(checkpoints)
            return
        files = [
            name
            for name in _RUN_FILES
            if name != "loss.png"
            and (out / name).is_file()
            and not (name == "loss.jsonl" and (out / name).stat().st_size == 0)
        ]
        hint = (
            "continue it with --resume latest (resume='latest'), "
            if checkpoints
            else "it has no checkpoint to continue; "
        ) + "write to another --output, or pass --overwrite to delete its checkpoints and logs"
        if resume_from is None:
            if checkpoints or (self.cfg.resume is None and files) or LORA_WEIGHTS_NAME in files:
                what = ([f"checkpoints {', '.join(p.name for p in checkpoints)}"] if checkpoints else []) + files
                raise ValueError(f"output folder {str(out)!r} already holds a training run ({'; '.join(what)}): {hint}")
            return
        mine = ckpt.run_id_of(resume_from)
        others = [p.name for p in checkpoints if mine is not None and ckpt.run_id_of(p) not in (None, mine)]
        if others:
            raise ValueError(
                f"output folder {str(out)!r} holds checkpoints of another run ({', '.join(others)}) than "
                f"the one resumed from {resume_from}: resume into another --output"
            )

    def _clear_previous_run(self, checkpoints) -> None:
        """``overwrite``: delete the previous run's checkpoints (only folders named like ours) and files."""
        root = self.output_dir / "checkpoints"
        doomed = list(checkpoints)
        if root.is_dir():
            doomed += [p for p in root.iterdir() if p.is_dir() and p.name.startswith(ckpt.TMP_PREFIX)]
        for p in doomed:
            shutil.rmtree(p)
        removed = [p.name for p in doomed]
        for name in _RUN_FILES:
            if (self.output_dir / name).is_file():
                (self.output_dir / name).unlink()
                removed.append(name)
        if removed:
            warnings.warn(
                f"overwrite: deleted the previous run in {self.output_dir}: {', '.join(removed)}", stacklevel=3
            )

    # ------------------------------------------------------------------ facts
    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches each process gets per pass over the data (the remainder is dropped)."""
        return (len(self.dataset) // self.info.world_size) // self.cfg.batch_size

    def settings(self) -> dict:
        d = dataclasses.asdict(self.cfg)
        d.update(
            world_size=self.info.world_size,
            family=self.family,
            shift=self.shift,
            timestep_range=None if self.timestep_range is None else list(self.timestep_range),
            alpha=float(self.cfg.lora_rank if self.cfg.alpha is None else self.cfg.alpha),  # the effective alpha
            data_fingerprint=self.dataset.fingerprint,
        )
        return d

    def radial_density(self) -> Optional[float]:
        """Block density of the radial mask on the first sample's layout (None when dense)."""
        if self.cfg.attention != "radial":
            return None
        from radial_attention.mask.radial import radial_block_mask

        fam = FAMILIES[self.family]
        preset = self.cfg.preset or fam.default_preset
        lay = latent_layout(self.spec, self.dataset.samples[0].latent_shape)
        extra_tokens = 0  # a family with text after the video (HunyuanVideo): the prompt's tokens
        if fam.has_extra_tokens:
            shapes = self.dataset.samples[0].shapes
            extra_tokens = shapes[PROMPT_EMBEDS][0]
            # HunyuanVideo 1.5: its byT5 tokens and (masked in text-to-video) image tokens follow too.
            extra_tokens += shapes.get(PROMPT_EMBEDS_2, (0,))[0] + (self.spec.zero_image_embeds or (0,))[0]
        m = radial_block_mask(
            lay["frames"],
            lay["tokens_per_frame"],
            preset=preset,
            decay=self.cfg.decay,
            block_size=self.cfg.block_size,
            extra_tokens=extra_tokens,
        )
        return m.density

    # ------------------------------------------------------------------ data order
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """This process's sample indices for ``epoch`` (a seeded permutation, sharded by rank)."""
        g = torch.Generator("cpu").manual_seed(self.cfg.seed + 104_729 * epoch)
        perm = torch.randperm(len(self.dataset), generator=g)
        per_rank = len(self.dataset) // self.info.world_size
        return perm[self.info.rank :: self.info.world_size][:per_rank]

    def _next_batch(self) -> Tuple[dict, list]:
        """The next micro-batch of this process (tensors on the device) and one noise generator
        per item, seeded by (seed, epoch, sample index): a sample's noise level and noise do not
        depend on the batch size, the number of processes or where a run was resumed."""
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, self._epoch_order(self.epoch))
        bs = self.cfg.batch_size
        idx = self._order[1][self.position * bs : (self.position + 1) * bs].tolist()
        self.position += 1
        batch = collate([self.dataset[i] for i in idx])
        gens = [_sample_generator(self.cfg.seed, self.epoch, i) for i in idx]
        self._step_samples.extend((self.epoch, i) for i in idx)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}, gens

    # ------------------------------------------------------------------ one step
    def _forward_loss(self, batch: dict, generators, module=None) -> torch.Tensor:
        """Flow-matching loss of one batch; noise and noise levels drawn from ``generators``
        (one per item)."""
        module = self.model if module is None else module
        x_t, timestep, target, _ = self.objective.sample(batch["latents"], generators)
        kw = transformer_inputs(
            self.family, batch, x_t, timestep, dtype=self.precision.compute, guidance=self.cfg.guidance, spec=self.spec
        )
        offload = self.cfg.offload_checkpoints and torch.is_grad_enabled()
        kw["hidden_states"] = prepare_offload_input(kw["hidden_states"], offload)
        with (
            autocast_context(self.precision, self.device.type),
            lora_input_cast_off(self.transformer, self.precision),
            offload_context(self.device, offload),
        ):
            pred = module(**kw)[0]
        return self.objective.loss(pred, target)

    def step(self) -> dict:
        """One optimizer step (``grad_accum`` micro-batches). Returns the log record.

        Raises:
            NonFiniteLossError: the loss or the gradient norm is NaN/inf (the optimizer step is
                not taken), or the LoRA weights are after the step; names the step and samples.
        """
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self._step_samples = []
        total = torch.zeros((), device=self.device)
        for micro in range(self.cfg.grad_accum):
            batch, gens = self._next_batch()
            last = micro == self.cfg.grad_accum - 1
            # Gradients are averaged across processes only on the last micro-batch.
            sync = self.model.no_sync() if (self.info.distributed and not last) else contextlib.nullcontext()
            # The LoRA input-cast setting spans the backward too: checkpointing recomputes forwards there.
            with sync, lora_input_cast_off(self.transformer, self.precision):
                loss = self._forward_loss(batch, gens)
                (loss / self.cfg.grad_accum).backward()
            total += loss.detach()
        clip = self.cfg.max_grad_norm and self.cfg.max_grad_norm > 0
        # Without clipping, an infinite max norm only measures (the norm is what the check needs).
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm if clip else math.inf))
        lr = self.scheduler.get_last_lr()[0]
        # Every process sees the same mean loss and (synchronised) gradient norm: all stop together.
        mean_loss = float(dp.mean_across(total / self.cfg.grad_accum, self.info))
        if not (math.isfinite(mean_loss) and math.isfinite(grad_norm)):
            raise NonFiniteLossError(
                f"step {self.step_count + 1}: the loss is {mean_loss} and the gradient norm {grad_norm} (not finite); "
                f"the optimizer step was not taken and nothing of it saved. {self._describe_step_samples(local_loss=float(total))} "
                f"{self._last_good()}"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        if not _all_finite(self.params):
            raise NonFiniteLossError(
                f"step {self.step_count}: the LoRA weights became NaN/inf in the optimizer step (lr {lr}, loss "
                f"{mean_loss:.6g}, gradient norm {grad_norm:.6g}: lower the learning rate); nothing of this step was "
                f"saved. {self._describe_step_samples()} {self._last_good()}"
            )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        rec = {
            "step": self.step_count,
            "loss": mean_loss,
            "lr": lr,
            "step_time_s": time.perf_counter() - t0,
            "epoch": self.epoch,
        }
        if clip:
            rec["grad_norm"] = grad_norm
        return rec

    def _sample_name(self, index: int) -> str:
        s = self.dataset.samples[index]
        return (
            f"#{index} {s.file.relative_to(self.dataset.root) if s.file.is_relative_to(self.dataset.root) else s.file}"
        )

    @torch.no_grad()
    def _describe_step_samples(self, local_loss: Optional[float] = None) -> str:
        """Which samples the failed step used; when this process's loss is not finite and there
        were several, each is re-run alone (same noise) to name the one(s) at fault."""
        who = "this process's samples" if self.info.distributed else "its samples"
        names = [self._sample_name(i) for _, i in self._step_samples]
        text = f"The step's {who}: {', '.join(names)}."
        if local_loss is None or math.isfinite(local_loss) or len(self._step_samples) < 2:
            return text
        bad = []
        for epoch, i in self._step_samples:
            batch = {k: v.to(self.device) for k, v in collate([self.dataset[i]]).items()}
            loss = self._forward_loss(batch, [_sample_generator(self.cfg.seed, epoch, i)], module=self.transformer)
            if not torch.isfinite(loss):
                bad.append(self._sample_name(i))
        return text + (f" Non-finite on their own: {', '.join(bad)}." if bad else "")

    def _last_good(self) -> str:
        if self._saved_path is None:
            return "No checkpoint of this run was written yet."
        return f"The last good checkpoint is {self._saved_path}."

    def gradients(self, indices, epoch: int = 0) -> Tuple[float, dict]:
        """Loss and LoRA gradients of one batch made of the given sample indices, with the noise
        draws of ``epoch`` (for checks: e.g. comparing attention backends). Leaves ``.grad`` zeroed.

        Returns:
            ``(loss, {parameter name: gradient})`` with gradients in float32 on the CPU.
        """
        self.optimizer.zero_grad(set_to_none=True)
        batch = {k: v.to(self.device) for k, v in collate([self.dataset[i] for i in indices]).items()}
        with lora_input_cast_off(self.transformer, self.precision):
            loss = self._forward_loss(
                batch, [_sample_generator(self.cfg.seed, epoch, i) for i in indices], module=self.transformer
            )
            loss.backward()
        loss = loss.detach()
        grads = {
            n: p.grad.detach().float().cpu().clone() for n, p in self.transformer.named_parameters() if p.requires_grad
        }
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item(), grads

    @torch.no_grad()
    def evaluate(self, samples: Optional[int] = None, seed: int = 12345) -> float:
        """Flow-matching loss on the first ``samples`` samples with fixed noise and noise levels
        (the same draws every call, so values are comparable across steps). Does not touch the
        training RNG or data order."""
        n = min(samples or self.cfg.eval_samples, len(self.dataset))
        was_training = self.transformer.training
        self.transformer.eval()
        losses = []
        for i in range(n):
            batch = {k: v.to(self.device) for k, v in collate([self.dataset[i]]).items()}
            gen = _sample_generator(seed, -1, i)
            losses.append(float(self._forward_loss(batch, [gen], module=self.transformer)))
        self.transformer.train(was_training)
        bad = [self._sample_name(i) for i, v in enumerate(losses) if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(
                f"step {self.step_count}: the fixed-noise eval loss is not finite on {', '.join(bad)}. "
                f"{self._last_good()}"
            )
        return sum(losses) / len(losses)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> pathlib.Path:
        """Write a checkpoint of the current step (all processes must call it). Rotation then
        drops this run's older checkpoints beyond ``keep_checkpoints``."""
        if not _all_finite(self.params):  # never let a broken state push a good checkpoint out
            raise NonFiniteLossError(
                f"step {self.step_count}: the LoRA weights are not finite; no checkpoint written. {self._last_good()}"
            )
        final = ckpt.checkpoint_dir(self.output_dir, self.step_count)
        tmp = final.with_name(f"tmp-{final.name}")
        if self.info.is_main:
            ckpt.begin_write(self.output_dir, self.step_count)
        dp.barrier(self.info)
        torch.save(ckpt.rng_state(), tmp / f"rng-rank{self.info.rank}.pt")
        dp.barrier(self.info)
        if self.info.is_main:
            save_lora(self.transformer, self.family, tmp)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            state = {
                "step": self.step_count,
                "epoch": self.epoch,
                "position": self.position,
                "run_id": self.run_id,
                "settings": self.settings(),
            }
            ckpt.finish_write(tmp, state, self.cfg.keep_checkpoints)
        dp.barrier(self.info)
        self._saved_path = final
        return final

    def _load_checkpoint(self, path: pathlib.Path) -> None:
        """Resume from a verified checkpoint folder (``ckpt.resolve_resume``). Nothing in it can
        run code: JSON, safetensors and weights-only torch loads (``ckpt.load_tensors``) only."""
        state = ckpt.read_state(path)
        diff = _resume_differences(state["settings"], self.settings())
        if diff:
            raise ValueError(f"cannot resume from {path}: settings differ from the checkpoint's: {'; '.join(diff)}")
        rng_file = path / f"rng-rank{self.info.rank}.pt"
        load_lora_into(self.transformer, path)
        optimizer_file, scheduler_file = path / "optimizer.pt", path / "scheduler.pt"
        try:
            self.optimizer.load_state_dict(ckpt.load_tensors(optimizer_file, map_location=self.device))
        except (KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(f"{optimizer_file}: not this run's optimizer state ({e})") from None
        try:
            self.scheduler.load_state_dict(ckpt.load_tensors(scheduler_file))
        except (KeyError, TypeError, AttributeError) as e:
            raise ckpt.CheckpointError(f"{scheduler_file}: not a learning-rate schedule state ({e})") from None
        ckpt.set_rng_state(ckpt.load_tensors(rng_file), source=str(rng_file))
        self.step_count, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])
        self.run_id = (
            state.get("run_id") or self.run_id
        )  # older checkpoints have none: a new id (their siblings are kept)
        self._saved_path = path
        self._order = None

    # ------------------------------------------------------------------ the loop
    def _log_path(self) -> pathlib.Path:
        return self.output_dir / "loss.jsonl"

    def _io_failed(self, what: str, err: Exception) -> None:
        """A log or plot could not be written (disk full...): the run goes on; said once per file."""
        if what not in self._io_warned:
            self._io_warned.add(what)
            warnings.warn(
                f"could not write {self.output_dir / what} ({type(err).__name__}: {err}); training goes on "
                f"(this warning is shown once)",
                stacklevel=3,
            )

    def _trim_log(self) -> None:
        """On resume, drop log lines past the resumed step (they belong to the lost tail of the run)."""
        path = self._log_path()
        try:
            if not path.is_file():
                return
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= self.step_count:
                        keep.append(line)
                except (json.JSONDecodeError, AttributeError):
                    continue  # a half-written line (a full disk) or not a record
            _write_text_atomic(path, "".join(x + "\n" for x in keep))
        except OSError as e:
            self._io_failed(path.name, e)

    def _append_log(self, rec: dict) -> None:
        try:
            if self._log is None:
                self._log = open(self._log_path(), "a")
            self._log.write(json.dumps(rec) + "\n")
            self._log.flush()
        except OSError as e:
            self._io_failed(self._log_path().name, e)

    def _draw_plot(self) -> None:
        # The picture is a convenience: no failure of it (a full disk, a matplotlib error) ends a run.
        try:
            plot_loss(self._log_path(), self.output_dir / "loss.png")  # skipped without matplotlib
        except Exception as e:
            self._io_failed("loss.png", e)

    def train(self) -> TrainResult:
        """Run until ``max_steps``; checkpoint every ``checkpoint_every`` steps and at the end;
        write the final LoRA to ``output_dir``. Returns the result (losses of this invocation).

        Raises:
            NonFiniteLossError: see :meth:`step`; the checkpoints written so far are kept.
        """
        cfg = self.cfg
        main = self.info.is_main
        if main:
            self._trim_log()
            try:
                _write_text_atomic(
                    self.output_dir / "train_config.json",
                    json.dumps({**self.settings(), "run_id": self.run_id}, indent=1, default=str),
                )
            except OSError as e:
                self._io_failed("train_config.json", e)
        bar = None
        if main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step_count, desc="train-lora", unit="step", dynamic_ncols=True)
        losses = []
        self._log = None
        try:
            while self.step_count < cfg.max_steps:
                rec = self.step()
                losses.append(rec["loss"])
                if cfg.eval_every and self.step_count % cfg.eval_every == 0:
                    rec["eval_loss"] = self.evaluate()
                if main:
                    self._append_log(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", step_s=f"{rec['step_time_s']:.2f}")
                if (
                    cfg.checkpoint_every
                    and self.step_count % cfg.checkpoint_every == 0
                    and self.step_count < cfg.max_steps
                ):
                    self.save_checkpoint()
                    if main:  # a curve to look at while a long run goes on
                        self._draw_plot()
        finally:
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.close()
                self._log = None
            if bar is not None:
                bar.close()
        if cfg.checkpoint_every and (
            self._saved_path is None
            or self._saved_path.name != ckpt.checkpoint_dir(self.output_dir, self.step_count).name
        ):
            self.save_checkpoint()
        lora_path = self.output_dir / LORA_WEIGHTS_NAME
        if main:
            if not _all_finite(self.params):
                raise NonFiniteLossError(
                    f"step {self.step_count}: the LoRA weights are not finite; the final LoRA was "
                    f"not written. {self._last_good()}"
                )
            lora_path = save_lora(self.transformer, self.family, self.output_dir)
            self._draw_plot()
        dp.barrier(self.info)
        return TrainResult(self.output_dir, lora_path, self.step_count, losses)


def _resume_differences(saved: dict, now: dict) -> List[str]:
    """``"name: saved X, given Y"`` for each setting in ``_RESUME_MUST_MATCH`` that differs."""
    saved = {**_SETTING_DEFAULTS, **upgrade_saved_settings(saved)}  # older checkpoints say "rank"
    if saved.get("alpha") is None and "lora_rank" in saved:  # older checkpoints stored alpha=None for "= rank"
        saved["alpha"] = float(saved["lora_rank"])
    out = []
    for key in _RESUME_MUST_MATCH:
        if key in _CHECKED_IF_SAVED and key not in saved:
            continue
        if saved.get(key) != now[key]:
            if key == "data_fingerprint":
                out.append(
                    f"data folder: saved {saved.get('data')!r}, given {now['data']!r} (their manifests list "
                    f"different samples)"
                )
            else:
                out.append(f"{key}: saved {saved.get(key)!r}, given {now[key]!r}")
    return out


def _all_finite(tensors) -> bool:
    """Whether every value of every tensor is finite (one small reduction per tensor)."""
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Write ``path`` through a temporary file in the same folder: a failure leaves the old file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def _warn_on_prompt_length(dataset: LatentDataset, family: str) -> None:
    """A family whose cross-attention does not mask prompt padding (Wan) has the prompt length as
    part of the model's input: data encoded with another length than the pipelines generate with
    (the registry's ``unmasked_text_tokens``, 512) trains the LoRA on contexts it will not see at
    generation time."""
    fam = FAMILIES[family]
    want = fam.unmasked_text_tokens
    if want is None:
        return
    lengths = sorted({s.shapes[PROMPT_EMBEDS][0] for s in dataset.samples})
    if lengths != [want]:
        warnings.warn(
            f"prompt_embeds in {dataset.root} have {lengths} tokens; the model's pipelines (such as {fam.lora_pipeline_class}) "
            f"generate with {want} (their max_sequence_length default) and do not mask the padding: generate with "
            f"max_sequence_length={lengths[0]}, or re-encode with --max-sequence-length {want}",
            stacklevel=3,
        )


def _use_deterministic_kernels() -> None:
    """Process-wide deterministic kernels (cuBLAS needs its workspace setting before its first use)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator for one visit of one sample (CPU: identical draws on every device)."""
    key = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(key, "little") & ((1 << 63) - 1))


def train_lora(config: TrainConfig, *, transformer=None) -> TrainResult:
    """Build a :class:`LoRATrainer` and run it to ``config.max_steps`` (see the module doc)."""
    return LoRATrainer(config, transformer=transformer).train()
