"""The settings of a training run, :class:`TrainConfig`, and how each appears on the command line.

Each field's ``metadata["cli"]`` (a :class:`CliOption`) says how ``radial-attention train-lora``
offers it: option name, help text, the validator of :mod:`radial_attention.cli.args` that parses
it, choices. ``cli/train_cmd.py`` builds the parser from these, so a new setting is one field
here. Validators are named, not imported: training does not depend on the CLI layer above it.

No torch import here: the CLI builds its parser from this module, and ``radial-attention mask``
must stay light.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

from radial_attention._deprecation import renamed_attribute, warn_deprecated

ATTENTIONS = ("radial", "dense")
LR_SCHEDULES = ("constant", "cosine")
# How weights, autocast and the LoRA branch are typed (``train.model.resolve_precision``).
PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16", "bf16-autocast")
SUBFOLDERS = ("transformer", "transformer_2")

# Option groups of `train-lora --help`, in the order they first appear among the fields.
MODEL_AND_DATA, LORA, ATTENTION, OPTIMISATION, OBJECTIVE, RUNTIME = (
    "model and data",
    "LoRA",
    "attention",
    "optimisation",
    "objective",
    "runtime",
)


@dataclass(frozen=True)
class CliOption:
    """How one :class:`TrainConfig` field appears as a ``train-lora`` option.

    ``flag``: the option (default ``--field-name``); ``type``: the name of a validator in
    :mod:`radial_attention.cli.args` (``None``: the text as given); ``negate``: a setting that is
    on by default, offered as a ``--no-...`` flag that turns it off; ``deprecated_flags``: old
    option names still accepted (with a notice) for one release. A field without a default is a
    required option; a bool field is a flag.
    """

    group: str
    help: str
    flag: Optional[str] = None
    type: Optional[str] = None
    choices: Optional[tuple] = None
    metavar: Optional[str] = None
    negate: bool = False
    deprecated_flags: Tuple[str, ...] = ()


def _opt(group: str, help: str, **kw) -> dict:
    """Field metadata: the field's ``train-lora`` option."""
    return {"cli": CliOption(group, help, **kw)}


