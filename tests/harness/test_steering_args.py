"""The steering arguments of steered_hf (harness.steering_args): a misspelt one is refused by us, naming ours."""

from __future__ import annotations

import shutil

import pytest

from steer_plugin.errors import SteerError


@pytest.mark.parametrize(
    "kwargs, meant",
    [({"alhpa": "1"}, "alpha"), ({"vectors": "v"}, "vector"), ({"Layers": "1"}, "layers"),
     ({"position": "all"}, "positions"), ({"prefix-reuse": "false"}, "prefix_reuse"), ({"bakcend": "hooks"}, "backend")],
)  # fmt: skip
def test_a_misspelt_steering_argument_is_refused_before_the_model_loads(kwargs, meant):
    from steer_plugin.harness.model import SteeredHFLM

    with pytest.raises(SteerError, match="unknown steered_hf argument") as e:
        SteeredHFLM(pretrained="/nonexistent/model", **kwargs)  # never loaded: refused first
    assert f"did you mean {meant}=?" in str(e.value)
    assert "vector, alpha, layers, positions, backend, blocks, prefix_reuse" in str(e.value)


def test_hflm_and_transformers_arguments_still_pass():
    from steer_plugin.harness.model import _HFLM_ARGS
    from steer_plugin.harness.steering_args import check_unknown_args

    assert {"max_length", "device", "dtype", "revision", "parallelize", "batch_size"} <= _HFLM_ARGS
    check_unknown_args(["max_length", "attn_implementation", "low_cpu_mem_usage", "cache_dir", "token"], _HFLM_ARGS)


def test_a_sweep_configuration_names_one_vector_file_even_with_a_semicolon(vector_file, tmp_path):
    from steer_plugin.harness.steering_args import SteeringArgs
    from steer_plugin.steering.config import SteeringConfig

    odd = tmp_path / "a;b.safetensors"
    shutil.copy(vector_file, odd)
    args = SteeringArgs.of(SteeringConfig(str(odd), 1.0))
    assert [v.metadata["source_path"] for v in args.vectors] == [str(odd)]
