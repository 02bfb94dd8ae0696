"""The integer program compiled for the CPU: the integers of model.intvit.forward, batched or not, every kernel path."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from host.compiled_program import CompiledProgram
from host.emulator import EmulatorBackend
from host.integer_runtime import IntegerRuntime
from model import intvit
from model.random_model import TINY, random_integer_model, random_multibit_program


def _reference(prog: intvit.IntegerProgram, images: np.ndarray) -> tuple[np.ndarray, intvit.Trace]:
    trace = intvit.Trace(keep=True)
    return intvit.forward(prog, images, intvit.ReferenceEngine(prog), trace), trace


def _images(seed: int, n: int, arch=TINY) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, size=(n, arch.in_channels, arch.image_size, arch.image_size))


@pytest.fixture(scope="module")
def program() -> intvit.IntegerProgram:
    return intvit.program(random_integer_model(seed=11))


def test_logits_and_steps_equal_the_reference_forward(program):
    images = _images(12, 9)
    logits, trace = _reference(program, images)
    compiled = CompiledProgram(program)
    assert np.array_equal(compiled.logits(images), logits)
    assert compiled.step_names == list(trace.values) and compiled.steps == trace.steps and compiled.float_steps == 0


def test_a_recorded_batch_size_runs_again_on_new_images(program):
    """The second batch of a size replays the first one's kernel calls: new images, their own integers, the same steps."""
    first, second = _images(18, 4), _images(19, 4)
    compiled = CompiledProgram(program)
    compiled.logits(first)
    cycles = compiled.cycles()
    logits, trace = _reference(program, second)
    assert np.array_equal(compiled.logits(second), logits)
    assert compiled.step_names == list(trace.values) and compiled.steps == 2 * trace.steps
    assert compiled.cycles() == 2 * cycles


def test_it_counts_the_cycles_an_emulator_backend_counts(program):
    images = _images(17, 3)
    compiled, backend = CompiledProgram(program, lanes=4), EmulatorBackend(lanes=4)
    IntegerRuntime(program, backend).logits(images)
    compiled.logits(images)
    assert compiled.cycles() == backend.cycles() > 0


def test_a_batch_gives_the_integers_of_one_image_at_a_time(program):
    images = _images(13, 6)
    compiled = CompiledProgram(program)
    one_by_one = np.concatenate([compiled.logits(images[i:i + 1]) for i in range(len(images))])
    assert np.array_equal(compiled.logits(images), one_by_one)
    assert np.array_equal(compiled.predict(images), intvit.predict(program, images, intvit.ReferenceEngine(program)))


@pytest.mark.parametrize("arch", [
    replace(TINY, dim=48, mlp_hidden=80),   # head_dim 24: heads straddle words; rows that are not whole words
    replace(TINY, image_size=18),           # 83 tokens: the A V operands take two words
    replace(TINY, dim=128, heads=1, mlp_hidden=192),  # one head of 128 channels
    replace(TINY, in_channels=3, image_size=12, patch_size=4),  # three channels embedded, 4x4 patches
    replace(TINY, distillation_token=False),  # one head
], ids=["head_dim_24", "tokens_83", "one_head_128", "three_channels", "one_classifier_head"])
def test_other_shapes_take_the_general_layouts(arch):
    prog = intvit.program(random_integer_model(arch, seed=5))
    images = _images(6, 3, arch)
    assert np.array_equal(CompiledProgram(prog).logits(images), _reference(prog, images)[0])


def test_multibit_products_run_on_their_codes():
    """int4 inputs, Q, K, V and a uint3 attention map (the PTQ family): every product on codes, not planes."""
    prog = random_multibit_program(seed=8)
    images = _images(14, 5)
    compiled = CompiledProgram(prog)
    assert not any(p.planes for p in compiled._products.values())
    assert np.array_equal(compiled.logits(images), _reference(prog, images)[0])


def _two_sided(program: intvit.IntegerProgram, name: str, lo_shift: int) -> intvit.IntegerProgram:
    """A copy of ``program`` whose threshold set ``name`` also counts from below, ``lo = hi - lo_shift``."""
    arrays = dict(program.arrays)
    arrays[f"{name}.lo"] = arrays[f"{name}.hi"] - lo_shift
    return intvit.IntegerProgram(program.model, program.params, arrays)


def test_a_threshold_set_counted_from_below_takes_the_general_kernel(program):
    """fc2's unipolar input as a two-sided step (GELU's fold): not monotone, so coded and packed, still exact."""
    prog = _two_sided(program, "blocks.0.mlp.fc2.in", lo_shift=3)
    images = _images(15, 4)
    logits, trace = _reference(prog, images)
    assert np.any(trace.values["blocks.0.mlp.fc2.in"][trace.values["blocks.0.mlp.fc1"] < prog.arrays["blocks.0.mlp.fc2.in.hi"][:, 0]])
    assert np.array_equal(CompiledProgram(prog).logits(images), logits)


def test_codes_outside_their_encoding_are_refused_like_the_backend_runtime(program):
    """lo above hi: some codes reach 2, not a unipolar value; the emulator Backend's packing refuses them, and so does this."""
    prog = _two_sided(program, "blocks.0.mlp.fc2.in", lo_shift=-10**6)
    images = _images(16, 2)
    with pytest.raises(ValueError, match="unipolar"):
        IntegerRuntime(prog, EmulatorBackend()).logits(images)
    with pytest.raises(ValueError, match="blocks.0.mlp.fc2.in: .* codes lie outside encoding unipolar"):
        CompiledProgram(prog).logits(images)


def test_pixels_are_checked(program):
    with pytest.raises(ValueError):
        CompiledProgram(program).logits(np.full((1, 1, 8, 8), 1000))
