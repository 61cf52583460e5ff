"""Image captioning, one-to-many: one image in, a sentence out.

A CNN sees the image once; its feature vector becomes the Elman decoder's first state s_0, and
the decoder writes the caption word by word (Show and Tell, Vinyals et al. 2015, with an Elman
cell in place of the LSTM). An Elman state forgets s_0 within a few words (the gradient through
tanh steps vanishes), so the image also enters every word's prediction after the recurrence (the
"merge" architecture of Tanti et al. 2018): the state says where the sentence is, the image
what it is about.

    image -> CNN -> feature vector                                        # (batch, features)
          -> Dropout, Dense(tanh): s_0                                     # (batch, units)
          -> Dense: the image context c                                   # (batch, embedding)
    caption (string, teacher forcing in training)
      -> "[start] ... [end]" word ids, shifted right                      # (batch, time)
      -> Embedding, ElmanRNN(ElmanCell) from s_0: s_t                     # (batch, time, units)
      -> Dropout, Dense(s_t) + c, Dropout, Dense: next-word logits        # (batch, time, vocabulary)

Encoders (`Config.encoder`):

- `efficientnet_lite0`: EfficientNet-Lite0 with ImageNet weights (`<data dir>/weights/`),
  frozen. Its pooled features are computed once per image and cached on disk, so training epochs
  never re-run the CNN; the model trains on the cached features (input `image_features`).
- `keras:<application>`, e.g. `keras:MobileNetV3Large` or `keras:ResNet50`: a
  `keras.applications` CNN with `weights="imagenet"` (downloaded on first use, so it needs
  internet), frozen and cached the same way.
- `small_cnn`: a small CNN trained from scratch with the decoder (input `image`, pixels in
  [0, 1]); the default without a data directory, on synthetic shapes with exact captions.

The empty default is `efficientnet_lite0` with a data directory that holds its weights,
`keras:EfficientNetB0` with one that does not (e.g. after `elman demo --download`), and
`small_cnn` without a data directory.

The exported SavedModel takes encoded images (`image_bytes`, JPEG or PNG) and returns the caption
(`serving_default`: greedy; `beam_search`: any width); it decodes, resizes and runs the CNN
itself. Bytes that are not a complete JPEG or PNG give an empty caption and `valid` false.
"""

import base64
import dataclasses
import functools
import html
import importlib
import json
import weakref
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from elman import decoding
from elman.apps.captioning import encoders
from elman.datasets import flickr8k, resolve_data_dir
from elman.layers import ElmanCell, ElmanRNN
from elman.text import (END, START, MaskedAccuracy, MaskedCrossentropy, SequenceLength,
                        teacher_forcing)

NAME = "captioning"
MONITOR = "val_loss"
ENCODERS = ("efficientnet_lite0", "keras:<application>", "small_cnn")
# The ImageNet weights `keras:` encoders load (tests build them with None: no download).
KERAS_WEIGHTS = "imagenet"
EXAMPLES = ("synthetic:0", "synthetic:1")
# What `elman evaluate --set` may change: decoding only, not the trained model.
EVALUATION_SETTINGS = ("beam_width", "length_penalty")


@dataclasses.dataclass(frozen=True)
class Config:
    # Where the data is: empty means $ELMAN_DATA_DIR, and without it synthetic shapes.
    data_dir: str = ""
    # efficientnet_lite0 (pretrained, frozen, features cached), keras:<application> (any
    # keras.applications CNN with ImageNet weights, e.g. keras:ResNet50; needs internet once)
    # or small_cnn (from scratch). Empty: efficientnet_lite0 with a data directory holding its
    # weights (keras:EfficientNetB0 with one that does not), small_cnn on synthetic shapes.
    encoder: str = ""
    # Where cached image features go (empty: ~/.cache/elman/captioning).
    cache_dir: str = ""
    # Synthetic shapes: training pictures (validation and test get a tenth each).
    synthetic_images: int = 3000
    # Flickr8k: use only the first N images of each official list (0: all), for quick runs.
    max_images: int = 0
    vocabulary_size: int = 6000
    # The longest caption written (and trained on), in words.
    max_caption_length: int = 25
    embedding_dim: int = 256
    hidden_units: int = 512
    activation: str = "tanh"
    dropout: float = 0.3
    learning_rate: float = 1e-3
    clipnorm: float = 1.0
    batch_size: int = 64
    epochs: int = 15
    patience: int = 3
    # Beam search as `elman evaluate` runs it, chosen on the validation split with
    # benchmarks/captioning_decoding.py (wider beams and a weaker length penalty did better).
    beam_width: int = 10
    length_penalty: float = 0.3
    seed: int = 0


