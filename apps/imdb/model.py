"""IMDB sentiment, many-to-one: the raw text of a review in, the probability that it is positive out.

The model reads a review word by word with Elman cells in both directions and pools their states:

    review (string)
      -> standardize_review: valid UTF-8, lower case, no HTML line breaks, no punctuation
      -> TextVectorization: word ids, cut to `sequence_length`             # (batch, time)
      -> WordDropout (training only): some words become the unknown word
      -> Embedding, masking the padding                                    # (batch, time, embedding_dim)
      -> (training) + the perturbation that raises the loss most (adversarial training)
      -> Bidirectional(ElmanRNN(ElmanCell)), every state s_t             # (batch, time, 2 * hidden_units)
      -> StatePooling: max and mean of s_t over the review's words         # (batch, 4 * hidden_units)
      -> Dense(1, sigmoid): P(positive)                                    # (batch, 1)

With `ensemble_members` > 1 (the "ensemble" preset), everything after TextVectorization is built
once per member, with weights of its own, and `EnsembleAverage` serves the mean of the members'
probabilities.

Text processing is part of the model, so the `.keras` file and the exported SavedModel take raw
strings: empty reviews, megabyte-long ones, non-ASCII text and invalid UTF-8 bytes all give a
probability. The app contract the shared core relies on: `NAME`, `Config`, `PRESETS`, `SMOKE`,
`MONITOR`, `EXAMPLES`, `load_data`, `build_model`, `search_space`, `export_signatures`,
`prediction_request`, `warmup_requests`, `describe_prediction`, `evaluation_report` and `headline`.
"""

import dataclasses
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from elman.datasets.imdb import load_imdb
from elman.layers import (AdversarialModel, AveragingAdam, ElmanCell, ElmanRNN,
                          EmbeddingPerturbation, EnsembleAverage, StatePooling, WordDropout,
                          ensemble_binary_crossentropy)

NAME = "imdb"
# The metric that checkpoints, early stopping and the tuner maximize (`Config.monitor` can
# choose the validation loss instead).
MONITOR = "val_accuracy"
LABELS = ("negative", "positive")
# What `elman demo` shows the exported model.
EXAMPLES = (
    "A moving, beautifully acted film. The best thing I have seen all year.",
    "Dull, predictable and far too long. I want those two hours back.",
)


@dataclasses.dataclass(frozen=True)
class Config:
    # Where the data is: empty means $ELMAN_DATA_DIR, and without it the shipped sample.
    data_dir: str = ""
    # Fraction of the official training reviews held out for validation (the test split is kept
    # for the final figure only): the last reviews by id of each label, so whole movies, as the
    # official test split has movies of its own (see `validation_indices`).
    validation_fraction: float = 0.1
    # Words kept in the vocabulary (the most frequent ones in the training reviews).
    vocabulary_size: int = 30000
    # Words read per review; longer reviews are cut, shorter ones padded and masked.
    sequence_length: int = 800
    embedding_dim: int = 64
    # Size of the Elman state s_t in each direction (the cell reads the review both ways).
    hidden_units: int = 64
    # Training only: the probability of replacing a word by the out-of-vocabulary id (whole-word
    # dropout), of dropping whole embedding channels, and dropout before the classifier.
    word_dropout: float = 0.25
    embedding_dropout: float = 0.3
    dropout: float = 0.5
    learning_rate: float = 1e-3
    # Gradient clipping by global norm (0 disables it): BPTT over 800 steps can explode.
    clipnorm: float = 1.0
    # Adversarial training (Miyato et al., 2017): each step also trains on the embedded words
    # moved, along the loss gradient, by this fraction of their norm; 0 disables it. Doubles
    # the cost of a step; without it, 87.84% test accuracy (docs/experiments.md).
    adversarial_epsilon: float = 0.02
    # Members of an ensemble trained side by side in one model, each on its own loss, from
    # its own initial weights and dropout draws; the model serves the mean of their
    # probabilities (`EnsembleAverage`). Each member costs the time of one model, in training
    # and in serving.
    ensemble_members: int = 1
    # Stochastic weight averaging (Izmailov et al., 2018; `AveragingAdam`): from the end of
    # this epoch on, the weights are sampled four times an epoch into an equal-weight mean,
    # which validation, checkpoints, early stopping and the final model use; 0 trains without.
    weight_averaging_start_epoch: int = 0
    batch_size: int = 64
    # Batch reviews of similar length together, in this many groups by word count (see
    # `batch_by_length`); 0 or 1 batches them in random order, each batch padded to its
    # longest review. 8 groups run 2.8 times fewer steps for the same accuracy.
    length_buckets: int = 8
    epochs: int = 8
    # Epochs without improvement of the monitored metric before early stopping.
    patience: int = 2
    # What checkpoints, early stopping and the tuner go by: "val_accuracy" or "val_loss";
    # empty: MONITOR (validation accuracy). On 2,500 validation reviews accuracy moves in
    # steps of 0.04 points around a noise of 0.7; the loss, which reads how sure each answer
    # is, ranks an ensemble's epochs more steadily.
    monitor: str = ""
    seed: int = 0


