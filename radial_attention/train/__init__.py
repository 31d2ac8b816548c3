"""Length-extension LoRA fine-tuning with radial attention (``radial-attention train-lora``) and
the training data folder (``radial-attention encode``).

    from radial_attention.train import TrainConfig, train_lora
    train_lora(TrainConfig(model=..., data=..., output_dir=...))

Modules: ``config`` (``TrainConfig``: the settings, and their command-line options), ``data`` (folder format, validation, dataset), ``objective`` (flow matching), ``model``
(which transformer, LoRA targets, call arguments), ``lora`` (adapter + diffusers LoRA file),
``checkpoint``, ``data_parallel`` (torchrun / DDP), ``trainer``, ``encode`` (videos -> folder).
Imports are lazy: ``import radial_attention.train`` needs only torch.
"""

from radial_attention._lazy import lazy_attributes

_LAZY = {
    "TrainConfig": "radial_attention.train.config",
    "TrainResult": "radial_attention.train.trainer",
    "LoRATrainer": "radial_attention.train.trainer",
    "train_lora": "radial_attention.train.trainer",
    "FlowMatching": "radial_attention.train.objective",
    "DataError": "radial_attention.train.data",
    "LatentDataset": "radial_attention.train.data",
    "ModelSpec": "radial_attention.train.data",
    "validate_dataset": "radial_attention.train.data",
    "write_sample": "radial_attention.train.data",
    "write_manifest": "radial_attention.train.data",
    "encode_videos": "radial_attention.train.encode",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