SMOKE = Config(synthetic_images=600, vocabulary_size=100, embedding_dim=32, hidden_units=64,
               batch_size=32, learning_rate=3e-3, epochs=6, dropout=0.0)
# Named presets (`elman train captioning --preset NAME`): "default" is the best measured.
# What `elman demo` trains: SMOKE on 2,000 synthetic pictures for 8 epochs (about 70 s on 2
# cores), and on Flickr8k (with a data directory) its first 1,000 training images, so that the
# image features are computed in about a minute.
DEMO = dataclasses.replace(SMOKE, max_images=1000, vocabulary_size=2000, synthetic_images=2000,
                           epochs=8)
PRESETS = {"default": Config(), "demo": DEMO, "smoke": SMOKE}


def search_space(hp, config):
    """The tuner's search space: returns `config` with the searched values set from `hp`."""
    return dataclasses.replace(
        config,
        hidden_units=hp.Choice("hidden_units", [256, 512, 1024]),
        embedding_dim=hp.Choice("embedding_dim", [128, 256, 512]),
        learning_rate=hp.Float("learning_rate", 3e-4, 3e-3, sampling="log"),
        dropout=hp.Float("dropout", 0.0, 0.5, step=0.1),
    )


# The encoder with a data directory that lacks the EfficientNet-Lite0 weights.
FALLBACK_ENCODER = "keras:EfficientNetB0"


def encoder_name(config):
    """The encoder a config uses (resolving the empty default)."""
    if config.encoder:
        if config.encoder.startswith("keras:"):
            application = config.encoder[len("keras:"):]
            if not callable(getattr(keras.applications, application, None)):
                raise ValueError(f"encoder={config.encoder!r}: keras.applications has no "
                                 f"{application!r} (e.g. keras:MobileNetV3Large, keras:ResNet50)")
        elif config.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, received "
                             f"encoder={config.encoder!r}")
        return config.encoder
    root = resolve_data_dir(config.data_dir or None)
    if root is None:
        return "small_cnn"
    # The Lite0 weights have no public download (see elman.apps.captioning.encoders); where
    # they are missing, Keras's EfficientNetB0 downloads its own.
    if (root / "weights" / encoders.EFFICIENTNET_LITE0_FILE).is_file():
        return "efficientnet_lite0"
    return FALLBACK_ENCODER


# Text.

@keras.saving.register_keras_serializable(package="elman")
def standardize_caption(caption):
    """Lower-case words without punctuation: `(batch,)` string -> `(batch,)` string."""
    caption = tf.strings.unicode_transcode(caption, "UTF-8", "UTF-8", errors="replace",
                                           replacement_char=0xFFFD)
    caption = tf.strings.lower(caption, encoding="utf-8")
    caption = tf.strings.regex_replace(caption, r"[^\p{L}\p{N}']+", " ")
    return tf.strings.strip(caption)


@keras.saving.register_keras_serializable(package="elman")
def standardize_caption_target(caption):
    """`standardize_caption` between "[start]" and "[end]"."""
    return tf.strings.join([START + " ", standardize_caption(caption), " " + END])


def _vectorizer(config, vocabulary=None):
    return keras.layers.TextVectorization(
        max_tokens=config.vocabulary_size, standardize=standardize_caption_target,
        vocabulary=vocabulary, name="caption_vectorizer")


# Images.

