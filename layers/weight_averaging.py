"""Stochastic weight averaging (Izmailov et al., 2018) inside Keras's optimizer machinery."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="elman")
class AveragingAdam(keras.optimizers.Adam):
    """Adam that keeps an equal-weight average of the weights, sampled every few steps.

    Stochastic weight averaging: from step `average_start_step` on, every `average_every`
    steps, the current weights join a running mean (`average += (weights - average) / n` for
    the n-th sample). Adam itself trains the weights as usual; the average, a model at the
    centre of the region the last steps explored, is what validation, checkpoints and the final
    model use. Unlike Polyak averaging with a momentum (`use_ema`), which weighs the latest
    steps most and the first ones never quite forgets, every sample counts the same and
    nothing before `average_start_step` counts.

    It keeps the average where Keras keeps its exponential moving average (`use_ema` is always
    on), so that `keras.callbacks.SwapEMAWeights(swap_on_epoch=True)` shows it to validation,
    checkpoints and early stopping, `fit()` ends with it in the model, and `BackupAndRestore`
    saves it with the optimizer's other variables: a resumed fit goes on with the same average.
    Before `average_start_step` the average follows the weights.

    Args:
        average_start_step: the number of training steps after which the first sample is
            taken (e.g. one epoch's steps: the average starts from the first epoch's end).
        average_every: steps between samples (e.g. a quarter of an epoch's steps).
        **kwargs: `keras.optimizers.Adam`'s arguments, except `use_ema`, `ema_momentum` and
            `ema_overwrite_frequency`, which this class sets.

    Example:

    ```python
    optimizer = AveragingAdam(1e-3, average_start_step=356, average_every=89)
    model.compile(optimizer, loss="binary_crossentropy")
    model.fit(train, validation_data=validation, epochs=5,
              callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True)])
    ```
    """

    def __init__(self, learning_rate=0.001, average_start_step=0, average_every=1, **kwargs):
        if int(average_start_step) != average_start_step or average_start_step < 0:
            raise ValueError("average_start_step must be a non-negative integer, received "
                             f"average_start_step={average_start_step}")
        if int(average_every) != average_every or average_every < 1:
            raise ValueError("average_every must be a positive integer, received "
                             f"average_every={average_every}")
        for setting in ("use_ema", "ema_momentum", "ema_overwrite_frequency"):
            kwargs.pop(setting, None)  # Set here; present when loaded from a config.
        super().__init__(learning_rate, use_ema=True, **kwargs)
        self.average_start_step = int(average_start_step)
        self.average_every = int(average_every)

    def _update_model_variables_moving_average(self, trainable_variables):
        # Called before the step counter is incremented: this step is step `iterations + 1`.
        since_start = ops.cast(self.iterations + 1, "int64") - self.average_start_step
        sample = ops.logical_and(since_start >= 0,
                                 ops.equal(ops.mod(since_start, self.average_every), 0))
        samples = ops.floor_divide(since_start, self.average_every) + 1  # With this one.
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is None:
                continue
            # The weight of the new value: 1 before the start (follow the weights), 1/n at the
            # n-th sample, 0 between samples.
            weight = ops.where(since_start < 0, 1.0,
                               ops.where(sample, 1.0 / ops.cast(ops.maximum(samples, 1),
                                                                "float32"), 0.0))
            weight = ops.cast(weight, variable.dtype)
            average.assign(average + weight * (variable - average))

    def get_config(self):
        config = super().get_config()
        config.update(average_start_step=self.average_start_step,
                      average_every=self.average_every)
        return config