# Three classifiers with weight averaging, chosen by validation loss: the best accuracy
# measured (README), at three times the cost of serving a review.
ENSEMBLE = Config(ensemble_members=3, weight_averaging_start_epoch=1, monitor="val_loss")
# What `elman demo` trains on the shipped sample (4,500 training reviews of at most 200 words):
# about 20 seconds on 2 cores, 85% on the sample's 1,000 test reviews.
DEMO = Config(vocabulary_size=10000, sequence_length=200, embedding_dim=32, hidden_units=32,
              batch_size=32, epochs=6, adversarial_epsilon=0.0)
# A tiny preset for tests: seconds, not minutes (large batches: few steps over the sample).
SMOKE = Config(vocabulary_size=2000, sequence_length=64, embedding_dim=16, hidden_units=8,
               batch_size=256, epochs=2)
# Named presets (`elman train imdb --preset NAME`): "default" is the best single model measured.
PRESETS = {"default": Config(), "ensemble": ENSEMBLE, "demo": DEMO, "smoke": SMOKE}


def search_space(hp, config):
    """The tuner's search space: returns `config` with the searched values set from `hp`."""
    return dataclasses.replace(
        config,
        hidden_units=hp.Choice("hidden_units", [32, 64, 128]),
        embedding_dim=hp.Choice("embedding_dim", [32, 64, 128]),
        learning_rate=hp.Float("learning_rate", 3e-4, 3e-3, sampling="log"),
        dropout=hp.Float("dropout", 0.2, 0.6, step=0.1),
        word_dropout=hp.Float("word_dropout", 0.0, 0.4, step=0.1),
        clipnorm=hp.Choice("clipnorm", [0.5, 1.0, 5.0]),
        adversarial_epsilon=hp.Choice("adversarial_epsilon", [0.0, 0.01, 0.02, 0.05]),
    )