def decode_images(image_bytes, image_size):
    """Encoded JPEG/PNG bytes `(batch,)` -> `(pixels (batch, size, size, 3) float in [0, 255],
    valid (batch,) bool)`; bytes that are not a complete JPEG or PNG (another format, text, a
    truncated or corrupt file) give black pixels, invalid, and cost the others nothing."""

    def decode(data):
        image = tf.cond(tf.strings.substr(data, 0, 3) == b"\xff\xd8\xff",
                        lambda: tf.io.decode_jpeg(data, channels=3),
                        lambda: tf.io.decode_png(data, channels=3))
        return tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size])

    # A decoder's error fails the whole graph, and with it every image of the batch; a tf.data
    # pipeline can drop the elements that fail instead (core ops, which TF Serving runs too).
    count = tf.shape(image_bytes)[0]
    indexed = tf.data.Dataset.from_tensor_slices((tf.range(count), image_bytes))
    decoded = indexed.map(lambda index, data: (index, decode(data))).ignore_errors()
    # One extra element, at index `count`, keeps the batch non-empty when every image fails.
    decoded = decoded.concatenate(tf.data.Dataset.from_tensors(
        (count, tf.zeros([image_size, image_size, 3]))))
    indices, pixels = decoded.batch(tf.cast(count, tf.int64) + 1).get_single_element()
    indices = indices[:, None]  # (decoded + 1, 1)
    valid = tf.scatter_nd(indices, tf.ones_like(indices[:, 0], tf.bool), [count + 1])[:count]
    pixels = tf.scatter_nd(indices, pixels, [count + 1, image_size, image_size, 3])[:count]
    return pixels, valid


def pretrained_encoder(name="efficientnet_lite0", data_dir=None):
    """A pretrained CNN with its ImageNet weights, frozen: pixels in [0, 255]
    `(batch, 224, 224, 3)` -> pooled features `(batch, features)` (1280 for
    efficientnet_lite0).

    Args:
        name: `efficientnet_lite0` (weights from the data directory) or `keras:<application>`.
    """
    pixels = keras.Input((224, 224, 3), name="pixels")
    if name.startswith("keras:"):
        application = getattr(keras.applications, name[len("keras:"):])
        try:
            trunk = application(include_top=False, weights=KERAS_WEIGHTS, pooling="avg",
                                input_shape=(224, 224, 3))
        except Exception as error:  # Most often: no internet for the weights' download.
            raise FileNotFoundError(
                f"could not build {name} with weights={KERAS_WEIGHTS!r} ({error}); without "
                f"internet use encoder=efficientnet_lite0, whose weights are read from the "
                f"data directory") from error
        # Each application's module has the preprocessing its weights expect.
        preprocess = importlib.import_module(application.__module__).preprocess_input
        features = trunk(preprocess(pixels), training=False)
    else:
        root = resolve_data_dir(data_dir)
        if root is None:
            raise FileNotFoundError("the efficientnet_lite0 encoder needs its weights: set "
                                    "ELMAN_DATA_DIR (or --data-dir) to the folder holding "
                                    f"weights/{encoders.EFFICIENTNET_LITE0_FILE}")
        trunk = encoders.efficientnet_lite0()
        encoders.load_efficientnet_lite0_weights(trunk, root / "weights" /
                                                 encoders.EFFICIENTNET_LITE0_FILE)
        features = keras.layers.GlobalAveragePooling2D()(
            trunk(encoders.preprocess_efficientnet_lite(pixels), training=False))
    model = keras.Model(pixels, features, name=f"{name.replace(':', '_')}_features")
    model.trainable = False
    return model


@keras.saving.register_keras_serializable(package="elman")
class PretrainedFeatures(keras.layers.Layer):
    """The identity on cached CNN features `(batch, features)` that records which pretrained CNN
    computed them, so that the exported model runs the same CNN on raw images.

    Args:
        encoder: the `Config.encoder` name, e.g. `efficientnet_lite0`.
    """

    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder

    def call(self, features):
        return features

    def get_config(self):
        return {**super().get_config(), "encoder": self.encoder}


def _cached_features(config, encoder, build_encoder, split_name, names, images):
    """Pooled CNN features of `names` `(n, features)`, computed once and kept in the cache
    folder.

    Args:
        encoder: the encoder's name (`encoder_name(config)`), part of the cache file's name.
        build_encoder: `() -> the CNN`, called only when the cache misses.
    """
    folder = Path(config.cache_dir or Path.home() / ".cache" / "elman" / "captioning")
    path = folder / f"flickr8k-{encoder.replace(':', '-')}-{split_name}-{len(names)}.npz"
    if path.is_file():
        cached = np.load(path)
        if list(cached["names"]) == list(names):
            return cached["features"]
    print(f"[elman] captioning: computing CNN features of {len(names)} {split_name} images "
          f"(cached in {path})", flush=True)
    cnn = build_encoder()
    progress = keras.utils.Progbar(len(names))
    features = []
    for start in range(0, len(names), 64):
        chunk = names[start:start + 64]
        pixels, _ = decode_images(tf.constant(images.read_many(chunk)), 224)
        features.append(cnn(pixels, training=False).numpy())
        progress.add(len(chunk))
    features = np.concatenate(features).astype("float32")
    folder.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, names=np.array(names), features=features)
    temporary.rename(path)  # Atomic: an interrupted run never leaves half a cache.
    return features


