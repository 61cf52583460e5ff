"""Word embeddings plus hashed word-pair (bigram) embeddings, the input features of fastText."""

import keras
from keras import ops

# Multiplier of the bigram hash: a prime larger than any vocabulary, so that distinct
# (previous, current) pairs map to distinct integers before the modulo.
_HASH_MULTIPLIER = 1_000_003


@keras.saving.register_keras_serializable(package="elman")
class BigramEmbedding(keras.layers.Layer):
    """Embeds each word and the pair it forms with the word before it: `x_t = E[w_t] + B[h_t]`.

    `h_t = (w_{t-1} * 1000003 + w_t) mod bigram_buckets + 1` hashes the pair `(w_{t-1}, w_t)`
    (with `w_0 = 0` before the first word) into one of `bigram_buckets` rows of a second
    table `B` (the hashing trick of fastText, Joulin et al. 2017). The sum is one input vector
    per step, so a recurrent layer after it still reads one vector per word; it sees "not good"
    as a feature of its own instead of composing it from "not" and "good". Padding (id 0) gets
    bigram row 0 and is masked, like `Embedding(mask_zero=True)`.

    Args:
        vocabulary_size: int, the number of word ids (`E` has this many rows).
        bigram_buckets: int > 0, the rows of `B` for hashed pairs.
        output_dim: int, the size of the embedding vectors.
        embeddings_initializer: initializer of both tables. Default: `"uniform"`, as Keras's
            `Embedding`.

    Call arguments:
        word_ids: integer `(batch, time)`; 0 is padding.

    Returns:
        `(batch, time, output_dim)`, with the mask `word_ids != 0`.

    Example:

    ```python
    layer = BigramEmbedding(vocabulary_size=1000, bigram_buckets=5000, output_dim=16)
    vectors = layer(np.array([[5, 6, 7, 0]]))  # (1, 4, 16)
    ```
    """

    def __init__(self, vocabulary_size, bigram_buckets, output_dim,
                 embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        if bigram_buckets < 1:
            raise ValueError(f"bigram_buckets must be at least 1, received {bigram_buckets}")
        self.vocabulary_size = int(vocabulary_size)
        self.bigram_buckets = int(bigram_buckets)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.words = keras.layers.Embedding(self.vocabulary_size, self.output_dim,
                                            embeddings_initializer=self.embeddings_initializer,
                                            name="words")
        self.bigrams = keras.layers.Embedding(self.bigram_buckets + 1, self.output_dim,
                                              embeddings_initializer=self.embeddings_initializer,
                                              name="bigrams")
        self.supports_masking = True

    def build(self, input_shape):
        self.words.build(input_shape)
        self.bigrams.build(input_shape)

    def bigram_ids(self, word_ids):
        """The bigram row of every step: `(batch, time)` int -> `(batch, time)` int64, 0 at
        padding."""
        word_ids = ops.cast(word_ids, "int64")
        previous = ops.pad(word_ids[:, :-1], [[0, 0], [1, 0]])
        hashed = (previous * _HASH_MULTIPLIER + word_ids) % self.bigram_buckets + 1
        return ops.where(word_ids != 0, hashed, ops.zeros_like(hashed))

    def call(self, word_ids):
        return self.words(word_ids) + self.bigrams(self.bigram_ids(word_ids))

    def compute_mask(self, word_ids, mask=None):
        return ops.not_equal(word_ids, 0)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "bigram_buckets": self.bigram_buckets, "output_dim": self.output_dim,
                "embeddings_initializer":
                    keras.initializers.serialize(self.embeddings_initializer)}
