"""The crash-and-resume check every trainable family's tests run: a run that dies mid-way and is
resumed from its latest checkpoint must end bit-identical to the run that never stopped."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file


def assert_resume_is_exact(make_trainer, tmp_path, *, crash_in_step: int, checkpoint_step: int):
    """``make_trainer(output_dir, **extra)`` -> a ``LoRATrainer`` (same settings every time).

    Runs it uninterrupted into ``tmp_path/a``; again into ``tmp_path/b`` with a crash at the start
    of step ``crash_in_step`` (after the checkpoint of ``checkpoint_step``); resumes ``b`` with
    ``resume="latest"``. Checks the resumed trainer starts at ``checkpoint_step``, its losses equal
    the uninterrupted run's from there, and the saved LoRA weights are equal. Returns both results.
    """
    ref = make_trainer(str(tmp_path / "a")).train()
    crashed = make_trainer(str(tmp_path / "b"))
    real_step = crashed.step

    def step_then_crash():
        if crashed.step_count == crash_in_step - 1:
            raise RuntimeError("simulated crash")
        return real_step()

    crashed.step = step_then_crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train()
    resumed_trainer = make_trainer(str(tmp_path / "b"), resume="latest")
    assert resumed_trainer.step_count == checkpoint_step
    resumed = resumed_trainer.train()
    assert resumed.losses == ref.losses[checkpoint_step:]  # bit-identical
    wa = load_file(str(tmp_path / "a" / "pytorch_lora_weights.safetensors"))
    wb = load_file(str(tmp_path / "b" / "pytorch_lora_weights.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return ref, resumed