# Data.

@dataclasses.dataclass
class Data:
    """Splits as `tf.data` datasets of `({image input: ..., "caption": text}, labels)` batches,
    one example per (image, caption) pair; the test images once each with all their references
    (for BLEU); and the vocabulary."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    test_inputs: np.ndarray  # One row per test image: features or pixels in [0, 1].
    test_references: list  # Per test image, its reference captions.
    validation_inputs: np.ndarray  # The same for the validation images (to tune decoding).
    validation_references: list
    test_image_bytes: callable  # indices -> [encoded image bytes], for the contact sheet.
    vocabulary: list
    image_input: str  # "image_features" or "image".
    encoder: str  # The resolved `Config.encoder`.
    source: str


def load_data(config):
    """Flickr8k with cached CNN features, or synthetic shapes without a data directory."""
    encoder = encoder_name(config)
    root = resolve_data_dir(config.data_dir or None)
    if root is None:
        if encoder != "small_cnn":
            raise ValueError(f"the {encoder} encoder needs a data directory (Flickr8k); "
                             "without one use encoder=small_cnn (synthetic shapes)")
        count = config.synthetic_images
        splits = {}
        for split, (size, seed) in {"train": (count, config.seed + 1),
                                    "validation": (max(count // 10, 1), config.seed + 2),
                                    "test": (max(count // 10, 1), config.seed + 3)}.items():
            images, captions = flickr8k.synthetic_captions(size, seed=seed)
            splits[split] = (images.astype("float32") / 255.0, [[c] for c in captions])
        source = f"synthetic shapes ({count} training pictures)"

        def image_bytes(indices):
            images = splits["test"][0]
            return [flickr8k.encode_png((images[i] * 255).round().astype(np.uint8))
                    for i in indices]
    else:
        loaded = flickr8k.load_flickr8k(root)
        # The CNN is built (and its weights read) once, and only if a split's cache misses.
        build_encoder = functools.cache(
            lambda: pretrained_encoder(encoder, config.data_dir or None))
        splits = {}
        for split in ("train", "validation", "test"):
            if config.max_images:
                loaded[split] = loaded[split][:config.max_images]
            names = [name for name, _ in loaded[split]]
            if encoder == "small_cnn":
                pixels, _ = decode_images(tf.constant(loaded["images"].read_many(names)), 64)
                inputs = pixels.numpy() / 255.0
            else:
                inputs = _cached_features(config, encoder, build_encoder, split, names,
                                          loaded["images"])
            splits[split] = (inputs, [captions for _, captions in loaded[split]])
        source = f"{loaded['source']} (encoder {encoder})"
        test_names = [name for name, _ in loaded["test"]]

        def image_bytes(indices):
            return loaded["images"].read_many([test_names[i] for i in indices])

    image_input = "image" if encoder == "small_cnn" else "image_features"
    vectorizer = _vectorizer(config)
    train_captions = [caption for captions in splits["train"][1] for caption in captions]
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(train_captions).batch(2048))
    caption_length = SequenceLength(config.max_caption_length + 2)

    def dataset(split, shuffle):
        inputs, references = splits[split]
        image_index = [i for i, captions in enumerate(references) for _ in captions]
        captions = [caption for captions in references for caption in captions]
        table = tf.constant(inputs)
        data = tf.data.Dataset.from_tensor_slices((image_index, captions))
        if shuffle:
            data = data.shuffle(len(captions), seed=config.seed, reshuffle_each_iteration=True)

        def pair(index, caption):
            _, labels = teacher_forcing(caption_length(vectorizer(caption)))
            return {image_input: tf.gather(table, index), "caption": caption}, labels

        data = data.batch(config.batch_size).map(pair, num_parallel_calls=tf.data.AUTOTUNE)
        return data.prefetch(tf.data.AUTOTUNE)

    return Data(train=dataset("train", True), validation=dataset("validation", False),
                test=dataset("test", False), test_inputs=splits["test"][0],
                test_references=splits["test"][1], validation_inputs=splits["validation"][0],
                validation_references=splits["validation"][1], test_image_bytes=image_bytes,
                vocabulary=vectorizer.get_vocabulary(), image_input=image_input, encoder=encoder,
                source=source)


# The model.

def _small_cnn(filters=32):
    convolution = dict(kernel_size=3, padding="same", activation="relu")
    return keras.Sequential([
        # Centred pixels: on white backgrounds, raw pixels near 1 give every image nearly
        # the same features, and the decoder learns to ignore them.
        keras.layers.Rescaling(2.0, offset=-1.0),
        # Each pixel's channels normalized on their own: batch statistics (BatchNormalization)
        # made the demo's BLEU-4 swing from 6 to 22 with the seed (docs/experiments.md), and
        # made a batch's result depend on how it is split across replicas.
        keras.layers.Conv2D(filters, **convolution), keras.layers.LayerNormalization(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(2 * filters, **convolution), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(4 * filters, **convolution), keras.layers.MaxPooling2D(),
        # Flattened, not pooled, so that where a shape is ("above", "left of") survives;
        # normalized, so that s_0 = tanh(...) of 8,192 features does not start saturated.
        keras.layers.Flatten(), keras.layers.LayerNormalization(),
    ], name="small_cnn")


def build_model(config, data, recurrent_layer=None):
    """Builds and compiles the captioner for teacher-forced training.

    Inputs: `image_features` `(batch, features)` (a pretrained encoder's) or `image`
    `(batch, 64, 64, 3)` in [0, 1] (small_cnn), and `caption` `(batch,)` string. Output: the
    logits of each next word, `(batch, time, vocabulary)`.

    Args:
        recurrent_layer: optional Keras recurrent layer with `hidden_units` units (e.g.
            `keras.layers.LSTM(512)`, Show and Tell's decoder), copied as the decoder instead
            of `ElmanRNN(ElmanCell)`, for references trained in the same pipeline.
    """
    if data.image_input == "image":
        image = keras.Input((64, 64, 3), name="image")
        features = _small_cnn()(image)
    else:
        image = keras.Input((data.test_inputs.shape[-1],), name="image_features")
        features = PretrainedFeatures(data.encoder, name="pretrained_features")(image)
    caption = keras.Input((), dtype="string", name="caption")
    features = keras.layers.Dropout(config.dropout, name="feature_dropout")(features)
    initial_state = keras.layers.Dense(config.hidden_units, activation="tanh",
                                       name="initial_state")(features)
    vectorizer = _vectorizer(config, data.vocabulary)
    caption_ids = SequenceLength(config.max_caption_length + 2,
                                 name="caption_length")(vectorizer(caption))
    decoder_inputs, _ = teacher_forcing(caption_ids)
    embedded = keras.layers.Embedding(len(data.vocabulary), config.embedding_dim,
                                      name="word_embedding")(decoder_inputs)
    if recurrent_layer is None:
        decoder = ElmanRNN(ElmanCell(config.hidden_units, activation=config.activation),
                           return_sequences=True, name="decoder")
    else:  # A copy of the template, named as the decoding loops expect.
        decoder = recurrent_layer.__class__.from_config(
            {**recurrent_layer.get_config(), "name": "decoder", "return_sequences": True,
             "return_state": False})
    # The image is the first state; an LSTM reference's cell state starts at zero.
    states = decoder(embedded, initial_state=_initial_states(decoder, initial_state),
                     mask=ops.not_equal(decoder_inputs, 0))
    states = keras.layers.Dropout(config.dropout, name="state_dropout")(states)
    # The merge: Dense(s_t) + c, the image context c the same at every step. (A relu or tanh
    # on the sum made the overfitting test on synthetic shapes learn several times slower.)
    image_context = keras.layers.Dense(config.embedding_dim, name="image_context")(features)
    merged = keras.layers.Add(name="merge")([
        keras.layers.Dense(config.embedding_dim, name="state_projection")(states),
        keras.layers.Reshape((1, config.embedding_dim))(image_context)])
    merged = keras.layers.Dropout(config.dropout, name="merge_dropout")(merged)
    logits = keras.layers.Dense(len(data.vocabulary), name="next_word")(merged)
    model = keras.Model({data.image_input: image, "caption": caption}, logits,
                        name="captioning_elman")
    optimizer = keras.optimizers.Adam(config.learning_rate, clipnorm=config.clipnorm or None)
    model.compile(optimizer, loss=MaskedCrossentropy(), metrics=[MaskedAccuracy(name="accuracy")])
    return model


def _initial_states(decoder, initial_state):
    """`[s_0]`, followed by zeros for any further state of the cell (an LSTM's c_0)."""
    count = len(tf.nest.flatten(decoder.cell.state_size))
    return [initial_state] + [ops.zeros_like(initial_state)] * (count - 1)


class Captioner(decoding.TextDecoder):
    """Greedy and beam-search captions from a trained model, as graph functions.

    Args:
        model: a model from `build_model`.
        length_penalty: alpha of beam search's ranking `log P / length ** alpha`.
    """

    def __init__(self, model, length_penalty=Config.length_penalty):
        super().__init__(model.get_layer("caption_vectorizer"),
                         model.get_layer("caption_length"), length_penalty)
        self.model = model
        self.decoder = model.get_layer("decoder")
        image_input = next(value for name, value in model.input.items() if name != "caption")
        self._initial = keras.Model(image_input, [model.get_layer("initial_state").output,
                                                  model.get_layer("image_context").output])

    def _step(self, tokens, states, image_context):
        embedded = self.model.get_layer("word_embedding")(tokens)
        output, new_states = self.decoder.cell(embedded, list(states), training=False)
        # The merge of `build_model`, for one step: Dense(s_t) + c.
        merged = self.model.get_layer("state_projection")(output) + image_context
        logits = self.model.get_layer("next_word")(merged)
        return self.next_word(logits), list(tf.nest.flatten(new_states))

    def _states(self, images):
        # s_0 (batch, units) and the image context c (batch, embedding_dim).
        state, image_context = self._initial(images, training=False)
        return _initial_states(self.decoder, state), image_context

    def greedy(self, images):
        """Captions `images` (the model's image input) greedily: `(batch,)` strings."""
        return self.words(self.search(*self._states(images)))

    def beam_search(self, images, beam_width):
        """Beam-search captions and their log-probabilities, `(batch,)` each."""
        ids, scores = self.search(*self._states(images), beam_width)
        return self.words(ids), scores


# One image function per model: the signatures and the exporter must share its CNN.
_IMAGE_FUNCTIONS = weakref.WeakKeyDictionary()


def _image_function(model):
    """Encoded bytes -> the model's image input, and the objects to track for export."""
    if model in _IMAGE_FUNCTIONS:
        return _IMAGE_FUNCTIONS[model]
    names = [name for name in model.input if name != "caption"]
    if names == ["image"]:
        result = (lambda image_bytes: _scaled(decode_images(image_bytes, 64))), []
    else:
        recorded = [layer.encoder for layer in model.layers
                    if isinstance(layer, PretrainedFeatures)]
        # Models saved before PretrainedFeatures existed were all trained on efficientnet_lite0.
        encoder = pretrained_encoder(recorded[0] if recorded else "efficientnet_lite0")

        def features(image_bytes):
            pixels, valid = decode_images(image_bytes, 224)
            return encoder(pixels, training=False), valid

        result = features, [encoder]
    _IMAGE_FUNCTIONS[model] = result
    return result


def _scaled(decoded):
    pixels, valid = decoded
    return pixels / 255.0, valid


def export_dependencies(model):
    """Objects the exported signatures use besides `model` (the pretrained CNN)."""
    return _image_function(model)[1]


def export_signatures(model, length_penalty=Config.length_penalty):
    """Serving signatures: `image_bytes` string `[batch]` (JPEG or PNG) -> `caption` string
    `[batch]` and `valid` bool `[batch]` (false, with an empty caption, for bytes that are not
    an image). `serving_default` is greedy; `beam_search` also takes `beam_width` (int32, 1-16).
    """
    captioner = Captioner(model, length_penalty)
    to_input, _ = _image_function(model)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        images, valid = to_input(tf.ensure_shape(image_bytes, [None]))
        caption = tf.where(valid, captioner.greedy(images), "")
        return {"caption": caption, "valid": valid}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),
                                  tf.TensorSpec([], tf.int32, name="beam_width")])
    def beam_search(image_bytes, beam_width):
        with tf.control_dependencies(decoding.check_beam_width(beam_width, 16)):
            images, valid = to_input(tf.ensure_shape(image_bytes, [None]))
            caption, _ = captioner.beam_search(images, beam_width)
        return {"caption": tf.where(valid, caption, ""), "valid": valid}

    return {"serving_default": serving_default, "beam_search": beam_search}


