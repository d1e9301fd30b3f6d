"""Inputs are read only from regular files, within their format's bound: a FIFO named like an input is refused
at once (it would block the reader forever), a link to a device (``/dev/zero``) is refused, not read until
memory runs out, and a file larger than its format allows is refused by size."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from steer_plugin.errors import SteerError
from steer_plugin.io.reading import JSON_LIMIT, UnreadableFile, read_regular_text
from steer_plugin.model.loading import ModelOptions
from steer_plugin.steering.calibration_file import calibration_path, stored_calibrations
from steer_plugin.study.paired import read_scores
from steer_plugin.study.sweep_folder import check_same_sweep
from steer_plugin.vectors.vector import SteeringVector

ZERO = "/dev/zero"


def _within(seconds: float, call):
    """``call()``'s exception (or None) if it returns within ``seconds``; fails the test if it blocks."""
    caught: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            caught.append(None)
        except BaseException as e:  # handed to the test
            caught.append(e)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    return worker, caught


def test_a_fifo_named_as_a_gguf_model_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.gguf"
    os.mkfifo(fifo)
    worker, caught = _within(20, lambda: ModelOptions(name=str(fifo)))
    if worker.is_alive():  # release the blocked reader (a writer opening the FIFO), then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("ModelOptions blocked on a FIFO named as the model")
    assert isinstance(caught[0], SteerError), caught
    assert "FIFO" in str(caught[0]) and "not a regular file" in str(caught[0])


@pytest.mark.skipif(not os.path.exists(ZERO), reason="no /dev/zero")
def test_links_to_a_device_are_refused_not_read(tmp_path):
    vector = tmp_path / "v.safetensors"
    SteeringVector(torch.ones(3, 8), {"emotion": "anger"}).save(vector)
    calibration_path(vector).symlink_to(ZERO)
    with pytest.raises(SteerError, match="character device, not a regular file"):
        stored_calibrations(vector)

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").symlink_to(ZERO)
    with pytest.raises(SteerError, match=r"sweep.json is unreadable \(UnreadableFile\)"):
        check_same_sweep(sweep, {})

    samples = tmp_path / "samples_t.jsonl"
    samples.symlink_to(ZERO)
    with pytest.raises(UnreadableFile, match="character device"):
        read_scores(samples)


def test_a_fifo_as_a_json_input_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "sweep.json"
    os.mkfifo(fifo)
    worker, caught = _within(20, lambda: read_regular_text(fifo, JSON_LIMIT))
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert isinstance(caught[0], UnreadableFile) and "FIFO (named pipe)" in str(caught[0])


def test_a_file_larger_than_its_format_allows_is_refused(tmp_path):
    vector = tmp_path / "v.safetensors"
    SteeringVector(torch.ones(3, 8), {"emotion": "anger"}).save(vector)
    with open(calibration_path(vector), "wb") as f:
        f.truncate(JSON_LIMIT + 1)  # sparse: no disk used
    with pytest.raises(SteerError, match="larger than 64 MiB"):
        stored_calibrations(vector)
    small = tmp_path / "small.json"
    small.write_text("{}")
    assert read_regular_text(small, JSON_LIMIT) == "{}"


def test_the_tuning_file_and_the_report_read_through_the_same_guard(tmp_path):
    """`steer tune`'s file beside a vector is read like a calibration file: by size and only if regular (it used to
    be read whole, and a FIFO named like it blocked)."""
    from steer_plugin.study.tuning_file import stored_tunings, tuning_path

    vector = tmp_path / "v.safetensors"
    SteeringVector(torch.ones(3, 8), {"emotion": "anger"}).save(vector)
    with open(tuning_path(vector), "wb") as f:
        f.truncate(JSON_LIMIT + 1)  # sparse: no disk used
    with pytest.raises(SteerError, match="larger than 64 MiB"):
        stored_tunings(vector)
    tuning_path(vector).unlink()
    os.mkfifo(tuning_path(vector))
    worker, caught = _within(20, lambda: stored_tunings(vector))
    if worker.is_alive():
        os.close(os.open(tuning_path(vector), os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO named as the tuning file blocked")
    assert isinstance(caught[0], SteerError) and "FIFO (named pipe)" in str(caught[0])