@dataclasses.dataclass
class Data:
    """The splits as `tf.data` datasets of `(review, label)` batches, and the vocabulary."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    vocabulary: list
    source: str


def _clean_review(review):
    # Invalid UTF-8 bytes become U+FFFD instead of failing the string ops below.
    review = tf.strings.unicode_transcode(review, "UTF-8", "UTF-8", errors="replace",
                                          replacement_char=0xFFFD)
    review = tf.strings.lower(review, encoding="utf-8")
    return tf.strings.regex_replace(review, r"<br\s*/?>", " ")


@keras.saving.register_keras_serializable(package="elman")
def standardize_review(review):
    """Standardizes a batch of raw reviews: `(batch,)` string -> `(batch,)` string: valid UTF-8,
    lower case, words of letters, digits and apostrophes separated by single spaces."""
    return tf.strings.regex_replace(_clean_review(review), r"[^\p{L}\p{N}']+", " ")


def _vectorizer(config, vocabulary=None):
    return keras.layers.TextVectorization(
        max_tokens=config.vocabulary_size, standardize=standardize_review,
        vocabulary=vocabulary, name="vectorize")


def validation_indices(labels, review_ids, fraction, seed):
    """Which training reviews to hold out for validation: `(train_index, validation_index)`.

    The official split puts each movie's reviews (at most 30) in train or in test, never both,
    so a model is tested on movies it has not read about. A validation split of random reviews
    shares its movies with train (names, plots, titles), and overstates test accuracy by about
    two points. Within a label, the reviews of one movie have consecutive ids, so this holds
    out the `fraction` of each label with the highest ids: whole movies, and the same share of
    each label. Without ids (the shipped sample) it holds out a seeded random `fraction`.

    Args:
        labels: `(reviews,)` int.
        review_ids: `(reviews,)` int, or None.
        fraction: float in (0, 1).
        seed: int, for the random split.

    Returns:
        Two int arrays of indices into `labels`.
    """
    count = len(labels)
    if review_ids is None:
        order = np.random.default_rng(seed).permutation(count)
        validation = order[:int(round(count * fraction))]
    else:
        validation = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            by_id = members[np.argsort(review_ids[members], kind="stable")]
            validation.extend(by_id[len(by_id) - int(round(len(by_id) * fraction)):])
        validation = np.sort(np.array(validation, dtype=int))
    if not 0 < len(validation) < count:
        raise ValueError("validation_fraction must leave reviews in both train and validation, "
                         f"received validation_fraction={fraction}")
    return np.setdiff1d(np.arange(count), validation), validation


@keras.saving.register_keras_serializable(package="elman")
def label_accuracy(y_true, y_pred):
    """Binary accuracy of each column: `(batch,)` or `(batch, 1)` labels and `(batch, columns)`
    probabilities -> `(batch, columns)` of 0/1 (in training, an ensemble's columns are its
    members)."""
    y_true = keras.ops.reshape(y_true, (-1, 1))
    return keras.ops.cast(keras.ops.equal(y_true > 0.5, y_pred > 0.5), "float32")


def load_data(config):
    """Reads IMDB, holds out whole movies of train for validation, and builds the vocabulary."""
    splits = load_imdb(config.data_dir or None)
    texts, labels = splits["train"]
    train_index, validation_index = validation_indices(
        labels, splits["review_ids"]["train"], config.validation_fraction, config.seed)
    train_texts = [texts[i] for i in train_index]

    vectorizer = _vectorizer(config)
    train_text_batches = tf.data.Dataset.from_tensor_slices(train_texts).batch(1024)
    vectorizer.adapt(train_text_batches)

    def dataset(texts, labels, shuffle):
        texts = tf.constant(texts, tf.string)
        data = tf.data.Dataset.from_tensor_slices((texts, labels.astype("float32")))
        if shuffle:
            data = data.shuffle(len(labels), seed=config.seed, reshuffle_each_iteration=True)
        word_counts = (tf.strings.split(texts).row_lengths().numpy()
                       if config.length_buckets >= 2 else None)
        return batch_by_length(data, word_counts, config).prefetch(tf.data.AUTOTUNE)

    return Data(
        train=dataset(train_texts, labels[train_index], shuffle=True),
        validation=dataset([texts[i] for i in validation_index], labels[validation_index], False),
        test=dataset(splits["test"][0], splits["test"][1], shuffle=False),
        vocabulary=vectorizer.get_vocabulary(),
        source=splits["source"],
    )


def batch_by_length(reviews, word_counts, config):
    """Batches `(review, label)` pairs, with reviews of similar length together when
    `config.length_buckets` >= 2.

    A batch is padded to its longest review, and the recurrent layers run every step of it:
    a random batch of 64 full-data reviews is padded to 769 words on average (most are cut at
    800), while its reviews have 231 on average. Grouping the reviews by word count at
    `length_buckets - 1` boundaries spread geometrically up to `sequence_length` (the words
    between spaces, before standardization: an estimate), and batching each group alone,
    runs 2.8 times fewer steps with 8 buckets. Shuffled input stays shuffled within each group.

    Args:
        reviews: a `tf.data.Dataset` of `(review, label)` pairs, not batched.
        word_counts: `(reviews,)` int, the words of each review as `tf.strings.split` counts
            them (None without buckets): they fix the number of batches, which the dataset
            then reports as its cardinality (for progress bars and learning-rate schedules).
        config: the `Config`.

    Returns:
        The batched dataset.
    """
    if config.length_buckets < 2:
        return reviews.batch(config.batch_size)
    boundaries = np.unique(np.round(np.geomspace(
        config.sequence_length / 12, config.sequence_length, config.length_buckets)[:-1]))
    boundaries = [int(boundary) for boundary in boundaries if boundary >= 1]
    group_sizes = np.bincount(np.searchsorted(boundaries, word_counts, side="right"),
                              minlength=len(boundaries) + 1)
    batches = int(np.sum(-(-group_sizes // config.batch_size)))

    def words(review, label):
        return tf.size(tf.strings.split(review))

    return reviews.bucket_by_sequence_length(
        words, boundaries, [config.batch_size] * (len(boundaries) + 1)).apply(
            tf.data.experimental.assert_cardinality(batches))


def build_model(config, data, recurrent_layer=None):
    """Builds and compiles the classifier. Input `review` `(batch,)` string; output `(batch, 1)`.

    Args:
        config: the `Config`.
        data: the loaded `Data` (its vocabulary is built into the model).
        recurrent_layer: optional Keras layer used instead of `RNN(ElmanCell)` (with
            `return_sequences=True`); the benchmark's references (`SimpleRNN`, `LSTM`) use it to
            train in exactly the same pipeline.
    """
    review = keras.Input(shape=(), dtype="string", name="review")
    # Padded to the longest review of the batch, then cut to `sequence_length`: a short review
    # served alone runs a few steps, not `sequence_length` masked ones (same result).
    word_ids = _vectorizer(config, data.vocabulary)(review)  # (batch, longest review)
    # One padding id more keeps at least one (masked) step when every review is empty.
    word_ids = keras.ops.pad(word_ids, [[0, 0], [0, 1]])[:, :config.sequence_length]
    if config.monitor not in ("", "val_accuracy", "val_loss"):
        raise ValueError('monitor must be "val_accuracy", "val_loss" or empty (MONITOR), '
                         f"received monitor={config.monitor!r}")
    if config.ensemble_members < 1:
        raise ValueError("ensemble_members must be at least 1, received "
                         f"ensemble_members={config.ensemble_members}")
    probabilities = [_member(config, data, word_ids, recurrent_layer, number)
                     for number in range(config.ensemble_members)]
    if len(probabilities) == 1:
        probability = probabilities[0]
    else:  # The mean at inference; each member's probability in training.
        probability = EnsembleAverage(name="ensemble")(probabilities)
    model = AdversarialModel(review, probability, name="imdb_elman",
                             adversarial_epsilon=config.adversarial_epsilon)
    # With several members, each trains on its own cross-entropy (see EnsembleAverage).
    loss = ("binary_crossentropy" if config.ensemble_members == 1
            else ensemble_binary_crossentropy)
    model.compile(_optimizer(config, data), loss=loss,
                  metrics=[keras.metrics.MeanMetricWrapper(label_accuracy, name="accuracy")])
    return model


# Stochastic weight averaging's samples per epoch.
AVERAGING_SAMPLES_PER_EPOCH = 4


def _optimizer(config, data):
    """Adam, or with `weight_averaging_start_epoch` Adam with stochastic weight averaging."""
    if config.weight_averaging_start_epoch < 0:
        raise ValueError("weight_averaging_start_epoch must be >= 0, received "
                         f"{config.weight_averaging_start_epoch}")
    if config.weight_averaging_start_epoch == 0:
        return keras.optimizers.Adam(config.learning_rate, clipnorm=config.clipnorm or None)
    steps = int(data.train.cardinality())
    if steps <= 0:
        raise ValueError("weight_averaging_start_epoch needs a training dataset of known "
                         f"length, received cardinality {steps}")
    return AveragingAdam(
        config.learning_rate, clipnorm=config.clipnorm or None,
        average_start_step=config.weight_averaging_start_epoch * steps,
        average_every=max(1, steps // AVERAGING_SAMPLES_PER_EPOCH))


def _member_suffix(number):
    """The suffix of the names of an ensemble member's layers: none for the first member."""
    return "" if number == 0 else f"_member_{number + 1}"