def prediction_request(inputs):
    """Image files (JPEG/PNG), or `synthetic:N` for synthetic test picture N -> the signature's
    keyword arguments."""
    if not inputs:
        raise ValueError("elman predict captioning expects image files, received none")
    images = []
    for name in inputs:
        if name.startswith("synthetic:"):
            pictures, _ = flickr8k.synthetic_captions(1, seed=3, start=int(name.split(":")[1]))
            images.append(flickr8k.encode_png(pictures[0]))
        elif Path(name).is_file():
            images.append(Path(name).read_bytes())
        else:
            raise ValueError(f"expected an image file or synthetic:N, received {name!r}")
    return {"image_bytes": tf.constant(images)}


def warmup_requests():
    """`{signature: inputs}` that TF Serving replays when it loads the model: the examples."""
    return decoding.warmup_requests(prediction_request(EXAMPLES), Config.beam_width)


def describe_prediction(inputs, outputs):
    """One line per image: its caption, or why there is none."""
    lines = []
    for name, caption, valid in zip(inputs, outputs["caption"].numpy(), outputs["valid"].numpy()):
        lines.append(f"{name}: {caption.decode()!r}" if valid else
                     f"{name}: not a complete JPEG or PNG image")
    return lines


# Evaluation: corpus BLEU-1..4 against all references, and a contact sheet.

