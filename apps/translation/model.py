"""Translation, many-to-many: an English sentence in, its Spanish translation out (or back).

An Elman encoder reads the source sentence in both directions; an Elman decoder writes the
translation word by word, starting from a state made of the encoder's final states, and looks
back at every encoder state through attention (Bahdanau et al., 2015, additive scoring):

    source (string)
      -> standardize_sentence, TextVectorization: word ids               # (batch, source_time)
      -> Embedding, Bidirectional(ElmanRNN(ElmanCell)): every state      # (batch, source_time, 2 * units)
         and the two final states -> Dense(tanh): the decoder's s_0      # (batch, units)
    target (string, teacher forcing in training)
      -> "[start] ... [end]" word ids, shifted right                    # (batch, target_time)
      -> Embedding, ElmanRNN(ElmanCell) from s_0: decoder states s_t    # (batch, target_time, units)
      -> attention of each s_t over the encoder states: context c_t     # (batch, target_time, 2 * units)
      -> Dense(tanh) of [s_t, c_t], Dense: logits of the next word      # (batch, target_time, vocabulary)

Training uses teacher forcing (the decoder reads the reference's previous word) and a loss
masked to the reference's words. Translating runs the decoder one step at a time from "[start]"
until "[end]" or `max_target_length` words, greedily or with beam search, in graph loops bounded
by tensors, so the exported SavedModel translates raw strings by itself:
`serving_default` (greedy) and `beam_search` (any beam width).

The app contract the shared core relies on: `NAME`, `Config`, `PRESETS`, `SMOKE`, `MONITOR`,
`EXAMPLES`, `load_data`, `build_model`, `search_space`, `export_signatures`,
`prediction_request`, `warmup_requests`, `describe_prediction`, `evaluation_report` and `headline`.
"""

import collections
import dataclasses
import json
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from elman import decoding
from elman.text import (END, START, MaskedAccuracy, MaskedCrossentropy, SequenceLength,
                        teacher_forcing)
from elman.datasets.anki import load_anki, split_by_source
from elman.layers import ElmanCell, ElmanRNN

NAME = "translation"
# The metric that checkpoints, early stopping and the tuner maximize: the share of the
# reference's next words predicted right under teacher forcing.
MONITOR = "val_accuracy"
DIRECTIONS = ("eng-spa", "spa-eng")
# What `elman demo` shows the exported model.
EXAMPLES = ("I love you.", "Where is the train station?", "Tom is reading a book.")
# What `elman evaluate --set` may change: decoding only, not the trained model.
EVALUATION_SETTINGS = ("beam_width", "length_penalty")


@dataclasses.dataclass(frozen=True)
class Config:
    # Where the data is: empty means $ELMAN_DATA_DIR, and without it the copy shipped with elman.
    data_dir: str = ""
    # eng-spa: English to Spanish; spa-eng: Spanish to English.
    direction: str = "eng-spa"
    # Pairs read from the start of the file, which runs from short sentences to long ones
    # (0: all of them).
    max_pairs: int = 0
    # Keeps only the pairs whose every word is among the N most common words of its language
    # in the pairs read, so that every word is seen often enough to be learned (0: all pairs).
    common_words: int = 0
    # Shares of the distinct source sentences held out (all translations of a sentence go to
    # the same split).
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    # Words kept in each vocabulary (the most frequent ones in the training pairs).
    source_vocabulary_size: int = 15000
    target_vocabulary_size: int = 15000
    # Words read from a source sentence (longer ones are cut), and the longest translation
    # written (also the longest target trained on), not counting "[start]" and "[end]".
    max_source_length: int = 40
    max_target_length: int = 40
    embedding_dim: int = 256
    # Size of the Elman state: the decoder's, and the encoder's in each direction.
    hidden_units: int = 256
    # f, the state activation of the cells.
    activation: str = "tanh"
    # Dropout of the embeddings and of the attentional state before the output layer.
    dropout: float = 0.2
    learning_rate: float = 1e-3
    # Gradient clipping by global norm (0 disables it).
    clipnorm: float = 1.0
    batch_size: int = 64
    # Groups of sentence lengths batched apart (padding is computed too); 0: plain batches.
    length_buckets: int = 8
    epochs: int = 9
    # Epochs without improvement of MONITOR before early stopping.
    patience: int = 2
    # Beam search: the width `elman evaluate` reports beside greedy decoding, and the length
    # penalty alpha (scores divided by length ** alpha; 0 favours short translations).
    beam_width: int = 4
    length_penalty: float = 0.6
    seed: int = 0