def cli_option(f: dataclasses.Field) -> Optional[CliOption]:
    """The command-line option of a :class:`TrainConfig` field (``None``: not on the command line)."""
    return f.metadata.get("cli")


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults follow the paper's LoRA recipe where it has one.

    Each field's help text is in its metadata (``radial-attention train-lora --help`` shows them
    all). In short:

    Model and data:
        model: pipeline folder, transformer folder, Hub id, or ``tiny-wan`` / ``tiny-hunyuan``.
        transformer_subfolder: the pipeline component to train (``transformer``; ``transformer_2``:
            Wan2.2 A14B's low-noise expert).
        data: folder in the format of ``docs/training-data.md`` (``radial-attention encode``).
        output_dir: where the LoRA, checkpoints and ``loss.jsonl`` go.
    LoRA:
        lora_rank (128; ``rank`` is its deprecated name), alpha (default = rank), lora_dropout,
        train_ff (also the feed-forward layers).
    Attention:
        attention: ``"radial"`` or ``"dense"`` (plain SDPA everywhere, the baseline).
        preset / decay: radial mask settings (``None``: the model's own preset and its decay).
        dense_layers: the first this many blocks stay dense (2).
        block_size (128; 64 for small videos), backend: the op backend (``"auto"``).
    Optimisation:
        max_steps: optimizer steps; batch_size per process; grad_accum micro-batches per step;
        lr, weight_decay, adam_betas, adam_eps (AdamW); warmup_steps, lr_schedule
        (``constant``/``cosine``); max_grad_norm (0 disables clipping).
    Objective:
        shift (``None``: the model's scheduler config, else Wan 3.0 / HunyuanVideo 7.0),
        timestep_sampling (``uniform``/``logit_normal``), guidance (HunyuanVideo's embedded guidance),
        timestep_range (``(lo, hi)`` in 0-1000: only noise levels in it; ``None``: for one expert
        of a Wan2.2 A14B pipeline the expert's own range from ``boundary_ratio``, else all).
    Runtime:
        precision (``auto``: ``bf16-mixed`` on CUDA, fp32 on CPU; see ``train.model.resolve_precision``),
        gradient_checkpointing, offload_checkpoints (the checkpointed blocks' inputs in CPU memory:
        long videos on big models; ``train.memory``; one process only), collective_timeout_s (several
        processes: a gradient all-reduce or barrier waiting longer fails the run), deterministic (deterministic GPU kernels, process-wide: a resumed run
        then repeats the uninterrupted one bit for bit on a GPU too; without it non-deterministic
        GPU kernels make runs differ in the last digits), device (``None`` or ``"auto"``: CUDA if available), seed, checkpoint_every,
        keep_checkpoints (this run's newest checkpoints kept), resume (``None``, ``"latest"`` or a
        checkpoint folder), overwrite (start a new run in an output folder that holds another one,
        deleting that run's checkpoints and logs; without it such a folder is refused), eval_every
        (a fixed-noise loss on the first ``eval_samples`` samples; 0 disables), progress (bar).
    """

    model: str = field(
        metadata=_opt(
            MODEL_AND_DATA, "diffusers pipeline folder or Hub id, transformer folder, or tiny-wan / tiny-hunyuan"
        )
    )
    data: str = field(
        metadata=_opt(MODEL_AND_DATA, "training data folder (docs/training-data.md; made by `radial-attention encode`)")
    )
    output_dir: str = field(metadata=_opt(MODEL_AND_DATA, "output folder", flag="--output", type="output_dir"))
    lora_rank: int = field(
        default=128, metadata=_opt(LORA, "LoRA rank", type="positive_int", deprecated_flags=("--rank",))
    )
    alpha: Optional[float] = field(
        default=None, metadata=_opt(LORA, "LoRA alpha (default: the rank, i.e. scale 1)", type="positive_float")
    )
    lora_dropout: float = field(
        default=0.0, metadata=_opt(LORA, "dropout on the LoRA branch, in [0, 1)", type="fraction")
    )
    train_ff: bool = field(default=False, metadata=_opt(LORA, "also put LoRA on the feed-forward layers"))
    attention: str = field(
        default="radial", metadata=_opt(ATTENTION, "radial, or dense (the baseline)", choices=ATTENTIONS)
    )
    preset: Optional[str] = field(default=None, metadata=_opt(ATTENTION, "radial mask preset (default: the model's)"))
    decay: Optional[float] = field(
        default=None, metadata=_opt(ATTENTION, "mask decay (default: the preset's)", type="positive_float")
    )
    dense_layers: int = field(default=2, metadata=_opt(ATTENTION, "first blocks that stay dense", type="nonneg_int"))
    block_size: int = field(
        default=128,
        metadata=_opt(ATTENTION, "mask block size in tokens (64 for small videos)", type="integer", choices=(64, 128)),
    )
    backend: str = field(
        default="auto", metadata=_opt(ATTENTION, "attention op backend: auto, gather, reference, flex, triton")
    )
    max_steps: int = field(default=1000, metadata=_opt(OPTIMISATION, "optimizer steps", type="positive_int"))
    batch_size: int = field(
        default=1, metadata=_opt(OPTIMISATION, "samples per process per micro-batch", type="positive_int")
    )
    grad_accum: int = field(
        default=1, metadata=_opt(OPTIMISATION, "micro-batches per optimizer step", type="positive_int")
    )
    lr: float = field(default=1e-4, metadata=_opt(OPTIMISATION, "learning rate (AdamW)", type="positive_float"))
    weight_decay: float = field(default=1e-4, metadata=_opt(OPTIMISATION, "AdamW weight decay", type="nonneg_float"))
    adam_betas: Tuple[float, float] = field(
        default=(0.9, 0.999),
        metadata=_opt(OPTIMISATION, "AdamW betas, each in [0, 1)", type="beta_pair", metavar="B1,B2"),
    )
    adam_eps: float = field(default=1e-8, metadata=_opt(OPTIMISATION, "AdamW epsilon", type="positive_float"))
    warmup_steps: int = field(
        default=0, metadata=_opt(OPTIMISATION, "linear learning-rate warm-up steps", type="nonneg_int")
    )
    lr_schedule: str = field(
        default="constant", metadata=_opt(OPTIMISATION, "learning rate after the warm-up", choices=LR_SCHEDULES)
    )
    max_grad_norm: float = field(
        default=1.0, metadata=_opt(OPTIMISATION, "gradient clipping (0: off)", type="nonneg_float")
    )
    shift: Optional[float] = field(
        default=None,
        metadata=_opt(
            OBJECTIVE,
            "flow shift (default: the model's scheduler config; Wan 3, HunyuanVideo 7)",
            type="positive_float",
        ),
    )
    timestep_sampling: str = field(
        default="uniform",
        metadata=_opt(OBJECTIVE, "distribution of the training noise levels", choices=("uniform", "logit_normal")),
    )
    guidance: float = field(
        default=1.0,
        metadata=_opt(OBJECTIVE, "HunyuanVideo embedded guidance scale during training", type="finite_float"),
    )
    timestep_range: Optional[Tuple[float, float]] = field(
        default=None,
        metadata=_opt(
            OBJECTIVE,
            "train only on timesteps in [LO, HI] of 0-1000 (default: a Wan2.2 A14B expert's own range "
            "from the pipeline's boundary_ratio, else all)",
            type="timestep_pair",
            metavar="LO,HI",
        ),
    )
    transformer_subfolder: str = field(
        default="transformer",
        metadata=_opt(
            MODEL_AND_DATA,
            "pipeline component to train (Wan2.2 A14B: transformer = high-noise expert, transformer_2 = "
            "low-noise expert; load its LoRA with pipe.load_lora_weights(OUTPUT, load_into_transformer_2=True))",
            choices=SUBFOLDERS,
        ),
    )
    precision: str = field(
        default="auto",
        metadata=_opt(
            RUNTIME,
            "auto: bf16-mixed on CUDA (bf16 weights, bf16 autocast, float32 LoRA and AdamW), fp32 on CPU; "
            "bf16: no autocast, LoRA branch in float32 (more memory)",
            choices=PRECISIONS,
        ),
    )
    gradient_checkpointing: bool = field(
        default=True,
        metadata=_opt(
            RUNTIME, "keep all activations (faster, much more memory)", flag="--no-gradient-checkpointing", negate=True
        ),
    )
    device: Optional[str] = field(
        default=None,
        metadata=_opt(
            RUNTIME, "default: CUDA (cuda:LOCAL_RANK under torchrun) if available, else CPU", type="device_name"
        ),
    )
    seed: int = field(default=0, metadata=_opt(RUNTIME, "seed of the LoRA init, data order and noise", type="integer"))
    checkpoint_every: int = field(
        default=500, metadata=_opt(RUNTIME, "steps between checkpoints (0: none)", type="nonneg_int")
    )
    keep_checkpoints: int = field(
        default=2, metadata=_opt(RUNTIME, "newest checkpoints of this run kept (0: all)", type="nonneg_int")
    )
    resume: Optional[str] = field(
        default=None,
        metadata=_opt(RUNTIME, "'latest' (newest intact checkpoint in OUTPUT, or start fresh) or a checkpoint folder"),
    )
    eval_every: int = field(
        default=0, metadata=_opt(RUNTIME, "log a fixed-noise loss every N steps (0: off)", type="nonneg_int")
    )
    eval_samples: int = field(
        default=4, metadata=_opt(RUNTIME, "samples in the fixed-noise eval loss", type="positive_int")
    )
    progress: bool = field(default=True, metadata=_opt(RUNTIME, "no progress bar", flag="--no-progress", negate=True))
    deterministic: bool = field(
        default=False,
        metadata=_opt(
            RUNTIME, "deterministic GPU kernels: a resumed run repeats the uninterrupted one bit for bit (slower)"
        ),
    )
    offload_checkpoints: bool = field(
        default=False,
        metadata=_opt(
            RUNTIME, "keep the checkpointed blocks' inputs in CPU memory (long videos on big models; one process)"
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=_opt(
            RUNTIME,
            "start a new run in an OUTPUT that holds another one, deleting its checkpoints, loss.jsonl/png "
            "and LoRA (without it such an OUTPUT is refused)",
        ),
    )
    collective_timeout_s: float = field(
        default=1800.0,
        metadata=_opt(
            RUNTIME,
            "several processes (torchrun): a collective (gradient all-reduce, barrier) that waits longer than "
            "this fails the run instead of hanging",
            flag="--collective-timeout",
            type="positive_float",
            metavar="SECONDS",
        ),
    )

    # ``TrainConfig(rank=...)`` is accepted too, see ``_accept_rank``.
    rank = renamed_attribute("TrainConfig", "rank", "lora_rank")

    def __post_init__(self):
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            raise ValueError(f"lora_rank must be a positive integer, got {self.lora_rank!r}")
        if self.device == "auto":  # the CLI's spelling of "choose for me"
            self.device = None
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        for name in ("max_steps", "batch_size", "grad_accum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("dense_layers", "warmup_steps", "checkpoint_every", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.overwrite and self.resume is not None:
            raise ValueError(
                f"overwrite starts a new run and deletes the old one's checkpoints; it cannot be combined "
                f"with resume (got resume={self.resume!r})"
            )
        # nan would pass a "> 0" test and silently turn clipping off
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ValueError(f"max_grad_norm must be a finite number >= 0 (0: no clipping), got {self.max_grad_norm!r}")
        if isinstance(self.eval_samples, bool) or not isinstance(self.eval_samples, int) or self.eval_samples < 1:
            raise ValueError(f"eval_samples must be a positive integer, got {self.eval_samples!r}")
        if not (math.isfinite(self.collective_timeout_s) and self.collective_timeout_s > 0):
            raise ValueError(
                f"collective_timeout_s must be a positive number of seconds, got {self.collective_timeout_s!r}"
            )
        self.adam_betas = tuple(self.adam_betas)
        if self.timestep_range is not None:
            lo, hi = (float(x) for x in self.timestep_range)
            if not (0.0 <= lo < hi <= 1000.0):
                raise ValueError(
                    f"timestep_range must be (lo, hi) with 0 <= lo < hi <= 1000, got {self.timestep_range!r}"
                )
            self.timestep_range = (lo, hi)
        if self.offload_checkpoints and not self.gradient_checkpointing:
            raise ValueError(
                "offload_checkpoints needs gradient_checkpointing (it offloads the checkpointed blocks' inputs)"
            )
        if self.transformer_subfolder not in SUBFOLDERS:
            raise ValueError(
                f"transformer_subfolder must be 'transformer' or 'transformer_2', got {self.transformer_subfolder!r}"
            )


def _accept_rank(init):
    """``TrainConfig.__init__`` that also takes the deprecated ``rank=`` for ``lora_rank=``.

    A wrapper, not a dataclass field: ``rank`` stays out of ``fields()``, ``asdict()`` (the saved
    settings) and ``dataclasses.replace``.
    """

    @functools.wraps(init)
    def __init__(self, *args, rank: Optional[int] = None, **kwargs):
        if rank is not None:
            if "lora_rank" in kwargs and kwargs["lora_rank"] != rank:
                raise TypeError(
                    f"TrainConfig: got both lora_rank={kwargs['lora_rank']!r} and its deprecated name "
                    f"rank={rank!r}; pass lora_rank only"
                )
            warn_deprecated("TrainConfig(rank=...)", "lora_rank=")
            kwargs["lora_rank"] = rank
        init(self, *args, **kwargs)

    return __init__


TrainConfig.__init__ = _accept_rank(TrainConfig.__init__)


def upgrade_saved_settings(saved: dict) -> dict:
    """Settings saved by an older version, with today's names (checkpoints written before
    ``rank`` became ``lora_rank`` resume as before)."""
    saved = dict(saved)
    if "rank" in saved and "lora_rank" not in saved:
        saved["lora_rank"] = saved.pop("rank")
    return saved
