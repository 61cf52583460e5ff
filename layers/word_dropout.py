"""Word dropout: training-time replacement of whole words by the out-of-vocabulary id."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="elman")
class WordDropout(keras.layers.Layer):
    """Replaces each word id by `replacement_id` with probability `rate`, in training only.

    Dropping whole words (Iyyer et al., 2015; Dai & Le, 2015) regularizes text models more than
    dropping embedding channels: the model must not rely on any single word of a review. Padding
    (id 0) is never replaced, so masks are unchanged. At inference the layer is the identity.

    Args:
        rate: float in [0, 1), the probability of replacing a word. Default: 0.
        replacement_id: the id written in place of a dropped word; `TextVectorization` uses 1 for
            out-of-vocabulary words. Default: 1.
        seed: optional int seed.

    Call arguments:
        word_ids: integer `(batch, time)`; 0 is padding.
        training: bool, whether to drop.

    Returns:
        `(batch, time)`, the same dtype.

    Example:

    ```python
    ids = WordDropout(0.5, seed=0)(np.array([[5, 6, 7, 0]]), training=True)  # e.g. [[5, 1, 7, 0]]
    ```
    """

    def __init__(self, rate=0.0, replacement_id=1, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), received rate={rate}")
        self.rate = float(rate)
        self.replacement_id = int(replacement_id)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, word_ids, training=None):
        if not training or self.rate == 0.0:
            return word_ids
        drop = keras.random.uniform(ops.shape(word_ids), seed=self.seed_generator) < self.rate
        replacement = ops.full_like(word_ids, self.replacement_id)
        return ops.where(drop & (word_ids != 0), replacement, word_ids)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "replacement_id": self.replacement_id,
                "seed": self.seed}
