"""IMDB sentiment, many-to-one: the raw text of a review in, the probability that it is positive out.

The model reads a review word by word with Elman cells in both directions and pools their states:

    review (string)
      -> standardize_review: valid UTF-8, lower case, no HTML line breaks, no punctuation
      -> TextVectorization: word ids, cut to `sequence_length`             # (batch, time)
      -> WordDropout (training only): some words become the unknown word
      -> Embedding, masking the padding                                    # (batch, time, embedding_dim)
      -> (training with adversarial_epsilon) + the perturbation that raises the loss most
      -> Bidirectional(ElmanRNN(ElmanCell)), every state s_t             # (batch, time, 2 * hidden_units)
      -> StatePooling: max and mean of s_t over the review's words         # (batch, 4 * hidden_units)
      -> Dense(1, sigmoid): P(positive)                                    # (batch, 1)

With `ensemble_members` > 1, everything after TextVectorization is built once per member, with
weights of its own, and `EnsembleAverage` serves the mean of the members' probabilities.

Text processing is part of the model, so the `.keras` file and the exported SavedModel take raw
strings: empty reviews, megabyte-long ones, non-ASCII text and invalid UTF-8 bytes all give a
probability. The app contract the shared core relies on: `NAME`, `Config`, `SMOKE`, `MONITOR`,
`EXAMPLES`, `load_data`, `build_model`, `search_space`, `export_signatures`,
`prediction_request` and `describe_prediction`, `pretrain` (language-model pretraining) and
`training_callbacks` (the choice of each ensemble member's best epoch).
"""

