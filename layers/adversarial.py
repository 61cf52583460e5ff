"""Adversarial training on word embeddings (Miyato, Dai & Goodfellow, ICLR 2017).

Each training step takes the gradient of the loss with respect to the embedded words, moves the
embeddings a small step in that direction (the perturbation that raises the loss most, to first
order) and trains on the clean and the perturbed batch together. It regularizes text
classifiers: a review's label must not flip under small changes of its words' embeddings.
"""

import threading

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="elman")
class EmbeddingPerturbation(keras.layers.Layer):
    """Where `AdversarialModel` perturbs the embedded words: the identity, except inside an
    adversarial training step, where it adds the perturbation the model set.

    Call arguments:
        embedded: float `(batch, time, embedding_dim)`; a mask passes through.
        training: bool.

    Returns:
        `(batch, time, embedding_dim)`.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        # `perturbation` and `last_input` are set by AdversarialModel.train_step for the length
        # of one step, never saved; one pair per thread, as MirroredStrategy runs the step of
        # each local replica in a thread of its own.
        self._step_state = threading.local()

    perturbation = property(lambda self: getattr(self._step_state, "perturbation", None),
                            lambda self, value: setattr(self._step_state, "perturbation", value))
    last_input = property(lambda self: getattr(self._step_state, "last_input", None),
                          lambda self, value: setattr(self._step_state, "last_input", value))

    def call(self, embedded, training=False):
        if not training:
            return embedded
        self.last_input = embedded
        if self.perturbation is None:
            return embedded
        return embedded + self.perturbation

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="elman")
class AdversarialModel(keras.Model):
    """A functional model trained with adversarial perturbations of its embedded words.

    Built like `keras.Model(inputs, outputs)` with an `EmbeddingPerturbation` layer after the
    embedding (one after each embedding, when there are several: each is perturbed along its
    own gradient). With `adversarial_epsilon=0` it trains exactly as `keras.Model`. Otherwise each
    step computes, per example, `g = d loss / d embedded` and the perturbation
    `r = epsilon * ||embedded|| * g / ||g||` (norms over the example's words and channels, so
    epsilon is relative to the size of the example's embeddings), and minimizes
    `loss(embedded) + loss(embedded + r)`: twice the work of a plain step (the clean pass's
    backward pass gives `g` and the weights' gradients together). The perturbed pass draws
    its own dropout masks. Inference is unchanged. The logged loss is the one on the clean
    batch.

    Args:
        adversarial_epsilon: float >= 0, the size of the perturbation relative to the norm of
            the example's embeddings. Default: 0.
        *args, **kwargs: those of `keras.Model` (inputs, outputs, name).
    """

    def __init__(self, *args, adversarial_epsilon=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if adversarial_epsilon < 0:
            raise ValueError("adversarial_epsilon must be >= 0, received "
                             f"adversarial_epsilon={adversarial_epsilon}")
        self.adversarial_epsilon = float(adversarial_epsilon)
        # One per embedding: an ensemble's members each have theirs.
        self._perturbation_points = [layer for layer in self._flatten_layers()
                                     if isinstance(layer, EmbeddingPerturbation)]
        if self.adversarial_epsilon and not self._perturbation_points:
            raise ValueError("AdversarialModel needs an EmbeddingPerturbation layer after its "
                             "embedding, found none")

    def get_config(self):
        return {**super().get_config(), "adversarial_epsilon": self.adversarial_epsilon}

    def train_step(self, data):
        if not self.adversarial_epsilon:
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        points = self._perturbation_points
        weights = self.trainable_weights
        try:
            # One backward pass of the clean batch gives both the weights' gradients and the
            # gradient with respect to the embedded words, so a step costs two plain steps.
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                         training=True)
                embedded = [point.last_input for point in points]
                scaled = self.optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled, [*embedded, *weights])
            directions, clean_gradients = gradients[:len(points)], gradients[len(points):]
            for point, words, direction in zip(points, embedded, directions):
                axes = list(range(1, len(words.shape)))
                gradient_norm = ops.sqrt(ops.sum(ops.square(direction), axes, keepdims=True))
                embedded_norm = ops.sqrt(ops.sum(ops.square(words), axes, keepdims=True))
                point.perturbation = tf.stop_gradient(
                    self.adversarial_epsilon * embedded_norm * direction
                    / (gradient_norm + 1e-12))
            with tf.GradientTape() as adversarial_tape:
                adversarial_pred = self(x, training=True)
                adversarial_loss = self.compute_loss(x=x, y=y, y_pred=adversarial_pred,
                                                     sample_weight=sample_weight, training=True)
                scaled = self.optimizer.scale_loss(adversarial_loss)
            adversarial_gradients = adversarial_tape.gradient(scaled, weights)
        finally:
            for point in points:
                point.perturbation = point.last_input = None
        gradients = [_add(clean, adversarial)
                     for clean, adversarial in zip(clean_gradients, adversarial_gradients)]
        self.optimizer.apply_gradients(zip(gradients, weights))
        # Under a strategy of N replicas `compute_loss` returns a replica's loss over N.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self._loss_tracker.update_state(loss * replicas, sample_weight=ops.shape(y_pred)[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _add(first, second):
    """The sum of two gradients of one variable; an embedding's sparse gradients stay sparse."""
    if first is None or second is None:
        return second if first is None else first
    if isinstance(first, tf.IndexedSlices) and isinstance(second, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([first.values, second.values], 0),
                                tf.concat([first.indices, second.indices], 0),
                                first.dense_shape)
    return tf.convert_to_tensor(first) + tf.convert_to_tensor(second)
