"""Ensembles inside one model: members trained side by side, each on its own loss, served as
the mean of their probabilities, and a callback that keeps each member's own best epoch."""

from pathlib import Path

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="elman")
class EnsembleAverage(keras.layers.Layer):
    """Combines the probabilities of an ensemble's members.

    At inference it returns their mean. In training it returns each member's probability side
    by side, so that `ensemble_binary_crossentropy` trains every member on its own error,
    exactly as if it were trained alone on the same batches: the members do not learn to
    correct each other, which is what makes an average of independent models better than
    any one of them. Validation and evaluation (training off) score the mean.

    Call arguments:
        probabilities: a list of `members` tensors `(batch, 1)`.
        training: bool.

    Returns:
        `(batch, 1)` at inference; `(batch, members)` in training.

    Example:

    ```python
    average = EnsembleAverage()
    average([np.full((2, 1), 0.2), np.full((2, 1), 0.6)])  # [[0.4], [0.4]]
    average([np.full((2, 1), 0.2), np.full((2, 1), 0.6)], training=True)  # [[0.2, 0.6]] * 2
    ```
    """

    def call(self, probabilities, training=False):
        stacked = ops.concatenate(list(probabilities), axis=-1)  # (batch, members)
        if training:
            return stacked
        return ops.mean(stacked, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], 1)