def bleu_scores(hypotheses, references):
    """Corpus BLEU-1..4 (sacrebleu, lower case, no tokenization beyond the standardization)
    against every reference of each image."""
    import sacrebleu

    # Standardized in one call, then split back into each image's references.
    flat = standardize_caption(tf.constant([ref for refs in references for ref in refs]))
    words = iter(text.decode() for text in flat.numpy())
    standardized = [[next(words) for _ in refs] for refs in references]
    streams = decoding.reference_streams(standardized)
    return {f"bleu{n}": sacrebleu.metrics.BLEU(max_ngram_order=n, tokenize="none")
            .corpus_score(hypotheses, streams).score for n in range(1, 5)}


def headline(metrics):
    """`elman demo`'s summary of an evaluation: `(result, baseline)`."""
    return decoding.headline(metrics["report"],
                             (("bleu1", "BLEU-1 {:.1f}"), ("bleu4", "BLEU-4 {:.1f}")),
                             "other_images", "another image's caption")


def evaluation_report(model, data, run_dir=None, config=None, log=print, sheet_size=24):
    """BLEU-1..4 of greedy and beam-search captions on the test images, and of a baseline that
    gives each image another image's caption; with `run_dir`, writes
    `captions.json` and `contact_sheet.html` (test images with generated and reference
    captions)."""
    config = config or Config()
    captioner = Captioner(model, config.length_penalty)
    functions = {"greedy": tf.function(captioner.greedy),
                 f"beam{config.beam_width}": tf.function(
                     lambda images: captioner.beam_search(images, config.beam_width)[0])}
    report, captions = {"test_images": len(data.test_references)}, {}
    for name, function in functions.items():
        captions[name] = decoding.decode_in_batches(function, data.test_inputs, 128)
        report[name] = bleu_scores(captions[name], data.test_references)
        log(f"[elman] captioning: {name}: " + ", ".join(
            f"BLEU-{n} {report[name][f'bleu{n}']:.1f}" for n in range(1, 5)))
    # A baseline that knows the language but not the picture: each image gets the first
    # reference caption of the next test image.
    references = data.test_references
    report["other_images"] = bleu_scores(
        [references[(index + 1) % len(references)][0] for index in range(len(references))],
        references)
    if run_dir is not None:
        Path(run_dir, "captions.json").write_text(json.dumps(
            {"report": report, "captions": captions}, indent=1) + "\n")
        rows = []
        for index, image in enumerate(data.test_image_bytes(range(min(sheet_size,
                                                                      len(data.test_inputs))))):
            picture = base64.b64encode(image).decode()
            generated = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(texts[index])}"
                                f"</li>" for name, texts in captions.items())
            refs = "".join(f"<li>{html.escape(ref)}</li>" for ref in data.test_references[index])
            rows.append(f"<tr><td><img src='data:image;base64,{picture}' width=160></td>"
                        f"<td><ul>{generated}</ul><ul style='color:#666'>{refs}</ul></td></tr>")
        Path(run_dir, "contact_sheet.html").write_text(
            "<html><body><table>" + "".join(rows) + "</table></body></html>\n")
        log(f"[elman] captioning: contact sheet in {Path(run_dir, 'contact_sheet.html')}")
    return report
