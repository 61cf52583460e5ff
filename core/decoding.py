"""Greedy and beam-search decoding in graph loops, written once for every app that writes text.

Both run a model's decoder one step at a time inside a `tf.while_loop` bounded by
`max_length` that stops early once every sequence has written its end token, so they work
inside `tf.function`s and exported SavedModels. The model is seen only through a step function:

    step(tokens, state, context) -> (log_probabilities, new_state)

with `tokens` `(batch,)` int64, `state` any nest of `(batch, ...)` tensors that changes every
step (e.g. the decoder's s_t), `context` any nest of `(batch, ...)` tensors that does not (e.g.
the encoder states), and `log_probabilities` `(batch, vocabulary)`. Padding (id 0) is written
after the end token; a finished sequence never changes again.
"""

import numpy as np
import tensorflow as tf

from elman.text import END, START, UNKNOWN

# Added to the log-probability of words that must not be written; finite so sums stay finite.
NEVER = -1e9


def greedy_search(step, state, context, start_id, end_id, max_length):
    """Writes the most probable word at every step.

    Args:
        step: the step function (see the module docstring).
        state, context: nests of `(batch, ...)` tensors.
        start_id, end_id: the ids of the start and end tokens.
        max_length: the most words written (the end token included).

    Returns:
        `(batch, time)` int64 ids, time <= max_length, 0 after the end token.
    """
    batch = tf.shape(tf.nest.flatten(context)[0])[0]
    tokens = tf.fill([batch], tf.cast(start_id, tf.int64))
    finished = tf.zeros([batch], tf.bool)
    ids = tf.zeros([batch, 0], tf.int64)

    def body(t, tokens, state, finished, ids):
        log_probabilities, state = step(tokens, state, context)
        tokens = tf.where(finished, tf.zeros_like(tokens),
                          tf.argmax(log_probabilities, axis=-1, output_type=tf.int64))
        finished = finished | tf.equal(tokens, end_id)
        return t + 1, tokens, state, finished, tf.concat([ids, tokens[:, None]], axis=1)

    state_shapes = tf.nest.map_structure(_loose_shape, state)
    *_, ids = tf.while_loop(
        lambda t, tokens, state, finished, ids: (t < max_length) & ~tf.reduce_all(finished),
        body, (tf.constant(0), tokens, state, finished, ids),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None]), state_shapes,
                          tf.TensorShape([None]), tf.TensorShape([None, None])))
    return ids


def beam_search(step, state, context, start_id, end_id, max_length, beam_width,
                length_penalty=0.6):
    """Keeps the `beam_width` most probable partial sequences at every step.

    Args:
        step, state, context, start_id, end_id, max_length: as for `greedy_search`.
        beam_width: int or int32 scalar tensor, at least 1; width 1 is exactly greedy.
        length_penalty: alpha; finished sequences are ranked by `log P / length ** alpha`.

    Returns:
        `(ids, log_probabilities)`: the best sequence `(batch, time)` int64 and its total
        log-probability `(batch,)`.
    """
    beam_width = tf.convert_to_tensor(beam_width, tf.int32)
    batch = tf.shape(tf.nest.flatten(context)[0])[0]

    def tile(x):  # (batch, ...) -> (batch * beam_width, ...), each row beam_width times.
        return tf.repeat(x, beam_width, axis=0)

    def by_beam(x, beam):  # Reorders (batch * beam_width, ...) rows by the chosen beams.
        shape = tf.shape(x)
        grouped = tf.reshape(x, tf.concat([[batch, beam_width], shape[1:]], 0))
        return tf.reshape(tf.gather(grouped, beam, batch_dims=1), shape)

    state, context = tf.nest.map_structure(tile, state), tf.nest.map_structure(tile, context)
    # Only the first beam is live at the start, so the beams do not all pick the same word.
    scores = tf.tile(tf.where(tf.range(beam_width) == 0, 0.0, NEVER)[None], [batch, 1])
    tokens = tf.fill([batch * beam_width], tf.cast(start_id, tf.int64))
    finished = tf.zeros([batch, beam_width], tf.bool)
    lengths = tf.zeros([batch, beam_width])
    sequences = tf.zeros([batch, beam_width, 0], tf.int64)

    def body(t, tokens, state, scores, finished, lengths, sequences):
        log_probabilities, state = step(tokens, state, context)
        vocabulary_size = tf.shape(log_probabilities)[-1]
        log_probabilities = tf.reshape(log_probabilities, [batch, beam_width, -1])
        # A finished sequence can only be continued by padding, at no cost.
        padding_only = tf.one_hot(0, vocabulary_size, on_value=0.0, off_value=NEVER)
        log_probabilities = tf.where(finished[..., None], padding_only, log_probabilities)
        # The best beam_width words of each beam hold the best beam_width continuations of
        # all; ranking words within a beam first makes width 1 exactly greedy (no rounding
        # from adding the beam's score before the comparison).
        word_scores, word_ids = tf.math.top_k(log_probabilities,
                                              k=tf.minimum(beam_width, vocabulary_size))
        candidates = tf.reshape(scores[..., None] + word_scores, [batch, -1])
        scores, chosen = tf.math.top_k(candidates, k=beam_width)  # (batch, beam_width)
        beam = chosen // tf.shape(word_ids)[-1]
        words = tf.gather(tf.reshape(tf.cast(word_ids, tf.int64), [batch, -1]), chosen,
                          batch_dims=1)
        was_finished = tf.gather(finished, beam, batch_dims=1)
        lengths = tf.gather(lengths, beam, batch_dims=1) + tf.cast(~was_finished, tf.float32)
        finished = was_finished | tf.equal(words, end_id)
        sequences = tf.concat([tf.gather(sequences, beam, batch_dims=1), words[..., None]], -1)
        state = tf.nest.map_structure(lambda x: by_beam(x, beam), state)
        return t + 1, tf.reshape(words, [-1]), state, scores, finished, lengths, sequences

    matrix = tf.TensorShape([None, None])
    *_, scores, finished, lengths, sequences = tf.while_loop(
        lambda t, *args: (t < max_length) & ~tf.reduce_all(args[3]),
        body, (tf.constant(0), tokens, state, scores, finished, lengths, sequences),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None]),
                          tf.nest.map_structure(_loose_shape, state), matrix, matrix, matrix,
                          tf.TensorShape([None, None, None])))
    ranked = scores / tf.maximum(lengths, 1.0) ** length_penalty
    best = tf.argmax(ranked, axis=-1, output_type=tf.int32)  # (batch,)
    return tf.gather(sequences, best, batch_dims=1), tf.gather(scores, best, batch_dims=1)