import dataclasses
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from elman import text
from elman.bptt import spectral_radius
from elman.datasets.imdb import load_imdb
from elman.layers import (AdversarialModel, AveragingAdam, ElmanCell, ElmanRNN,
                          EmbeddingPerturbation, EnsembleAverage, MemberSelection, StatePooling,
                          WordDropout, ensemble_binary_crossentropy)

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
    # Start the word embeddings from word vectors of the training reviews' co-occurrence counts
    # (PPMI and a truncated SVD, `elman.text.word_vectors`), fine-tuned in training, instead of
    # random ones. About 10 s on the full data. 88.82% over three seeds with
    # adversarial_epsilon=0.05, against 88.77% for the defaults (README).
    cooccurrence_embeddings: bool = False
    # Size of the Elman state s_t in each direction.
    hidden_units: int = 64
    # Recurrent layers stacked, each reading the states of the one below (the first reads the
    # words); the classifier pools the last one's states. 2 gave 88.58% in 18.3 min against
    # 88.52% for the default (seed 1, README).
    recurrent_layers: int = 1
    # f, the state activation of the cell.
    activation: str = "tanh"
    bidirectional: bool = True
    # Training only: the probability of replacing a word by the out-of-vocabulary id (whole-word
    # dropout), of dropping whole embedding channels, and dropout before the classifier.
    word_dropout: float = 0.25
    embedding_dropout: float = 0.3
    dropout: float = 0.5
    learning_rate: float = 1e-3
    # With a positive value, the learning rate falls from `learning_rate` to 0 along a cosine
    # over this many epochs (and stays 0 after them); 0 keeps it constant.
    learning_rate_decay_epochs: int = 0
    # Gradient clipping by global norm (0 disables it): BPTT over 400 steps can explode.
    clipnorm: float = 1.0
    # Momentum of an exponential moving average of the weights (Polyak averaging), which
    # validation, checkpoints and the final model use; 0 trains without it.
    ema_momentum: float = 0.0
    # Stochastic weight averaging (Izmailov et al., 2018; `AveragingAdam`): from the end of
    # this epoch on, the weights are sampled `weight_averaging_samples_per_epoch` times an
    # epoch into an equal-weight mean, which validation, checkpoints, early stopping and the
    # final model use; 0 trains without it. One model, seed 1: 88.36% against 88.46%. With
    # ensemble_members=3, length_buckets=8, monitor=val_loss and 1 here: 89.01% over three
    # seeds in 12-14 min, against 88.85% without it (README).
    weight_averaging_start_epoch: int = 0
    weight_averaging_samples_per_epoch: int = 4
    # Adversarial training (Miyato et al., 2017): each step also trains on the embedded words
    # moved, along the loss gradient, by this fraction of their norm; 0 disables it. Doubles
    # the cost of a step, and lifted test accuracy from 87.8% to 88.5-89.1% (three seeds, README).
    adversarial_epsilon: float = 0.02
    # Perturb the very embedded words the perturbation was computed for (the clean pass's word
    # and embedding dropout, as in Miyato et al.) instead of a second pass's new dropout draws.
    adversarial_replay: bool = False
    # Language-model pretraining (Dai & Le, 2015): before the classifier trains, the embedding
    # and the recurrent layers learn for this many epochs to predict each next word of the
    # training reviews (the backward direction: each previous word), through a sampled softmax
    # over the vocabulary; 0 skips it. Its time counts in the training time (70-100 s an
    # epoch on the full data). Measured with one epoch (README): 88.48% with
    # pretrain_max_singular_value=1, 87.56% without, against 88.52% for the default (seed 1).
    pretrain_epochs: int = 0
    # With a positive value, pretraining keeps the largest singular value of each recurrent
    # weight W at most this (W is rescaled after each step): unconstrained, one epoch drives
    # the spectral radius of W from 1 to about 3.3, states the classifier then learns from
    # slowly. 0 leaves W free.
    pretrain_max_singular_value: float = 0.0
    # Train on soft targets from the star ratings (1-4 negative, 7-10 positive): a review d
    # stars from its side's extreme (1 or 10) gets the target |label - rating_smoothing * d / 3|,
    # so a 4-star review pulls the model less hard toward 0 than a 1-star one. 0 trains on the
    # labels alone. Needs the ratings (the full data has them, the shipped sample does not).
    # 0.3 gave 88.00% against 88.52% for the default (seed 1, README).
    rating_smoothing: float = 0.0
    # Members of an ensemble trained side by side in one model, each on its own loss, from
    # its own initial weights and dropout draws; the model serves the mean of their
    # probabilities (`EnsembleAverage`). Each member costs the time of one model, in training
    # and in serving. 3 members with length_buckets=8 and monitor=val_loss: 88.85% over three
    # seeds in 11 min, against 88.77% for the default (README).
    ensemble_members: int = 1
    # With ensemble_members > 1: keep each member's weights from its own best epoch, by its
    # own validation score (`monitor`), instead of the epoch where their average scored best
    # (`MemberSelection`); training stops once no member has improved for `patience` epochs
    # (or early stopping on the average stops it first). One more pass over the validation
    # split per epoch. Tuner trials score the average, epoch by epoch, without it. Measured
    # (README): no better than one epoch for all; on 2,500 validation reviews a member's own
    # best epoch is too noisy to choose by.
    member_selection: bool = False
    # Keep "!" and "?" as words of their own instead of dropping them with the punctuation.
    keep_marks: bool = False
    batch_size: int = 64
    # Batch reviews of similar length together, in this many groups by word count (see
    # `batch_by_length`); 0 or 1 batches them in random order, each batch padded to its
    # longest review. 8 buckets: 88.46% in 6.4 min against 88.57% in 10.2 min without them
    # (seed 1, README).
    length_buckets: int = 0
    epochs: int = 8
    # After early stopping has chosen the number of epochs on the validation split, train a
    # fresh model on all training reviews (validation included) for that many epochs: it
    # becomes the final model. Doubles the training time.
    refit: bool = False
    # Epochs without improvement of the monitored metric before early stopping.
    patience: int = 2
    # What checkpoints, early stopping and the tuner go by: "val_accuracy" or "val_loss";
    # empty: MONITOR (validation accuracy). On 2,500 validation reviews accuracy moves in
    # steps of 0.04 points around a noise of 0.7, and the loss, which reads how sure each
    # answer is, ranks epochs more steadily: with ensemble_members=3 accuracy picked the
    # second epoch (88.48% test accuracy) and the loss the third (88.86%; seed 1, README).
    monitor: str = ""
    seed: int = 0


# A tiny preset for tests and the default run: seconds, not minutes.
SMOKE = Config(vocabulary_size=2000, sequence_length=64, embedding_dim=16, hidden_units=8,
               batch_size=32, epochs=2)


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
    # All training reviews, validation included, shuffled: built only for `refit`.
    train_and_validation: tf.data.Dataset = None
    # `(vocabulary, embedding_dim)` initial embeddings, or None for random ones.
    word_vectors: np.ndarray = None


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