# A tiny preset for tests: seconds, not minutes.
SMOKE = Config(max_pairs=3000, source_vocabulary_size=2000, target_vocabulary_size=2000,
               max_source_length=20, max_target_length=20, embedding_dim=32, hidden_units=32,
               batch_size=32, learning_rate=3e-3, epochs=10, validation_fraction=0.1,
               test_fraction=0.1)
# Named presets (`elman train translation --preset NAME`): "default" is the best measured.
# What `elman demo` trains: the 10,354 pairs made of each language's 500 most common words
# (short everyday sentences, 5.4 English words on average), about two minutes on 2 cores
# (docs/experiments.md has the variants measured).
DEMO = dataclasses.replace(SMOKE, max_pairs=0, common_words=500, embedding_dim=64,
                           hidden_units=128, batch_size=64, epochs=20, patience=3)
PRESETS = {"default": Config(), "demo": DEMO, "smoke": SMOKE}


def search_space(hp, config):
    """The tuner's search space: returns `config` with the searched values set from `hp`."""
    return dataclasses.replace(
        config,
        hidden_units=hp.Choice("hidden_units", [128, 256, 512]),
        embedding_dim=hp.Choice("embedding_dim", [128, 256]),
        learning_rate=hp.Float("learning_rate", 3e-4, 3e-3, sampling="log"),
        clipnorm=hp.Choice("clipnorm", [0.5, 1.0, 5.0]),
        dropout=hp.Float("dropout", 0.0, 0.5, step=0.1),
    )


# Text.

@keras.saving.register_keras_serializable(package="elman")
def standardize_sentence(sentence):
    """Standardizes a batch of sentences: `(batch,)` string -> `(batch,)` string of words.

    Lower case (accented capitals too), invalid UTF-8 replaced, typographic apostrophes made
    plain; `. , ! ? ¿ ¡` become words of their own, as Spanish writes `¿` and `¡` before a
    question or exclamation; every other character that is not a letter (accents and combining
    marks included), a digit or an apostrophe becomes a space.
    """
    sentence = tf.strings.unicode_transcode(sentence, "UTF-8", "UTF-8", errors="replace",
                                            replacement_char=0xFFFD)
    sentence = tf.strings.lower(sentence, encoding="utf-8")
    sentence = tf.strings.regex_replace(sentence, "[’‘´`]", "'")
    sentence = tf.strings.regex_replace(sentence, "([.,!?¿¡])", r" \1 ")
    sentence = tf.strings.regex_replace(sentence, r"[^\p{L}\p{M}\p{N}'.,!?¿¡]+", " ")
    return tf.strings.strip(sentence)


@keras.saving.register_keras_serializable(package="elman")
def standardize_target(sentence):
    """`standardize_sentence`, between the words "[start]" and "[end]" (which standardized text
    can never contain, as it has no brackets)."""
    return tf.strings.join([START + " ", standardize_sentence(sentence), " " + END])


def detokenize(words):
    """Joins standardized words back into text: `(batch,)` string -> `(batch,)` string."""
    words = tf.strings.regex_replace(words, " ([.,!?])", r"\1")
    return tf.strings.regex_replace(words, "([¿¡]) ", r"\1")


def _source_key(sentence):
    """The identity of a source sentence for the split: lower-case words, no punctuation."""
    return " ".join(re.findall(r"\w+", sentence.lower()))


# Data.