def ids_to_words(vocabulary, ids, skip_ids):
    """Word ids `(batch, time)` -> `(batch,)` strings of space-separated words, leaving out
    `skip_ids` (padding, start and end tokens)."""
    keep = tf.reduce_all(tf.not_equal(ids[..., None], tf.constant(list(skip_ids), ids.dtype)), -1)
    words = tf.ragged.boolean_mask(tf.gather(tf.constant(list(vocabulary)), ids), keep)
    return tf.strings.reduce_join(words, axis=-1, separator=" ")


def check_beam_width(beam_width, maximum):
    """In-graph checks that `beam_width` is in [1, maximum], with messages a client can read."""
    return [tf.debugging.assert_greater_equal(beam_width, 1,
                                              message="beam_width must be at least 1"),
            tf.debugging.assert_less_equal(beam_width, maximum,
                                           message=f"beam_width must be at most {maximum}")]


def warmup_requests(request, beam_width):
    """The warmup requests of an app with `serving_default` and `beam_search` signatures:
    `request` (the examples' inputs) for both, with `beam_width` (int32) for the beam."""
    return {"serving_default": request,
            "beam_search": {**request, "beam_width": tf.constant(beam_width, tf.int32)}}


def decode_in_batches(function, inputs, batch_size=256):
    """Runs a function of `(batch, ...)` inputs returning `(batch,)` strings over `inputs` (a
    list or an array) in batches; returns `str`s."""
    texts = []
    for start in range(0, len(inputs), batch_size):
        batch = tf.constant(inputs[start:start + batch_size])
        texts.extend(text.decode("utf-8") for text in function(batch).numpy())
    return texts


class TextDecoder:
    """What a trained text-writing model's decoding loops need besides its step: the target
    vocabulary's special words, the longest output, and the words never written.

    Subclasses define `_step(tokens, states, context)` (see the module docstring) and call
    `search` with the states and context they compute from their input.

    Args:
        vectorizer: the target `TextVectorization` layer (its vocabulary has "[start]" and
            "[end]").
        length_layer: the target's `elman.text.SequenceLength` ("[start]", words, "[end]").
        length_penalty: alpha of beam search's ranking `log P / length ** alpha`.
    """

    def __init__(self, vectorizer, length_layer, length_penalty=0.6):
        self.vocabulary = vectorizer.get_vocabulary()
        self.start_id, self.end_id = self.vocabulary.index(START), self.vocabulary.index(END)
        self.max_length = length_layer.max_length - 1
        self.length_penalty = float(length_penalty)
        # Words never written: padding (it marks the end), "[start]", and the out-of-vocabulary
        # word "[UNK]", which says nothing to a reader and never matches a reference.
        never = np.zeros(len(self.vocabulary), "float32")
        never[[0, self.start_id]] = NEVER
        if UNKNOWN in self.vocabulary:
            never[self.vocabulary.index(UNKNOWN)] = NEVER
        self._never = tf.constant(never)

    def next_word(self, logits):
        """Logits `(batch, vocabulary)` -> log-probabilities, never padding, "[start]" nor
        "[UNK]"."""
        return tf.nn.log_softmax(logits) + self._never

    def words(self, ids):
        """Ids `(batch, time)` -> `(batch,)` space-separated words, without special words."""
        return ids_to_words(self.vocabulary, ids, (0, self.start_id, self.end_id))

    def search(self, states, context, beam_width=None):
        """Greedy ids `(batch, time)` without `beam_width`; else beam search's
        `(ids, log_probabilities)`."""
        if beam_width is None:
            return greedy_search(self._step, states, context, self.start_id, self.end_id,
                                 self.max_length)
        return beam_search(self._step, states, context, self.start_id, self.end_id,
                           self.max_length, beam_width, self.length_penalty)


def headline(report, scores, baseline, baseline_name):
    """`elman demo`'s summary of a text-writing app's evaluation report: `(result, baseline)`.

    Args:
        report: the app's evaluation report, with a `beam<width>` entry of scores.
        scores: `(key, template)` pairs of the scores to show, e.g.
            `(("bleu", "BLEU {:.1f}"),)`: the template formats the report's value.
        baseline: the report's key of the trivial baseline's scores.
        baseline_name: what the baseline is, in words.
    """
    beam = next(name for name, entry in report.items()
                if name.startswith("beam") and isinstance(entry, dict))

    def listed(entry):
        return ", ".join(template.format(entry[key]) for key, template in scores)

    return f"{listed(report[beam])} ({beam})", f"{baseline_name}: {listed(report[baseline])}"


def reference_streams(references):
    """sacrebleu's reference streams from a list of reference lists of varying lengths (a
    missing reference is `None`)."""
    most = max(len(refs) for refs in references)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(most)]


def _loose_shape(x):
    """The shape invariant of a loop variable: batch (and any other) size may change."""
    return tf.TensorShape([None] * x.shape.rank)
