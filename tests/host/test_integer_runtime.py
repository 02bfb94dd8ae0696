"""The integer program on a Backend: equal to the reference engine, step by step, with no float step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from host.cli import main
from host.emulator import EmulatorBackend
from host.integer_runtime import IntegerRuntime
from model import intvit, modelfile
from model.random_model import random_integer_model


@pytest.fixture(scope="module")
def program() -> intvit.IntegerProgram:
    return intvit.program(random_integer_model(seed=11))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(12).integers(0, 17, size=(5, 1, 8, 8))


@pytest.mark.parametrize("kernel", ["fast", "reference"])
def test_emulator_equals_the_reference_engine_at_every_step(program, images, kernel):
    runtime = IntegerRuntime(program, EmulatorBackend(kernel), trace=True)
    logits = runtime.logits(images)
    reference = intvit.Trace(keep=True)
    assert np.array_equal(logits, intvit.forward(program, images, intvit.ReferenceEngine(program), reference))
    assert runtime.last_trace.keys() == reference.values.keys()
    for name, values in reference.values.items():
        assert np.array_equal(runtime.last_trace[name], values), name
    assert runtime.float_steps == 0 and runtime.steps == reference.steps


def test_emulator_counts_every_product(program, images):
    backend = EmulatorBackend("fast", lanes=4)
    runtime = IntegerRuntime(program, backend)
    runtime.predict(images[:1])
    one = backend.cycles()
    runtime.predict(images[1:3])
    assert one > 0 and backend.cycles() == pytest.approx(3 * one, rel=0.01)


@pytest.fixture(scope="module")
def integer_file(tmp_path_factory, program):
    path = tmp_path_factory.mktemp("int") / "integer.gsbf"
    modelfile.save(program.model, path)
    return path


def test_infer_runs_the_integer_program_and_reports_no_float_step(integer_file, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["infer", "--model", str(integer_file), "--limit", "4", "--quiet", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["mode"] == "integer" and summary["float_steps"] == 0 and summary["steps_per_image"] > 20
    assert "0 of them in float" in capsys.readouterr().out
    assert main(["infer", "--model", str(integer_file), "--limit", "2", "--quiet", "--float-host", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mode"] == "float-host"


def test_a_file_without_a_program_runs_float_host_with_a_note(tmp_path, capsys):
    from model.random_model import random_model

    path = tmp_path / "plain.gsbf"
    modelfile.save(random_model(), path)
    assert main(["infer", "--model", str(path), "--limit", "1", "--quiet"]) == 0
    assert "carries no integer program" in capsys.readouterr().err


@pytest.mark.parametrize("kernel", ["fast", "reference"])
def test_a_batch_gives_the_integers_of_one_image_at_a_time(program, images, kernel):
    """Every step's integers of a batch (matmuls: all images and heads in one backend call) equal image by image."""
    alone, batched = IntegerRuntime(program, EmulatorBackend(kernel), trace=True), IntegerRuntime(program, EmulatorBackend(kernel), trace=True)
    traces = []
    for img in images:
        alone.logits(img[None])
        traces.append(alone.last_trace)
    batched.logits(images)
    for name, values in batched.last_trace.items():
        # the batch axis is the first, except for stacked groups (attention levels: groups first)
        axis = [a != b for a, b in zip(values.shape, traces[0][name].shape)].index(True)
        assert np.array_equal(values, np.concatenate([t[name] for t in traces], axis=axis)), name
    assert alone.backend.cycles() == batched.backend.cycles() and alone.steps == len(images) * batched.steps


def test_infer_batch_size_does_not_change_the_integer_predictions(integer_file, tmp_path):
    runs = []
    for batch in ("1", "3"):
        out = tmp_path / f"b{batch}.json"
        assert main(["infer", "--model", str(integer_file), "--limit", "5", "--batch", batch, "--quiet", "--json", str(out)]) == 0
        runs.append(json.loads(out.read_text()))
    assert [r["batch"] for r in runs] == [1, 3] and runs[0]["predictions"] == runs[1]["predictions"]
    assert runs[0]["steps_per_image"] == runs[1]["steps_per_image"] and runs[1]["float_steps"] == 0