@dataclasses.dataclass
class Data:
    """The splits as `tf.data` datasets of `({"source", "target"}, labels)` batches, the test
    pairs as text (for BLEU), and the vocabularies."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    test_pairs: list
    source_vocabulary: list
    target_vocabulary: list
    source: str


def _vectorizers(config, source_vocabulary=None, target_vocabulary=None):
    source = keras.layers.TextVectorization(
        max_tokens=config.source_vocabulary_size, standardize=standardize_sentence,
        vocabulary=source_vocabulary, name="source_vectorizer")
    target = keras.layers.TextVectorization(
        max_tokens=config.target_vocabulary_size, standardize=standardize_target,
        vocabulary=target_vocabulary, name="target_vectorizer")
    return source, target


def load_data(config):
    """Reads the pairs, orients them by `config.direction`, splits them by source sentence and
    builds both vocabularies from the training pairs."""
    if config.direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, "
                         f"received direction={config.direction!r}")
    for name in ("max_pairs", "common_words"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be 0 (all) or positive, "
                             f"received {getattr(config, name)}")
    loaded = load_anki(config.data_dir or None)
    pairs = loaded["pairs"][:config.max_pairs or None]
    selection = ""
    if config.common_words:
        pairs = of_common_words(pairs, config.common_words)
        selection = f", the {len(pairs):,} pairs of the {config.common_words} most common words"
    if config.direction == "spa-eng":
        pairs = [(spanish, english) for english, spanish in pairs]
    splits = split_by_source(pairs, lambda pair: _source_key(pair[0]),
                             config.validation_fraction, config.test_fraction)
    if not all(splits.values()):
        raise ValueError(f"the split left an empty part ({ {k: len(v) for k, v in splits.items()} }"
                         " pairs): use more data or larger fractions")
    source_vectorizer, target_vectorizer = _vectorizers(config)
    train_sources, train_targets = (list(column) for column in zip(*splits["train"]))
    source_vectorizer.adapt(tf.data.Dataset.from_tensor_slices(train_sources).batch(2048))
    target_vectorizer.adapt(tf.data.Dataset.from_tensor_slices(train_targets).batch(2048))
    target_length = SequenceLength(config.max_target_length + 2)

    def labelled(inputs):
        _, labels = teacher_forcing(target_length(target_vectorizer(inputs["target"])))
        return inputs, labels

    def dataset(split_pairs, shuffle):
        sources, targets = zip(*split_pairs)
        data = tf.data.Dataset.from_tensor_slices({"source": tf.constant(sources),
                                                   "target": tf.constant(targets)})
        if shuffle:
            data = data.shuffle(len(sources), seed=config.seed, reshuffle_each_iteration=True)
        data = batch_by_length(data, config.batch_size, config.length_buckets)
        data = data.map(labelled, num_parallel_calls=tf.data.AUTOTUNE)
        return data.prefetch(tf.data.AUTOTUNE)

    return Data(
        train=dataset(splits["train"], shuffle=True),
        validation=dataset(splits["validation"], shuffle=False),
        test=dataset(splits["test"], shuffle=False),
        test_pairs=splits["test"],
        source_vocabulary=source_vectorizer.get_vocabulary(),
        target_vocabulary=target_vectorizer.get_vocabulary(),
        source=f"{loaded['source']} ({config.direction}{selection}: {len(splits['train'])} train, "
               f"{len(splits['validation'])} validation, {len(splits['test'])} test pairs)",
    )


def of_common_words(pairs, count):
    """The pairs whose every word is among the `count` most common words of its language.

    Words are those of `standardize_sentence` (punctuation included), counted over `pairs`;
    ties are broken by first appearance. Returns the kept pairs in their order.
    """
    columns = [[sentence.decode() for sentence in standardize_sentence(
        tf.constant(list(column))).numpy()] for column in zip(*pairs)]
    common = [{word for word, _ in collections.Counter(
        word for sentence in column for word in sentence.split()).most_common(count)}
        for column in columns]
    return [pair for pair, *sentences in zip(pairs, *columns)
            if all(set(sentence.split()) <= words for sentence, words in zip(sentences, common))]


def batch_by_length(pairs, batch_size, buckets):
    """Batches `{"source", "target"}` string pairs of similar length together.

    A batch is padded to its longest sentence, so a random batch of short sentences with one
    long one costs as much as a batch of long ones; most pairs are short (7 words on average).
    `buckets` (>= 2) groups the pairs by the word count of the longer side, at boundaries spread
    geometrically from 4 to 32 words, and batches each group alone; 0 or 1 batches in order.
    Shuffled input stays shuffled within each group.
    """
    if buckets < 2:
        return pairs.batch(batch_size)
    boundaries = (np.unique(np.round(np.geomspace(4, 32, buckets - 1)).astype(int)).tolist()
                  if buckets > 2 else [8])

    def words(pair):  # An estimate: spaces, not standardized words.
        return tf.maximum(tf.size(tf.strings.split(pair["source"])),
                          tf.size(tf.strings.split(pair["target"])))

    return pairs.bucket_by_sequence_length(words, boundaries,
                                           [batch_size] * (len(boundaries) + 1))


# The model.

def _recurrent_layers(config, recurrent_layer):
    """The encoder's and the decoder's recurrent layers: Elman, or copies of a template."""
    if recurrent_layer is None:
        def make(name, **kwargs):
            return ElmanRNN(ElmanCell(config.hidden_units, activation=config.activation),
                            return_sequences=True, name=name, **kwargs)
    else:
        template = recurrent_layer.get_config()
        if template.get("units") != config.hidden_units:
            raise ValueError(f"recurrent_layer must have hidden_units={config.hidden_units} "
                             f"units, received units={template.get('units')}")

        def make(name, **kwargs):
            return recurrent_layer.__class__.from_config(
                {**template, "return_sequences": True, "return_state": False, "name": name,
                 **kwargs})
    encoder = keras.layers.Bidirectional(make("encoder_rnn", return_state=True), name="encoder")
    return encoder, make("decoder")


def encode(layers, source):
    """Source strings -> `(source, decoder_initial_state)`.

    `source` holds what attention reads, computed once per sentence: `ids` `(batch,
    source_time)`, the encoder's `states` `(batch, source_time, 2 * units)` and their attention
    `keys` (same shape). The decoder's initial state is `(batch, units)`. `layers` maps the
    layer names of `build_model` to the layers; the same function wires the training model and
    the decoding loops.
    """
    source_ids = layers["source_length"](layers["source_vectorizer"](source))
    embedded = layers["source_dropout"](layers["source_embedding"](source_ids))
    states, forward, backward = layers["encoder"](embedded, mask=ops.not_equal(source_ids, 0))
    initial_state = layers["decoder_initial_state"](ops.concatenate([forward, backward], -1))
    keys = layers["attention_key"](states)
    return {"ids": source_ids, "states": states, "keys": keys}, initial_state


def predict_words(layers, decoder_states, source):
    """Decoder states `(batch, time, units)` -> logits of the next word `(batch, time, vocab)`;
    `source` as returned by `encode`."""
    query = layers["attention_query"](decoder_states)  # (batch, time, 2 * units)
    context = layers["attention"]([query, source["states"], source["keys"]],
                                  mask=[None, ops.not_equal(source["ids"], 0)])
    attentional = layers["attentional_state"](ops.concatenate([decoder_states, context], -1))
    return layers["next_word"](layers["output_dropout"](attentional))


def _attention_layers(config):
    """The attention's layers: query and key projections and additive scoring (Bahdanau:
    v . tanh(W_q s_t + W_k h_j), bounded scores that keep learning)."""
    width = 2 * config.hidden_units
    return {
        "attention_query": keras.layers.Dense(width, use_bias=False, name="attention_query"),
        "attention_key": keras.layers.Dense(width, name="attention_key"),
        "attention": keras.layers.AdditiveAttention(name="attention"),
    }


def build_model(config, data, recurrent_layer=None):
    """Builds and compiles the translator for teacher-forced training.

    Inputs `source` and `target`, `(batch,)` strings; output the logits of each next word of the
    target, `(batch, target_time, target_vocabulary)`, masked to the target's words.

    Args:
        config: the `Config`.
        data: the loaded `Data` (its vocabularies are built into the model).
        recurrent_layer: optional Keras recurrent layer with a single state (e.g.
            `keras.layers.GRU(256)`) used as a template for the encoder and the decoder instead
            of `ElmanRNN(ElmanCell)`; the benchmark's reference uses it to train in exactly the
            same pipeline.
    """
    source_vectorizer, target_vectorizer = _vectorizers(config, data.source_vocabulary,
                                                        data.target_vocabulary)
    encoder, decoder = _recurrent_layers(config, recurrent_layer)
    layers = {
        "source_vectorizer": source_vectorizer,
        "source_length": SequenceLength(config.max_source_length, name="source_length"),
        "source_embedding": keras.layers.Embedding(len(data.source_vocabulary),
                                                   config.embedding_dim, name="source_embedding"),
        "source_dropout": keras.layers.Dropout(config.dropout, name="source_dropout"),
        "encoder": encoder,
        "decoder_initial_state": keras.layers.Dense(config.hidden_units, activation="tanh",
                                                    name="decoder_initial_state"),
        "target_vectorizer": target_vectorizer,
        # "[start]", up to max_target_length words and "[end]".
        "target_length": SequenceLength(config.max_target_length + 2, name="target_length"),
        "target_embedding": keras.layers.Embedding(len(data.target_vocabulary),
                                                   config.embedding_dim, name="target_embedding"),
        "target_dropout": keras.layers.Dropout(config.dropout, name="target_dropout"),
        "decoder": decoder,
        **_attention_layers(config),
        "attentional_state": keras.layers.Dense(config.hidden_units, activation="tanh",
                                                name="attentional_state"),
        "output_dropout": keras.layers.Dropout(config.dropout, name="output_dropout"),
        "next_word": keras.layers.Dense(len(data.target_vocabulary), name="next_word"),
    }
    source = keras.Input(shape=(), dtype="string", name="source")
    target = keras.Input(shape=(), dtype="string", name="target")
    encoded, initial_state = encode(layers, source)
    decoder_inputs, _ = teacher_forcing(layers["target_length"](target_vectorizer(target)))
    embedded = layers["target_dropout"](layers["target_embedding"](decoder_inputs))
    decoder_states = decoder(embedded, initial_state=[initial_state],
                             mask=ops.not_equal(decoder_inputs, 0))
    logits = predict_words(layers, decoder_states, encoded)
    model = keras.Model({"source": source, "target": target}, logits, name="translation_elman")
    optimizer = keras.optimizers.Adam(config.learning_rate, clipnorm=config.clipnorm or None)
    model.compile(optimizer, loss=MaskedCrossentropy(), metrics=[MaskedAccuracy(name="accuracy")])
    return model


# Translating: greedy and beam search in graph loops.

class _Layers:
    """The trained model's layers by name, for `encode` and `predict_words`."""

    def __init__(self, model):
        self.model = model

    def __getitem__(self, name):
        return self.model.get_layer(name)