def _member(config, data, word_ids, recurrent_layer, number):
    """One classifier of the ensemble, with weights of its own: `(batch, time)` word ids ->
    `(batch, 1)` P(positive). Members differ by their initial weights and dropout draws."""
    suffix = _member_suffix(number)
    word_ids = WordDropout(config.word_dropout, seed=config.seed + 1000 * number,
                           name="word_dropout" + suffix)(word_ids)
    embedded = keras.layers.Embedding(len(data.vocabulary), config.embedding_dim,
                                      mask_zero=True, name="embed" + suffix)(word_ids)
    embedded = keras.layers.SpatialDropout1D(config.embedding_dropout,
                                             name="embedding_dropout" + suffix)(embedded)
    # Where adversarial training perturbs the words; the identity otherwise.
    embedded = EmbeddingPerturbation(name="perturb" + suffix)(embedded)
    # ElmanRNN runs the cell with only s_{t-1} W computed step by step (same results as
    # keras.layers.RNN(ElmanCell), faster).
    if recurrent_layer is None:
        recurrent = ElmanRNN(ElmanCell(config.hidden_units), return_sequences=True,
                             name="elman" + suffix)
    elif number == 0:
        recurrent = recurrent_layer
    else:  # A fresh copy for each member.
        recurrent = recurrent_layer.__class__.from_config(
            {**recurrent_layer.get_config(), "name": recurrent_layer.name + suffix})
    recurrent = keras.layers.Bidirectional(recurrent, name="bidirectional_elman" + suffix)
    states = recurrent(embedded)  # (batch, time, 2 * hidden_units)
    pooled = StatePooling(name="pool" + suffix)(states)
    pooled = keras.layers.Dropout(config.dropout, name="dropout" + suffix)(pooled)
    return keras.layers.Dense(1, activation="sigmoid", name="probability" + suffix)(pooled)


