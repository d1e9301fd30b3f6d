"""One call from a loaded model to a steering vector: select the GoEmotions texts, record, build.

In the style of steering-vectors' ``train_steering_vector`` and repeng's ``ControlVector.train``; the steps
are the ones `steer build` runs (``vectors.request`` selects and records, ``vectors.build`` builds).
"""

from __future__ import annotations

import os
from typing import Any

from steer_plugin.data.selection import SelectionRule
from steer_plugin.errors import SteerError
from steer_plugin.io.schema import check_call, is_int
from steer_plugin.model.layers import parse_layers
from steer_plugin.model.loading import DTYPES, LoadedModel, ModelOptions, find_block_path, resolve_module
from steer_plugin.vectors.build import build_vector
from steer_plugin.vectors.metadata import Centre, Method, Pool
from steer_plugin.vectors.recipe import Recipe
from steer_plugin.vectors.request import RecordRequest, recorded, with_all_emotions
from steer_plugin.vectors.vector import SteeringVector


def train_vector(
    model: Any,
    tokenizer: Any,
    emotion: str,
    *,
    data: str | os.PathLike | None = None,
    split: str = "train",
    method: Method = "mean",
    top_k: int | None = None,
    centre: Centre = "none",
    neutral_pcs: int = 0,
    max_per_class: int | None = None,
    baseline: str = "neutral",
    selection: SelectionRule = "exclusive",
    seed: int = 0,
    dedupe: bool = False,
    template: str = "raw",
    batch_size: int = 8,
    layers: str | None = None,
    blocks: str | None = None,
    progress: bool = True,
    pool: Pool = "last",
) -> SteeringVector:
    """The steering vector of ``emotion`` on a loaded model: ``mean(emotion) - mean(baseline)`` of the
    block outputs (at the last token, or averaged over the tokens: ``pool``) over the selected GoEmotions
    texts, per layer.

    Args:
        model: a transformers causal LM (any device and dtype).
        tokenizer: its tokenizer.
        emotion: a GoEmotions label (``anger``) or an Ekman group (``ekman:anger``).
        data: a local GoEmotions folder (train.tsv, dev.tsv, test.tsv, emotions.txt); None: the hub dataset.
        split: ``train``, ``validation`` (= ``dev``) or ``test``.
        method: ``mean`` (the full difference), ``top_k`` (its ``top_k`` largest entries per layer), ``pca``
            or ``probe`` (per-text directions at the mean difference's norm; see ``build_vector``).
        top_k: neurons kept per layer by ``method="top_k"``.
        centre: ``none`` (against ``baseline``) or ``emotions`` (against the mean of the 27 emotions' class
            means; records them all).
        neutral_pcs: project the top K principal components of the baseline texts' states out (0: none).
        max_per_class: a seeded sample (``seed``) of at most this many texts per class.
        baseline: the class the vector points away from.
        selection: ``exclusive`` (a text's labels are exactly the class) or ``any`` (the class is among them).
        seed: the seed of the ``max_per_class`` sample and of the ``pca`` pairing.
        dedupe: drop identical texts within a class.
        template: ``raw``, ``chat`` or a format string with ``{text}``: how a text is fed to the model.
        batch_size: texts per forward pass while recording.
        layers: keep only these layers (e.g. ``10-19``; the others are zero); None: all.
        blocks: module path of the decoder blocks, if they are not found automatically.
        progress: show a progress bar while recording.
        pool: ``last`` (each text's last real token) or ``mean`` (the mean over its tokens after a leading
            BOS); recorded as the vector's ``pool``.

    Returns:
        The vector, ``[n_layers, hidden]``, with the model, the data selection and the counts in its metadata.
    """
    check_call(train_vector, locals())  # every argument's type and choice, before anything is read
    if emotion == "all":
        raise SteerError("train_vector builds one emotion's vector; name it (e.g. 'anger'), not 'all'")
    hidden = getattr(model.config, "hidden_size", None)
    recipe = Recipe(method, top_k, centre, neutral_pcs).check(hidden if is_int(hidden) else None)  # not after recording
    if layers is not None:  # the range against the model's blocks, before recording (minutes)
        parse_layers(layers, len(resolve_module(model, find_block_path(model, blocks))))
    name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    param = next(model.parameters(), None)
    dtype = str(param.dtype).removeprefix("torch.") if param is not None else "auto"
    request = RecordRequest(
        model=ModelOptions(name, dtype=dtype if dtype in DTYPES else "auto", blocks=blocks),
        emotion=emotion,
        baseline=baseline,
        split=split,
        data_dir=str(data) if data is not None else None,
        selection=selection,
        max_per_class=max_per_class,
        seed=seed,
        dedupe=dedupe,
        template=template,
        batch_size=batch_size,
        progress=progress,
        pool=pool,
    )
    if centre == "emotions":
        request = with_all_emotions(request)
    per_text = recipe.per_text
    with recorded(request, LoadedModel(model, tokenizer, name), per_text=per_text) as rec:
        chosen = parse_layers(layers, rec.stats.shape[0]) if layers is not None else None
        return build_vector(
            rec.stats, request.emotion, request.baseline, method=method, top_k=top_k, layers=chosen, centre=centre,
            neutral_pcs=neutral_pcs, activations=rec.activations, seed=seed,
        )  # fmt: skip