class Translator(decoding.TextDecoder):
    """Greedy and beam-search translation with a trained model's layers, as graph functions.

    The loops are `elman.decoding`'s, bounded by `max_target_length`; they stop early when every
    translation has written "[end]", and run inside an exported SavedModel.

    Args:
        model: a model from `build_model` (trained).
        length_penalty: alpha; beam search ranks finished translations by
            `log P / length ** alpha`.

    Example:

    ```python
    translator = Translator(model)
    translator.greedy(tf.constant(["I love you."]))  # [b"te quiero."]
    translator.beam_search(tf.constant(["I love you."]), beam_width=4)
    ```
    """

    def __init__(self, model, length_penalty=0.6):
        self.layers = _Layers(model)
        super().__init__(self.layers["target_vectorizer"], self.layers["target_length"],
                         length_penalty)
        self.cell = self.layers["decoder"].cell

    def _step(self, tokens, state, context):
        """One decoder step: `(batch,)` tokens, `(batch, units)` state -> log P of the next
        word `(batch, vocabulary)`, new state. `context`: the source as `encode` returns it."""
        embedded = self.layers["target_embedding"](tokens)  # (batch, embedding_dim)
        output, new_state = self.cell(embedded, [state], training=False)
        new_state = new_state[0] if isinstance(new_state, (list, tuple)) else new_state
        logits = predict_words(self.layers, output[:, None, :], context)
        return self.next_word(logits[:, 0, :]), new_state

    def _to_text(self, ids):
        """Word ids `(batch, time)` -> translations `(batch,)`: the words before "[end]"."""
        return detokenize(self.words(ids))

    def greedy(self, sentence):
        """Translates `(batch,)` strings, choosing the most probable word at every step."""
        source, state = encode(self.layers, sentence)
        return self._to_text(self.search(state, source))

    def beam_search(self, sentence, beam_width):
        """Translates `(batch,)` strings keeping the `beam_width` most probable partial
        translations at every step; returns `(translations, log_probabilities)`, `(batch,)`."""
        source, state = encode(self.layers, sentence)
        ids, log_probabilities = self.search(state, source, beam_width)
        return self._to_text(ids), log_probabilities