def export_signatures(model):
    """Serving signatures: `review` string `[batch]` -> `probability` float, `label` string."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="review")])
    def serving_default(review):
        # Signatures loaded from a SavedModel do not enforce the declared shape: checked here
        # ("Shape of tensor review [] is not compatible with expected shape [?]").
        review = tf.ensure_shape(review, [None])
        probability = tf.reshape(model(review, training=False), [-1])  # (batch,)
        label = tf.where(probability >= 0.5, tf.constant(LABELS[1]), tf.constant(LABELS[0]))
        return {"probability": probability, "label": label}

    return {"serving_default": serving_default}


def headline(metrics):
    """`elman demo`'s summary of an evaluation: `(result, baseline)`."""
    return (f"test accuracy {metrics['accuracy']:.1%}",
            "one label for every review: 50.0% (the test reviews are half positive)")


def evaluation_report(model, data, run_dir=None, config=None, log=print, reviews=1000):
    """Predictions on the first `reviews` test reviews (of the length-bucketed order), written
    with `run_dir` to `predictions.tsv`: label, p(positive), right or wrong and the text, the
    most confident mistakes first (what the model gets wrong is the best thing to read)."""
    rows = []
    for texts, labels in data.test:
        probabilities = model(texts, training=False).numpy().reshape(-1)  # (batch,)
        rows += zip(labels.numpy(), probabilities, texts.numpy())
        if len(rows) >= reviews:
            break
    rows = rows[:reviews]
    wrong = [(label > 0.5) != (probability >= 0.5) for label, probability, _ in rows]
    report = {"reviews": len(rows), "wrong": int(sum(wrong))}
    if run_dir is not None:
        order = sorted(range(len(rows)), key=lambda i: (not wrong[i],
                                                         -abs(rows[i][1] - 0.5)))
        lines = ["label\tp_positive\tresult\treview"] + [
            f"{LABELS[int(rows[i][0])]}\t{rows[i][1]:.3f}\t{'wrong' if wrong[i] else 'right'}"
            f"\t{' '.join(rows[i][2].decode('utf-8', errors='replace').split())}"
            for i in order]
        path = Path(run_dir, "predictions.tsv")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        log(f"[elman] imdb: {report['wrong']} of {len(rows)} test reviews wrong; "
            f"predictions in {path}")
    return report


def prediction_request(inputs):
    """Turns the command line's inputs (review texts) into the signature's keyword arguments."""
    if not inputs:
        raise ValueError("elman predict imdb expects one or more review texts, received none")
    return {"review": tf.constant(list(inputs), tf.string)}


def warmup_requests():
    """`{signature: inputs}` that TF Serving replays when it loads the model: the examples."""
    return {"serving_default": prediction_request(EXAMPLES)}


def describe_prediction(inputs, outputs):
    """One line per review: label, probability and the start of the text."""
    lines = []
    for text, probability, label in zip(inputs, outputs["probability"].numpy(),
                                        outputs["label"].numpy()):
        preview = text if len(text) <= 60 else text[:57] + "..."
        lines.append(f"{label.decode():8s} p(positive)={probability:.3f}  {preview!r}")
    return lines