@keras.saving.register_keras_serializable(package="elman")
def ensemble_binary_crossentropy(y_true, y_pred):
    """Binary cross-entropy of each member, averaged over the members.

    Args:
        y_true: `(batch,)` or `(batch, 1)` targets in [0, 1].
        y_pred: `(batch, members)` probabilities (`EnsembleAverage` in training), or
            `(batch, 1)`, where it is Keras's binary cross-entropy.

    Returns:
        `(batch,)`: the mean over the members of their cross-entropies.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.reshape(y_true, (-1, 1)), y_pred.dtype)
    return keras.losses.binary_crossentropy(ops.broadcast_to(y_true, ops.shape(y_pred)), y_pred)


class MemberSelection(keras.callbacks.Callback):
    """Keeps each ensemble member's weights from its own best epoch, by its own validation score.

    An ensemble trained in one `fit()` would otherwise keep one epoch for all its members, the
    one where their average scored best; but each member, trained on its own loss, peaks at an
    epoch of its own, as it would trained alone. After each epoch this scores every member
    alone on `validation_data` (one pass of the members' probabilities) and keeps the weights of
    each one that improved; when training ends, each member gets back its best weights. List it
    after `EarlyStopping(restore_best_weights=True)`, whose restored weights it then replaces.
    On IMDB's 2,500 validation reviews it chose no better than one epoch for all (README): a
    member's own score is noisier than the average's.

    Args:
        validation_data: a `tf.data.Dataset` of `(inputs, targets)` batches, in the same order
            on every pass (not shuffled); targets `(batch,)` or `(batch, 1)` in [0, 1].
        monitor: `"loss"` (binary cross-entropy, lower is better) or `"accuracy"` (against
            targets > 0.5, higher is better): the score each member is chosen by.
        path: optional `.npz` file where each member's best weights, epoch, score and
            validation probabilities are written after every epoch (atomically), so that an
            interrupted fit resumed by `BackupAndRestore` keeps them; it is read when training
            begins and removed when training ends. None keeps them in memory only.
        patience: stop training once no member has improved for this many epochs; None never
            stops it.
        ensemble_layer: the name of the model's `EnsembleAverage` layer. The members are the
            layers feeding each of its inputs that no other member uses.
        verbose: whether to print each member's score after every epoch.

    Attributes:
        member_epochs: after training, each member's best epoch (0-based).
        final_metrics: after training, `{"val_loss", "val_accuracy", "member_epochs",
            "member_val_scores"}`: the scores of the ensemble of the selected members on
            `validation_data` (the mean of their probabilities), computed from the kept
            probabilities, without another pass.

    Example:

    ```python
    model.fit(train, validation_data=validation, epochs=8, callbacks=[
        keras.callbacks.EarlyStopping("val_loss", restore_best_weights=True, patience=2),
        MemberSelection(validation, monitor="loss", path="run/members.npz", patience=2)])
    ```
    """

    def __init__(self, validation_data, monitor="loss", path=None, patience=None,
                 ensemble_layer="ensemble", verbose=True):
        super().__init__()
        if monitor not in ("loss", "accuracy"):
            raise ValueError(f'monitor must be "loss" or "accuracy", received monitor={monitor!r}')
        self.validation_data = validation_data
        self.monitor = monitor
        self.path = None if path is None else Path(path)
        self.patience = patience
        self.ensemble_layer = ensemble_layer
        self.verbose = verbose
        self.member_epochs = None
        self.final_metrics = None

    def on_train_begin(self, logs=None):
        try:
            ensemble = self.model.get_layer(self.ensemble_layer)
        except ValueError:
            raise ValueError(f"MemberSelection needs the model's EnsembleAverage layer, named "
                             f"{self.ensemble_layer!r}; the model has none by that name") from None
        member_outputs = list(ensemble.input)
        self._members_model = keras.Model(self.model.inputs, member_outputs)
        # A member's own layers: those on the path to its output that no other member uses.
        layer_sets = [{id(layer): layer for layer in keras.Model(self.model.inputs, output).layers}
                      for output in member_outputs]
        self._member_weights = []
        for number, layers in enumerate(layer_sets):
            shared = set().union(*(set(other) for index, other in enumerate(layer_sets)
                                   if index != number))
            self._member_weights.append([weight for key, layer in layers.items()
                                         if key not in shared for weight in layer.weights])
        members = len(member_outputs)
        sign = 1.0 if self.monitor == "loss" else -1.0  # Lower signed scores are better.
        self._best = [{"epoch": -1, "score": sign * np.inf, "weights": None,
                       "probabilities": None} for _ in range(members)]
        self._last_epoch = -1
        if self.path is not None and self.path.is_file():
            self._load()
            print(f"[elman] MemberSelection: resuming with the best epochs so far "
                  f"{[best['epoch'] + 1 for best in self._best]} from {self.path}")

    def _scores(self, probabilities, targets):
        """`(examples, members)` probabilities, `(examples,)` targets -> `(members,)` scores."""
        if self.monitor == "accuracy":
            return np.mean((probabilities > 0.5) == (targets[:, None] > 0.5), axis=0)
        targets = np.broadcast_to(targets[:, None], probabilities.shape)
        return np.mean(np.asarray(keras.losses.binary_crossentropy(
            targets.T[..., None], probabilities.T[..., None])), axis=-1)

    def _validation_probabilities(self):
        probabilities, targets = [], []
        for inputs, batch_targets in self.validation_data:
            outputs = self._members_model.predict_on_batch(inputs)
            probabilities.append(np.concatenate([np.reshape(output, (-1, 1))
                                                 for output in outputs], axis=-1))
            targets.append(np.reshape(np.asarray(batch_targets, "float32"), (-1,)))
        return np.concatenate(probabilities), np.concatenate(targets)

    def on_epoch_end(self, epoch, logs=None):
        probabilities, targets = self._validation_probabilities()  # (examples, members)
        self._targets = targets
        scores = self._scores(probabilities, targets)
        sign = 1.0 if self.monitor == "loss" else -1.0
        for number, (best, score) in enumerate(zip(self._best, scores)):
            if sign * score < sign * best["score"]:
                best.update(epoch=epoch, score=float(score),
                            probabilities=probabilities[:, number],
                            weights=[np.array(weight) for weight in self._member_weights[number]])
        self._last_epoch = epoch
        if self.path is not None:
            self._save()
        if self.verbose:
            print(f"[elman] members' validation {self.monitor}: "
                  + ", ".join(f"{score:.4f}" for score in scores)
                  + "; best epochs " + ", ".join(str(best["epoch"] + 1) for best in self._best))
        if self.patience is not None and all(epoch - best["epoch"] >= self.patience
                                             for best in self._best):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if any(best["weights"] is None for best in self._best):
            return  # No epoch ended.
        for weights, best in zip(self._member_weights, self._best):
            for weight, value in zip(weights, best["weights"]):
                weight.assign(value)
        probabilities = np.stack([best["probabilities"] for best in self._best], axis=-1)
        mean = np.mean(probabilities, axis=-1, keepdims=True)  # (examples, 1)
        self.member_epochs = [best["epoch"] for best in self._best]
        self.final_metrics = {
            "val_loss": float(np.mean(keras.losses.binary_crossentropy(
                self._targets[:, None], mean))),
            "val_accuracy": float(np.mean((mean[:, 0] > 0.5) == (self._targets > 0.5))),
            "member_epochs": self.member_epochs,
            "member_val_scores": [best["score"] for best in self._best],
        }
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _save(self):
        arrays = {"targets": self._targets, "last_epoch": np.array(self._last_epoch)}
        for number, best in enumerate(self._best):
            arrays[f"epoch_{number}"] = np.array(best["epoch"])
            arrays[f"score_{number}"] = np.array(best["score"])
            arrays[f"probabilities_{number}"] = best["probabilities"]
            for index, value in enumerate(best["weights"]):
                arrays[f"weight_{number}_{index}"] = value
        partial = self.path.with_name("partial-" + self.path.name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            np.savez(file, **arrays)
        partial.replace(self.path)

    def _load(self):
        with np.load(self.path) as arrays:
            self._targets = arrays["targets"]
            self._last_epoch = int(arrays["last_epoch"])
            for number, best in enumerate(self._best):
                count = len(self._member_weights[number])
                best.update(epoch=int(arrays[f"epoch_{number}"]),
                            score=float(arrays[f"score_{number}"]),
                            probabilities=arrays[f"probabilities_{number}"],
                            weights=[arrays[f"weight_{number}_{index}"]
                                     for index in range(count)])