def export_signatures(model, length_penalty=0.6):
    """Serving signatures. `serving_default`: `sentence` string `[batch]` -> `translation`
    string `[batch]` (greedy). `beam_search`: `sentence` and `beam_width` (int32 scalar,
    1 to 64) -> `translation` and its `log_probability`."""
    translator = Translator(model, length_penalty)

    # Signatures loaded from a SavedModel do not enforce the declared shape; tf.ensure_shape
    # checks it when called: "Shape of tensor sentence [] is not compatible with expected
    # shape [?]" rather than an error from inside the text ops.

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentence")])
    def serving_default(sentence):
        return {"translation": translator.greedy(tf.ensure_shape(sentence, [None]))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentence"),
                                  tf.TensorSpec([], tf.int32, name="beam_width")])
    def beam_search(sentence, beam_width):
        sentence = tf.ensure_shape(sentence, [None])
        with tf.control_dependencies(decoding.check_beam_width(beam_width, 64)):
            translation, log_probability = translator.beam_search(sentence, beam_width)
        return {"translation": translation, "log_probability": log_probability}

    return {"serving_default": serving_default, "beam_search": beam_search}


def prediction_request(inputs):
    """Turns the command line's inputs (sentences) into the signature's keyword arguments."""
    if not inputs:
        raise ValueError("elman predict translation expects one or more sentences, received none")
    return {"sentence": tf.constant(list(inputs), tf.string)}


