"""One ``Recipe``: its label is the file names' and the leaderboards' spelling, its check the one validation."""

from __future__ import annotations

import pytest

from steer_plugin.errors import SteerError
from steer_plugin.vectors.recipe import DEFAULT_RECIPE, Recipe, recipe_name


def test_labels_spell_every_field_that_differs_from_the_default():
    assert DEFAULT_RECIPE.label() == "mean-emotions-npc3"
    assert Recipe("top_k", top_k=20).label() == "top_k-20"  # the first recipe keeps its name
    assert Recipe("pca", source="generated").label() == "pca-generated"  # generated: mean pooling by default
    assert Recipe("pca", source="generated", pool="mean").label() == "pca-generated"
    assert Recipe("mean", pool="mean").label() == "mean-pool-mean"
    assert Recipe("probe", source="generated", pool="last").label() == "probe-generated-pool-last"


def test_a_vector_s_metadata_gives_back_its_recipe():
    for recipe in (
        DEFAULT_RECIPE,
        Recipe("top_k", top_k=5, neutral_pcs=2, pool="mean"),
        Recipe("pca", source="generated"),
    ):
        meta = {"method": recipe.method, "top_k": recipe.top_k, "centre": recipe.centre,
                "neutral_pcs": recipe.neutral_pcs, "text_source": recipe.source, "pool": recipe.pool}  # fmt: skip
        assert Recipe.of(meta) == recipe and recipe_name(meta) == recipe.label()
    # files from before a field existed read as the old behaviour; no method: no recipe
    assert Recipe.of({"method": "mean"}) == Recipe("mean") and Recipe.of({"emotion": "anger"}) is None


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (Recipe("mean", top_k=4), "--top-k only applies to --method top_k"),
        (Recipe("top_k"), "method top_k needs --top-k K with K >= 1"),
        (Recipe("top_k", top_k=0), "method top_k needs --top-k K with K >= 1"),
        (Recipe("mean", centre="all"), "--centre"),  # type: ignore[arg-type]
        (Recipe("mean", neutral_pcs=-1), "--neutral-pcs must be an integer >= 0"),
        (Recipe("lda"), "--method"),  # type: ignore[arg-type]
        (Recipe("mean", source="web"), "--source"),  # type: ignore[arg-type]
        (Recipe("mean", pool="max"), "--pool"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_recipe_is_one_line_naming_the_flag(recipe, message):
    with pytest.raises(SteerError, match=message.replace("-", r"\-")) as e:
        recipe.check()
    assert "\n" not in str(e.value)


def test_top_k_is_checked_against_the_hidden_size_where_it_is_known():
    assert Recipe("top_k", top_k=32).check(hidden=32) == Recipe("top_k", top_k=32)
    with pytest.raises(SteerError, match="larger than the hidden size 32"):
        Recipe("top_k", top_k=33).check(hidden=32)


def test_per_text_recipes_need_the_recording_s_states():
    assert not Recipe("mean").per_text and not Recipe("top_k", top_k=3).per_text
    assert Recipe("pca").per_text and Recipe("probe").per_text and DEFAULT_RECIPE.per_text  # npc3 needs them too


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "top_k", "top_k": 2.0}, "--top-k: 2.0 is not an integer or None"),
        ({"neutral_pcs": True}, "--neutral-pcs: True is not an integer"),
        ({"centre": None}, "--centre: None is not a string"),
        ({"pool": 1}, "--pool: 1 is not a string or None"),
    ],
)
def test_a_recipe_of_wrong_types_is_refused_where_it_is_built(fields, message):
    with pytest.raises(SteerError) as caught:
        Recipe(**fields)
    assert message in str(caught.value)


def test_a_damaged_file_s_recipe_is_no_recipe():
    assert recipe_name({"method": "top_k", "top_k": "20"}) is None
    assert recipe_name({"method": "imported"}) == "imported"