@keras.saving.register_keras_serializable(package="elman")
def standardize_review_keeping_marks(review):
    """As `standardize_review`, but a run of "!" or "?" becomes one word "!" or "?"."""
    review = tf.strings.regex_replace(_clean_review(review), r"([!?])[!?]*", " \\1 ")
    return tf.strings.regex_replace(review, r"[^\p{L}\p{N}'!?]+", " ")


def _vectorizer(config, vocabulary=None):
    standardize = standardize_review_keeping_marks if config.keep_marks else standardize_review
    return keras.layers.TextVectorization(
        max_tokens=config.vocabulary_size, standardize=standardize,
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


def rating_targets(labels, ratings, smoothing):
    """Soft training targets from the star ratings: a review `d` stars from its side's extreme
    (1 for negative, 10 for positive reviews) gets `|label - smoothing * d / 3|`.

    Args:
        labels: `(reviews,)` int, 0 or 1.
        ratings: `(reviews,)` int, 1-4 for label 0 and 7-10 for label 1.
        smoothing: float in [0, 0.5): the target of a 4- or 7-star review moves this far
            toward 0.5.

    Returns:
        `(reviews,)` float32 in [0, 1], on the label's side of 0.5.
    """
    if not 0 <= smoothing < 0.5:
        raise ValueError(f"rating_smoothing must be in [0, 0.5), received {smoothing}")
    labels, ratings = np.asarray(labels), np.asarray(ratings)
    distance = np.where(labels == 1, 10 - ratings, ratings - 1)
    if not ((distance >= 0) & (distance <= 3)).all():
        wrong = sorted(set(ratings[(distance < 0) | (distance > 3)].tolist()))
        raise ValueError("ratings must be 1-4 for negative and 7-10 for positive reviews, "
                         f"received {wrong[:5]}")
    return np.abs(labels - smoothing * distance / 3).astype("float32")


@keras.saving.register_keras_serializable(package="elman")
def label_accuracy(y_true, y_pred):
    """Binary accuracy against the label on the target's side of 0.5, so that soft training
    targets count as their label: `(batch,)` or `(batch, 1)` and `(batch, columns)` ->
    `(batch, columns)` of 0/1 (in training, an ensemble's columns are its members)."""
    y_true = keras.ops.reshape(y_true, (-1, 1))
    return keras.ops.cast(keras.ops.equal(y_true > 0.5, y_pred > 0.5), "float32")


def load_data(config):
    """Reads IMDB, holds out whole movies of train for validation, and builds the vocabulary."""
    splits = load_imdb(config.data_dir or None)
    texts, labels = splits["train"]
    targets = labels
    if config.rating_smoothing:
        ratings = splits["ratings"]["train"]
        if ratings is None:
            raise ValueError(f"rating_smoothing needs the star ratings, which {splits['source']} "
                             "does not have: set ELMAN_DATA_DIR to the full data, or "
                             "rating_smoothing=0")
        targets = rating_targets(labels, ratings, config.rating_smoothing)
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
        train=dataset(train_texts, targets[train_index], shuffle=True),
        validation=dataset([texts[i] for i in validation_index], labels[validation_index], False),
        test=dataset(splits["test"][0], splits["test"][1], shuffle=False),
        vocabulary=vectorizer.get_vocabulary(),
        source=splits["source"],
        train_and_validation=dataset(texts, targets, shuffle=True) if config.refit else None,
        word_vectors=(_word_vectors(vectorizer, train_text_batches, config)
                      if config.cooccurrence_embeddings else None),
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


def _word_vectors(vectorizer, text_batches, config):
    """Embeddings from the co-occurrences of the words of the texts, scaled to the spread of
    Keras's default initialization: `(vocabulary, embedding_dim)`."""
    word_ids = []
    for batch in text_batches:
        for row in vectorizer(batch).numpy():
            word_ids.append(row[:np.count_nonzero(row)])  # Padding only ends a row.
    vocabulary_size = vectorizer.vocabulary_size()
    counts = text.cooccurrence_counts(word_ids, vocabulary_size,
                                      context_words=min(5000, vocabulary_size - 2))
    vectors = text.word_vectors(counts, config.embedding_dim, seed=config.seed)
    # Keras's Embedding starts from uniform(-0.05, 0.05): entries of standard deviation 0.029.
    return vectors * (0.05 / np.sqrt(3) / max(float(vectors.std()), 1e-12))


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
    if config.member_selection and config.ensemble_members < 2:
        raise ValueError("member_selection chooses an epoch for each member of an ensemble, "
                         f"received ensemble_members={config.ensemble_members}: set "
                         "ensemble_members=2 or more, or member_selection=false")
    if config.member_selection and config.refit:
        raise ValueError("member_selection keeps each member's best epoch on the validation "
                         "split, which refit trains on: set member_selection=false or "
                         "refit=false")
    probabilities = [_member(config, data, word_ids, recurrent_layer, number)
                     for number in range(config.ensemble_members)]
    if len(probabilities) == 1:
        probability = probabilities[0]
    else:  # The mean at inference; each member's probability in training.
        probability = EnsembleAverage(name="ensemble")(probabilities)
    model = AdversarialModel(review, probability, name="imdb_elman",
                             adversarial_epsilon=config.adversarial_epsilon,
                             adversarial_replay=config.adversarial_replay)
    if data.word_vectors is not None:
        for number in range(config.ensemble_members):
            model.get_layer("embed" + _member_suffix(number)).set_weights([data.word_vectors])
    # With several members, each trains on its own cross-entropy (see EnsembleAverage).
    loss = ("binary_crossentropy" if config.ensemble_members == 1
            else ensemble_binary_crossentropy)
    model.compile(_optimizer(config, data), loss=loss,
                  metrics=[keras.metrics.MeanMetricWrapper(label_accuracy, name="accuracy")])
    return model


def _steps_per_epoch(data, option):
    steps = int(data.train.cardinality())
    if steps <= 0:
        raise ValueError(f"{option} needs a training dataset of known length, received "
                         f"cardinality {steps}")
    return steps


def _optimizer(config, data):
    """Adam, with the learning-rate schedule and the weight averaging the config asks for."""
    learning_rate = config.learning_rate
    if config.learning_rate_decay_epochs > 0:
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate,
            config.learning_rate_decay_epochs
            * _steps_per_epoch(data, "learning_rate_decay_epochs"))
    if config.weight_averaging_start_epoch < 0 or config.weight_averaging_samples_per_epoch < 1:
        raise ValueError("weight_averaging_start_epoch must be >= 0 and "
                         "weight_averaging_samples_per_epoch >= 1, received "
                         f"{config.weight_averaging_start_epoch} and "
                         f"{config.weight_averaging_samples_per_epoch}")
    if config.weight_averaging_start_epoch == 0:
        return keras.optimizers.Adam(learning_rate, clipnorm=config.clipnorm or None,
                                     use_ema=config.ema_momentum > 0,
                                     ema_momentum=config.ema_momentum or 0.99)
    if config.ema_momentum > 0:
        raise ValueError("ema_momentum and weight_averaging_start_epoch both average the "
                         "weights: set one of them to 0")
    steps = _steps_per_epoch(data, "weight_averaging_start_epoch")
    return AveragingAdam(
        learning_rate, clipnorm=config.clipnorm or None,
        average_start_step=config.weight_averaging_start_epoch * steps,
        average_every=max(1, steps // config.weight_averaging_samples_per_epoch))


# Where `MemberSelection` keeps each ensemble member's best weights during a run.
MEMBER_WEIGHTS = "best-members.npz"


def training_callbacks(model, data, config, run_dir):
    """The app's callbacks for the fit: with `member_selection`, a `MemberSelection` that
    keeps each ensemble member's best epoch (persisted in `run_dir`, so that an interrupted
    run resumes with them)."""
    if not config.member_selection:
        return []
    monitor = config.monitor or MONITOR
    return [MemberSelection(data.validation, monitor=monitor.removeprefix("val_"),
                            path=None if run_dir is None else Path(run_dir) / MEMBER_WEIGHTS,
                            patience=config.patience)]


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
    states = embedded
    for layer_number in range(config.recurrent_layers):
        layer_suffix = ("" if layer_number == 0 else f"_{layer_number + 1}") + suffix
        if recurrent_layer is None:
            recurrent = ElmanRNN(ElmanCell(config.hidden_units, activation=config.activation),
                                 return_sequences=True, name="elman" + layer_suffix)
        elif layer_number == 0 and number == 0:
            recurrent = recurrent_layer
        else:  # A fresh copy for each layer and member.
            recurrent = recurrent_layer.__class__.from_config(
                {**recurrent_layer.get_config(), "name": recurrent_layer.name + layer_suffix})
        if config.bidirectional:
            recurrent = keras.layers.Bidirectional(recurrent,
                                                   name="bidirectional_elman" + layer_suffix)
        states = recurrent(states)  # (batch, time, directions * hidden_units)
    pooled = StatePooling(name="pool" + suffix)(states)
    pooled = keras.layers.Dropout(config.dropout, name="dropout" + suffix)(pooled)
    return keras.layers.Dense(1, activation="sigmoid", name="probability" + suffix)(pooled)


# Where `pretrain` keeps its result in the run directory: a rerun after an interruption starts
# from it instead of pretraining again.
PRETRAINED_WEIGHTS = "pretrained.weights.h5"
# Words drawn per step for the sampled softmax (from a Zipf distribution over the vocabulary,
# whose ids TextVectorization orders by frequency).
_SAMPLED_WORDS = 256


def pretrain(model, data, config, run_dir):
    """Pretrains the model's embedding and recurrent layers as language models, before the
    classifier trains (`config.pretrain_epochs` epochs over `data.train`; nothing if 0).

    Each direction of the recurrent layer that reads the words (the lowest one when layers are
    stacked; the others are left to the classifier) reads the review as in the classifier, and
    its state after word i predicts word i+1 in its reading order (the next word forward, the
    previous one backward) through a softmax of its own, sampled (Jean et al., 2015): the loss
    of a word is estimated from it and `_SAMPLED_WORDS` words drawn by frequency, not the whole
    vocabulary. The inputs get the classifier's word and embedding dropout, and with
    `config.pretrain_max_singular_value` W is rescaled after each step to keep its largest
    singular value bounded. The softmax weights are dropped afterwards; the classifier starts
    from the embedding and recurrent weights. They are saved to `run_dir/PRETRAINED_WEIGHTS`,
    which a rerun of an interrupted training loads instead of pretraining again (with a run
    directory; the tuner's trials keep nothing).

    Args:
        model: a model from `build_model`, with any recurrent layer that returns sequences.
        data: the `Data`; its training reviews are read, not their labels.
        config: the `Config`.
        run_dir: the run directory, or None.

    Returns:
        The mean loss of each epoch (None when nothing was trained).
    """
    if config.pretrain_epochs <= 0:
        return None
    if config.ensemble_members > 1:
        raise ValueError("pretrain_epochs works with one model, received ensemble_members="
                         f"{config.ensemble_members}: set pretrain_epochs=0 or "
                         "ensemble_members=1")
    path = None if run_dir is None else Path(run_dir) / PRETRAINED_WEIGHTS
    if path is not None and path.is_file():
        model.load_weights(path)
        print(f"[elman] {NAME}: language-model pretraining done before, weights from {path}")
        return None
    vectorize, embed = model.get_layer("vectorize"), model.get_layer("embed")
    # The classifier's input noise: the language models learn under the word and embedding
    # dropout the classifier trains with (and predict the true words), so that their states
    # do not depend on every word being there.
    word_dropout = model.get_layer("word_dropout")
    embedding_dropout = model.get_layer("embedding_dropout")
    # The recurrent layer that reads the words (the lowest, when they are stacked):
    # Bidirectional, or one direction.
    recurrent = next(layer for layer in model.layers
                     if isinstance(layer, (keras.layers.Bidirectional, keras.layers.RNN)))
    if isinstance(recurrent, keras.layers.Bidirectional):
        directions = [recurrent.forward_layer, recurrent.backward_layer]
    else:
        directions = [recurrent]
    vocabulary_size = len(data.vocabulary)
    sampled = min(_SAMPLED_WORDS, vocabulary_size - 1)
    softmaxes = []
    for number, layer in enumerate(directions):
        units = layer.cell.output_size  # What the layer returns per step.
        softmaxes.append((
            keras.Variable(keras.initializers.GlorotUniform(config.seed + number)(
                (vocabulary_size, units)), name=f"softmax_weights_{number}"),
            keras.Variable(np.zeros(vocabulary_size, "float32"), name=f"softmax_bias_{number}")))
    variables = [*embed.trainable_variables,
                 *(variable for layer in directions for variable in layer.trainable_variables),
                 *(variable for softmax in softmaxes for variable in softmax)]
    optimizer = keras.optimizers.Adam(config.learning_rate, clipnorm=config.clipnorm or None)
    recurrent_kernels = [layer.cell.recurrent_kernel for layer in directions
                         if hasattr(layer.cell, "recurrent_kernel")]

    @tf.function
    def train_step(reviews):
        word_ids = vectorize(reviews)[:, :config.sequence_length]  # (batch, time)
        present = word_ids != 0
        with tf.GradientTape() as tape:
            embedded = embedding_dropout(embed(word_dropout(word_ids, training=True)),
                                         training=True)
            losses = []
            for layer, (weights, bias) in zip(directions, softmaxes):
                # (batch, time, units), in the layer's reading order.
                states = layer(embedded, mask=present, training=True)
                predicts, next_words = language_model_targets(word_ids, layer.go_backwards)
                losses.append(tf.reduce_mean(tf.nn.sampled_softmax_loss(
                    weights, bias, next_words[:, None], tf.boolean_mask(states, predicts),
                    sampled, vocabulary_size, seed=config.seed)))
            loss = tf.add_n(losses) / len(losses)
        # Dense gradients for the embedding: Adam then treats it as any other weight (with
        # the sparse ones, Keras's Adam moves a word that occurs n times in a batch up to
        # sqrt(n) times as far).
        gradients = [tf.convert_to_tensor(gradient)
                     for gradient in tape.gradient(loss, variables)]
        optimizer.apply_gradients(zip(gradients, variables))
        if config.pretrain_max_singular_value > 0:
            for kernel in recurrent_kernels:
                largest = tf.linalg.svd(kernel, compute_uv=False)[0]
                kernel.assign(kernel * tf.minimum(
                    1.0, config.pretrain_max_singular_value / largest))
        return loss

    reviews = data.train.map(lambda review, _: review)
    steps = int(reviews.cardinality())
    epoch_losses = []
    for epoch in range(config.pretrain_epochs):
        print(f"[elman] {NAME}: language-model pretraining, epoch {epoch + 1}/"
              f"{config.pretrain_epochs} (sampled softmax loss over {sampled} drawn words)")
        progress = keras.utils.Progbar(steps if steps > 0 else None)
        losses = []
        for batch in reviews:
            losses.append(float(train_step(batch)))
            progress.add(1, [("loss", losses[-1])])
        epoch_losses.append(float(np.mean(losses)))
        radii = ", ".join(f"{spectral_radius(kernel.numpy()):.2f}"
                          for kernel in recurrent_kernels)
        print(f"[elman] {NAME}: language-model loss {epoch_losses[-1]:.3f}"
              + (f"; spectral radius of W: {radii}" if radii else ""))
    if path is not None:
        partial = path.with_name("partial-" + path.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(partial)
        partial.replace(path)
    return epoch_losses


def language_model_targets(word_ids, go_backwards=False):
    """Which states of a language model predict which words: the state after word i (in
    reading order) predicts word i + 1, where both are words, not padding.

    Args:
        word_ids: `(batch, time)` int, 0 for padding.
        go_backwards: Boolean, whether the layer reads the sequence backwards; its states
            then come in its reading order, last word first (as `keras.layers.RNN` returns them).

    Returns:
        `(predicts, next_words)`: `(batch, time)` bool, which states predict a word, and
        `(predictions,)` int, those words in the order of the `True` entries of `predicts`.
    """
    ids = tf.reverse(word_ids, [1]) if go_backwards else word_ids
    read = ids != 0
    follows = read[:, :-1] & read[:, 1:]  # Word i and word i + 1 are both words.
    predicts = tf.pad(follows, [[0, 0], [0, 1]])  # The last state predicts nothing.
    return predicts, tf.boolean_mask(ids[:, 1:], follows)


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


def prediction_request(inputs):
    """Turns the command line's inputs (review texts) into the signature's keyword arguments."""
    if not inputs:
        raise ValueError("elman predict imdb expects one or more review texts, received none")
    return {"review": tf.constant(list(inputs), tf.string)}


def describe_prediction(inputs, outputs):
    """One line per review: label, probability and the start of the text."""
    lines = []
    for text, probability, label in zip(inputs, outputs["probability"].numpy(),
                                        outputs["label"].numpy()):
        preview = text if len(text) <= 60 else text[:57] + "..."
        lines.append(f"{label.decode():8s} p(positive)={probability:.3f}  {preview!r}")
    return lines