def warmup_requests():
    """`{signature: inputs}` that TF Serving replays when it loads the model: the examples."""
    return decoding.warmup_requests(prediction_request(EXAMPLES), Config.beam_width)


def describe_prediction(inputs, outputs):
    """One line per sentence: the sentence and its translation."""
    return [f"{text!r} -> {translation.decode()!r}"
            for text, translation in zip(inputs, outputs["translation"].numpy())]


# Evaluation: corpus BLEU and chrF with sacrebleu.

def headline(metrics):
    """`elman demo`'s summary of an evaluation: `(result, baseline)`."""
    return decoding.headline(
        metrics["report"], (("bleu", "BLEU {:.1f}"), ("chrf", "chrF {:.1f}"),
                            ("exact", "{:.0f}% of the sentences as a reference"),
                            ("within_one_word", "{:.0f}% within one word")),
        "copy_source", "copying the source sentence")


def words_for_matching(sentence):
    """The lower-case words of a sentence, without punctuation: what "the same translation"
    compares."""
    return re.findall(r"\w+", sentence.lower())


def word_edit_distance(first, second):
    """Levenshtein distance between two word lists: the fewest words inserted, deleted or
    replaced to turn one into the other."""
    row = list(range(len(second) + 1))
    for i, word in enumerate(first, 1):
        diagonal, row[0] = row[0], i
        for j, other in enumerate(second, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != other))
    return row[-1]


