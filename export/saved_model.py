"""Wrap a trained encoder and decoder in the contract's signatures and write a versioned SavedModel.

The directory layout is TF Serving's: `<base>/<model_name>/<version>/saved_model.pb`, with warm-up
requests in `assets.extra/` (export/warmup.py), written to a temporary sibling first and renamed, so a
server polling the base path never sees half a model.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from export.conditioning import CONCEPTS_PER_IMAGE, Conditioner, ConditioningData
from export.generate import SearchInputs, SpecialIds, beam_search, check_search_settings, ids_to_text
from export.model import CaptionModelConfig, Decoder, ImageEncoder
from export.tokenizer import Tokenizer
from export.warmup import write_warmup_requests
from memefly.contract import (
    DECODE_STEP_REST,
    GENERATE_MAX_BEAM_WIDTH,
    GENERATE_SIGNATURE,
    METADATA_REST_SIGNATURE,
    PAD,
    START,
    TOKENIZE_SIGNATURE,
    ModelContract,
    SignatureSpec,
    signatures,
)
from memefly.paths import model_versions

_DTYPES = {"string": tf.string, "int32": tf.int32, "float32": tf.float32, "float16": tf.float16}


def input_signature(spec: SignatureSpec) -> list[tf.TensorSpec]:
    return [tf.TensorSpec(t.shape, _DTYPES[t.dtype], name=t.name) for t in spec.inputs]


class CaptionModule(tf.Module):
    """The exported model. Each signature takes and returns exactly the contract's tensors."""

    def __init__(
        self,
        encoder: ImageEncoder,
        decoder: Decoder,
        tokenizer: Tokenizer,
        contract: ModelContract,
        conditioner: Conditioner | None = None,
    ) -> None:
        super().__init__()
        # The Keras models are not part of the SavedModel's object graph: their tf.Variables are, through
        # `serving_variables`, so each weight is saved once and restored where the signatures read it.
        self.encoder = self._no_dependency(encoder)
        self.decoder = self._no_dependency(decoder)
        self.tokenizer = tokenizer
        self.contract = contract
        self.conditioner = conditioner
        self.contract_json = tf.constant(contract.to_json())
        # Tokens that are never a next word; masked before top-k so they are never proposed. `<unk>` is a
        # real target (rare words) whose probability `score` needs; the search declines to emit it.
        banned = [contract.special_tokens[t] for t in (PAD, START)]
        self.banned_mask = tf.constant([-1e9 if i in banned else 0.0 for i in range(contract.vocab_size)], tf.float32)
        encode = self._encode if conditioner is None else self._encode_conditioned
        self.encode = tf.function(encode, input_signature=input_signature(contract.encode))
        self.state_dtype = _DTYPES[contract.state_dtype]
        self.decode_step = tf.function(self._decode_step, input_signature=input_signature(contract.decode_step))
        if contract.decode_step_rest.name == DECODE_STEP_REST:
            self.decode_step_rest = tf.function(
                self._decode_step, input_signature=input_signature(contract.decode_step_rest)
            )
        self.metadata = tf.function(self._metadata, input_signature=[])
        self.metadata_rest = tf.function(self._metadata_rest, input_signature=input_signature(METADATA_REST_SIGNATURE))
        self.tokenize = tf.function(self._tokenize, input_signature=input_signature(TOKENIZE_SIGNATURE))
        self.score = tf.function(self._score, input_signature=input_signature(contract.score))
        self.generate = tf.function(self._generate, input_signature=input_signature(GENERATE_SIGNATURE))
        if contract.explain is not None:
            self.explain = tf.function(self._explain, input_signature=input_signature(contract.explain))
        self.start_id = contract.start_id
        self.end_id = contract.end_id
        self.serving_variables = serving_variables(self)

    def _encode(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"context": self.decoder.encode_context(self.encoder(image_bytes))}

    def _encode_conditioned(
        self, image_bytes: tf.Tensor, image_index: tf.Tensor, topic: tf.Tensor, style: tf.Tensor, style_rank: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        conditioner = self.conditioner
        features = self.encoder(image_bytes)
        concepts, concept_probs = conditioner.concepts(
            self.encoder.class_probabilities(features), tf.shape(image_bytes)[0]
        )
        default_topic = tf.gather(conditioner.default_topic_ids(concepts, concept_probs, features), image_index)
        topic_ids = conditioner.topic_ids(topic, default_topic)
        row_features = tf.gather(features, image_index)
        style_ids = conditioner.style_ids(style, style_rank, topic_ids, row_features)
        shown = conditioner.decoder_features(row_features, style_ids)
        return {
            "context": self.decoder.encode_context(shown, topic_ids, style_ids),
            "topic": conditioner.topic_text(topic_ids),
            "style": conditioner.style_text(style_ids),
            "concepts": concepts,
            "concept_probs": concept_probs,
        }

    def _decode_step(
        self, tokens: tf.Tensor, state: tf.Tensor, context: tf.Tensor, context_index: tf.Tensor, k: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        top_log_probs, top_ids, new_state = self._next_candidates(
            tokens, tf.cast(state, tf.float32), tf.gather(context, context_index), k
        )
        return {"top_log_probs": top_log_probs, "top_ids": top_ids, "state": tf.cast(new_state, state.dtype)}

    def _next_candidates(
        self, tokens: tf.Tensor, state: tf.Tensor, context_rows: tf.Tensor, k: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One step for each row: its k most likely next tokens, and the new state. `decode_step` and
        `generate` both step through here, so the in-graph search sees exactly what the gateway sees."""
        logits, new_state = self.decoder.step(tokens, state, context_rows)
        log_probs = tf.nn.log_softmax(logits + self.banned_mask)
        k = tf.clip_by_value(k, 1, tf.shape(log_probs)[-1])
        top = tf.math.top_k(log_probs, k=k)
        # Rounded as it would be on the wire, so `generate` and every transport step through equal states.
        new_state = tf.cast(tf.cast(new_state, self.state_dtype), tf.float32)
        return top.values, tf.cast(top.indices, tf.int32), new_state

    def _generate(
        self,
        image_bytes: tf.Tensor,
        prefix: tf.Tensor,
        beam_width: tf.Tensor,
        n_best: tf.Tensor,
        max_length: tf.Tensor,
        length_penalty: tf.Tensor,
        no_repeat_ngram_size: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        one_each = tf.debugging.assert_equal(
            tf.size(prefix), tf.size(image_bytes), message='prefix needs one entry per image ("" for none)'
        )
        with tf.control_dependencies([one_each]):
            prefix = tf.identity(prefix)
        images = tf.shape(image_bytes)[0]
        captions_per_row = n_best
        if self.conditioner is None:
            context = self._encode(image_bytes)["context"]
        else:
            # The gateway's rule: each of an image's captions takes its own style (the best fitting
            # first), with the image's concepts as its topic; one search a caption.
            # `n_best` counts captions, one a style, each the best of its own beam.
            captions = f"n_best must be between 1 and {GENERATE_MAX_BEAM_WIDTH}"
            checks = [
                *check_search_settings(SearchInputs(beam_width, 1, max_length, length_penalty, no_repeat_ngram_size)),
                tf.debugging.assert_greater_equal(n_best, 1, message=captions),
                tf.debugging.assert_less_equal(n_best, GENERATE_MAX_BEAM_WIDTH, message=captions),
            ]
            with tf.control_dependencies(checks):
                captions_per_row = tf.identity(n_best)
            image_index = tf.repeat(tf.range(images), captions_per_row)
            rows = tf.size(image_index)
            context = self._encode_conditioned(
                image_bytes,
                image_index,
                tf.fill([rows], ""),
                tf.fill([rows], ""),
                tf.tile(tf.range(captions_per_row), [images]),
            )["context"]
            prefix = tf.gather(prefix, image_index)
            n_best = tf.constant(1, tf.int32)
        prefix_ids, prefix_lengths = self.tokenizer(prefix)
        # As the gateway: a prefix of nothing but white space is no prefix.
        prefix_lengths = tf.where(tf.equal(tf.strings.strip(prefix), ""), 0, prefix_lengths)
        contract = self.contract
        found = beam_search(
            self._next_candidates,
            context,
            prefix_ids,
            prefix_lengths,
            SearchInputs(beam_width, n_best, max_length, length_penalty, no_repeat_ngram_size),
            SpecialIds(contract.start_id, contract.end_id, contract.sep_id, contract.unk_id, contract.pad_id),
            contract.state_size,
            contract.max_length,
        )
        if self.conditioner is not None:
            found = {
                name: tf.reshape(value, tf.concat([[images, captions_per_row], tf.shape(value)[2:]], axis=0))
                for name, value in found.items()
            }
        shape = tf.shape(found["lengths"])
        text = ids_to_text(
            tf.reshape(found["ids"], [shape[0] * shape[1], -1]),
            tf.reshape(found["lengths"], [-1]),
            self.tokenizer.vocabulary(),
            contract,
        )
        return {**found, "text": tf.reshape(text, shape)}

    def _tokenize(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        ids, lengths = self.tokenizer(text)
        return {"ids": ids, "lengths": lengths}

    def _score(self, context: tf.Tensor, text: tf.Tensor) -> dict[str, tf.Tensor]:
        ids, lengths = self.tokenizer(text)
        rows = tf.shape(ids)[0]
        inputs = tf.concat([tf.fill([rows, 1], self.start_id), ids], axis=1)
        # Targets are the ids shifted left with `<end>` written just after each caption's last word.
        targets = tf.concat([ids, tf.zeros([rows, 1], tf.int32)], axis=1)
        end_positions = tf.one_hot(lengths, tf.shape(targets)[1], dtype=tf.int32)
        targets += end_positions * self.end_id
        log_probs = tf.nn.log_softmax(self.decoder.decode(inputs, context) + self.banned_mask)
        picked = tf.gather(log_probs, targets, batch_dims=2)
        mask = tf.sequence_mask(lengths + 1, tf.shape(targets)[1], dtype=tf.float32)
        return {"log_prob": tf.reduce_sum(picked * mask, axis=1), "num_tokens": lengths + 1}

    def _explain(self, context: tf.Tensor, text: tf.Tensor) -> dict[str, tf.Tensor]:
        ids, lengths = self.tokenizer(text)
        inputs = tf.concat([tf.fill([tf.shape(ids)[0], 1], self.start_id), ids], axis=1)
        words = tf.gather(self.tokenizer.vocabulary(), ids)
        return {"attention": self.decoder.attention_maps(inputs, context), "words": words, "num_words": lengths}

    def _metadata_rest(self, unused: tf.Tensor) -> dict[str, tf.Tensor]:
        del unused
        return self._metadata()

    def _metadata(self) -> dict[str, tf.Tensor]:
        return {"vocabulary": self.tokenizer.vocabulary(), "contract": self.contract_json}


def serving_variables(module: tf.Module) -> list[tf.Variable]:
    """The tf.Variables behind every Keras variable the module holds, to be tracked by the module itself.

    TF Serving loads a SavedModel as a graph: it runs the checkpoint's restore op, then the signatures.
    Keras 3 checkpoints a Keras variable as a copy of its tf.Variable (another variable handle), while
    the signatures read the tf.Variable's own handle, so without these the restore fills handles no
    signature reads and the first call fails with "Could not find variable ..." (the warm-up, so the
    version never loads; keras-team/keras#19274). `tf.saved_model.load` restores through the object
    graph and never shows it; `export.serving_check` loads as TF Serving does.
    """
    layers = module._flatten(predicate=lambda leaf: isinstance(leaf, keras.Layer))
    found: dict[int, tf.Variable] = {}
    for layer in layers:
        for variable in layer.variables:
            value = variable.value if isinstance(variable, keras.Variable) else variable
            found.setdefault(id(value), value)
    return list(found.values())


def attention_grid(decoder: Decoder) -> tuple[int, ...]:
    """The square grid a decoder attends over ((7, 7) for a 7×7 feature map), or () for none."""
    positions = getattr(decoder, "positions", 0)
    side = math.isqrt(positions)
    return (side, side) if hasattr(decoder, "attention_maps") and positions and side * side == positions else ()


def caption_module(
    model_config: CaptionModelConfig,
    encoder: ImageEncoder,
    decoder: Decoder,
    tokenizer: Tokenizer,
    vocabulary: list[str],
    conditioning: ConditioningData | None = None,
) -> CaptionModule:
    conditioner = None
    if conditioning is not None and getattr(decoder, "conditioned", False):
        conditioner = Conditioner(conditioning, vocabulary, tokenizer.table)
    contract = ModelContract(
        model_name=model_config.model_name,
        decoder=model_config.decoder,
        encoder=model_config.encoder,
        vocab_size=len(vocabulary),
        max_length=model_config.max_length,
        image_size=encoder.image_size,
        state_size=decoder.state_size,
        context_shape=decoder.context_shape,
        state_dtype=decoder.state_dtype,
        conditioned=conditioner is not None,
        styles=tuple(conditioner.styles) if conditioner else (),
        concept_words=tuple(conditioner.concept_words) if conditioner else (),
        concepts_per_image=CONCEPTS_PER_IMAGE if conditioner else 0,
        attention_grid=attention_grid(decoder),
    )
    return CaptionModule(encoder, decoder, tokenizer, contract, conditioner)


def next_version(model_dir: Path) -> int:
    return max(model_versions(model_dir, loadable_only=False), default=0) + 1


def export_saved_model(module: CaptionModule, model_dir: Path, version: int | None = None) -> Path:
    """Write `module` as `<model_dir>/<version>/`; returns that directory."""
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    target = model_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists; versions are immutable, pick a new one")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        # Each of the contract's signatures is the module's function of the same name.
        exported = {spec.name: getattr(module, spec.name) for spec in signatures(module.contract)}
        tf.saved_model.save(module, str(staging), signatures=exported)
        write_warmup_requests(staging, module.contract)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