def match_shares(hypotheses, references):
    """Percentages of segments translated exactly as one of their references, and within one
    word (inserted, deleted or replaced) of one, comparing `words_for_matching`.

    Args:
        hypotheses: one translation per segment.
        references: per segment, its reference translations (one or more).
    """
    distances = [min(word_edit_distance(words_for_matching(hypothesis), words_for_matching(r))
                     for r in segment_references)
                 for hypothesis, segment_references in zip(hypotheses, references)]
    return {"exact": 100 * sum(d == 0 for d in distances) / len(distances),
            "within_one_word": 100 * sum(d <= 1 for d in distances) / len(distances)}


def score_translations(hypotheses, references):
    """Corpus BLEU and chrF (sacrebleu, case-insensitive: the model writes lower case).

    Args:
        hypotheses: one translation per segment.
        references: per segment, its reference translations (one or more).
    """
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU(lowercase=True)
    chrf = sacrebleu.metrics.CHRF(lowercase=True)
    streams = decoding.reference_streams(references)
    return {"bleu": bleu.corpus_score(hypotheses, streams).score,
            "chrf": chrf.corpus_score(hypotheses, streams).score,
            "signature": str(bleu.get_signature())}


def evaluation_report(model, data, run_dir=None, config=None, examples=8, log=print):
    """BLEU and chrF on the test pairs, greedy and beam search, with example translations.

    Each distinct test source is translated once; BLEU scores every test pair against its own
    reference (the standard single-reference corpus BLEU) and, as `bleu_all_references`, every
    distinct source against all of its reference translations in the file. `exact` and
    `within_one_word` are the percentages of distinct sources translated as one of their
    references, and within one word of one (`match_shares`).
    Writes `translations.tsv` (source, reference, greedy, beam) into `run_dir` if given.
    """
    config = config or Config()
    translator = Translator(model, config.length_penalty)
    greedy = tf.function(translator.greedy)
    beam = tf.function(lambda sentence: translator.beam_search(sentence, config.beam_width)[0])
    sources = list(dict.fromkeys(source for source, _ in data.test_pairs))
    references = {}
    for source, target in data.test_pairs:
        references.setdefault(source, []).append(target)
    report = {"test_pairs": len(data.test_pairs), "test_sources": len(sources),
              "beam_width": config.beam_width}
    outputs = {}
    for name, function in (("greedy", greedy), (f"beam{config.beam_width}", beam)):
        log(f"[elman] translation: translating {len(sources)} test sentences ({name})")
        translated = dict(zip(sources, decoding.decode_in_batches(function, sources)))
        outputs[name] = translated
        scores = score_translations([translated[s] for s, _ in data.test_pairs],
                                    [[t] for _, t in data.test_pairs])
        scores["bleu_all_references"] = score_translations(
            [translated[s] for s in sources], [references[s] for s in sources])["bleu"]
        scores.update(match_shares([translated[s] for s in sources],
                                   [references[s] for s in sources]))
        report[name] = scores
        log(f"[elman] translation: {name}: BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}, "
            f"BLEU with all references {scores['bleu_all_references']:.2f}; "
            f"{scores['exact']:.1f}% of the sentences as a reference, "
            f"{scores['within_one_word']:.1f}% within one word of one")
    # A baseline that knows no Spanish: the source sentence, copied.
    report["copy_source"] = score_translations([source for source, _ in data.test_pairs],
                                               [[target] for _, target in data.test_pairs])
    report["copy_source"].update(match_shares(sources, [references[s] for s in sources]))
    beam_name = f"beam{config.beam_width}"
    log("[elman] translation: examples (source | reference | greedy | beam)")
    for source in sources[:: max(1, len(sources) // examples)][:examples]:
        log(f"  {source}\n    reference: {references[source][0]}\n"
            f"    greedy:    {outputs['greedy'][source]}\n    beam:      {outputs[beam_name][source]}")
    if run_dir is not None:
        lines = ["source\treference\tgreedy\tbeam"]
        lines += [f"{s}\t{' | '.join(references[s])}\t{outputs['greedy'][s]}\t"
                  f"{outputs[beam_name][s]}" for s in sources]
        Path(run_dir, "translations.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        Path(run_dir, "bleu.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
