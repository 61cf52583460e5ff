"""Training on several devices or machines with `tf.distribute`, for every app.

    elman train APP --strategy mirrored              every local device (GPUs, or CPUs)
    elman train APP --strategy mirrored --devices /gpu:0,/gpu:1
    elman train APP --strategy multi-worker          one process per machine, placed by TF_CONFIG

`multi-worker` reads `TF_CONFIG`, the JSON every TensorFlow cluster tool hands a worker
(Kubernetes' training operators included):

    {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}

The global batch size is the config's `batch_size`: each of the N replicas computes the
gradient of `batch_size / N` examples of every batch, and the gradients are summed across
replicas, so N workers train the model one worker trains (`tests/test_distribute.py` checks
the weights; docs/scale-out.md has the figures and the exception). Each worker reads its own
shard of every batch (tf.data's auto-sharding by data, the only policy that works for every
app's pipeline). The chief (worker 0, or the "chief" task) writes the run directory; the
other workers keep their backups in `RUN_DIR/workers/worker-N/` and write nothing else.
After a worker fails, start every worker again with the same command: BackupAndRestore resumes
each one from its last completed epoch.

Keras 3's `fit` has two faults under `tf.distribute` (keras-team/keras#20585, open in Keras
3.15): `_maybe_symbolic_build` averages a first batch across replicas to learn its shapes,
which fails for string inputs (IMDB's and translation's raw text) and for nested batches; and
`reduce_per_replica` reduces scalar outputs across workers with `axis=0`. `patch_keras` replaces
those two functions for the Keras versions where they were verified (`PATCHED_KERAS`), and
with several replicas takes the loss's mean over the global batch and clips the summed
gradient, so that N replicas train the model one device trains. `tests/test_distribute.py`
also checks that Keras's own `fit` still fails, so that the day Keras fixes it, the patch is
noticed and removed. This keeps `fit`, and so every callback, checkpoint and log of a run, the
same with and without a strategy; a training loop of our own around `strategy.run` would avoid
the faults but duplicate all of that (docs/scale-out.md).
"""

import json
import os
from pathlib import Path

import keras
import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multi-worker")
# Keras versions whose two faulty functions `patch_keras` replaces (the setup.cfg range).
PATCHED_KERAS = ((3, 0), (3, 16))


def keras_version():
    return tuple(int(part) for part in keras.__version__.split(".")[:2])


def patch_keras():
    """Replaces Keras's `_maybe_symbolic_build` and `reduce_per_replica` (TensorFlow backend)
    by versions that work under every strategy; returns whether it did (only for the Keras
    versions in `PATCHED_KERAS`). Idempotent; without a strategy, the replacements do exactly
    what the originals do."""
    if not PATCHED_KERAS[0] <= keras_version() < PATCHED_KERAS[1]:
        return False
    from keras.src.backend.tensorflow import trainer
    from keras.src.losses import loss as loss_module

    if getattr(trainer.reduce_per_replica, "elman_patch", False):
        return True
    original_reduce = trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds the model's state (metrics, optimizer) in the strategy's scope from a
        # first batch, taken from the data and averaged across replicas: the average fails for
        # strings (raw text), and taking the batch starts an iteration of the data that training
        # then skips (another shuffle order than without a strategy). Shapes and types are all
        # the build needs: the data's element spec has them, without reading anything.
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        with self.distribute_strategy.scope():
            try:
                self._symbolic_build(data_batch=data_batch)
            except (ValueError, RuntimeError):
                # A model whose train_step reads other inputs than the model's (next-frame's
                # tracked centers) cannot be built symbolically from its training data; it is
                # built already, and its optimizer is built here, in the scope.
                if not self.built:
                    raise
                if self.optimizer is not None and not self.optimizer.built:
                    self.optimizer.build(self.trainable_variables)

    def reduce_per_replica(values, strategy, reduction):
        # Keras reduces a scalar across workers along `axis=0`, which a scalar has not.
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(
                strategy) and not isinstance(strategy, tf.distribute.TPUStrategy):
            return tf.nest.map_structure(
                lambda value: strategy.reduce(
                    "MEAN", value, axis=0 if value.shape.rank else None), values)
        return original_reduce(values, strategy, reduction)

    reduce_per_replica.elman_patch = True
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    loss_module.reduce_weighted_values = _global_mean(loss_module.reduce_weighted_values)
    _clip_after_the_sum()
    return True


def _several_replicas():
    """The replica context when it holds several replicas in sync, else `None`."""
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def _clip_after_the_sum():
    """Gradient clipping (`clipnorm`, `clipvalue`, `global_clipnorm`) of the summed gradient,
    as one replica clips the gradient of the whole batch. Keras clips each replica's gradient
    before the sum, which differs as soon as a clip is active (a batch of a few examples gives
    large gradients): with several replicas, the clip is moved after the all-reduce."""
    from keras.src import backend
    from keras.src.backend.tensorflow import optimizer as tensorflow_optimizer
    from keras.src.optimizers import base_optimizer

    original_clip = base_optimizer.BaseOptimizer._clip_gradients
    original_update = tensorflow_optimizer.TFOptimizer._backend_update_step

    def clip_gradients(self, grads):
        return grads if _several_replicas() is not None else original_clip(self, grads)

    def backend_update_step(self, grads, trainable_variables, learning_rate):
        if _several_replicas() is None:
            return original_update(self, grads, trainable_variables, learning_rate)
        variables = [variable.value if isinstance(variable, backend.Variable) else variable
                     for variable in trainable_variables]
        summed = self._all_reduce_sum_gradients(list(zip(grads, variables)))
        clipped = original_clip(self, [gradient for gradient, _ in summed])
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, self._distribution_strategy,
            list(zip(clipped, [variable for _, variable in summed])), learning_rate)

    base_optimizer.BaseOptimizer._clip_gradients = clip_gradients
    tensorflow_optimizer.TFOptimizer._backend_update_step = backend_update_step


def _global_mean(original):
    """Keras's loss reduction, except that under a strategy of several replicas the gradient is
    that of the mean over the whole global batch: the sum of a replica's weighted losses divided
    by the number of examples (or unmasked words) of all replicas together. Keras divides by the
    replica's own count and then by the number of replicas, which differs whenever the
    replicas' counts do (a last, smaller batch; sentences of different lengths), so N replicas
    would not train the model one replica trains."""
    from keras.src.losses.loss import squeeze_or_expand_to_same_rank, standardize_reduction

    def reduce_weighted_values(values, sample_weight=None, mask=None,
                               reduction="sum_over_batch_size", dtype=None):
        replica = _several_replicas()
        if (standardize_reduction(reduction) not in ("sum_over_batch_size", "mean")
                or replica is None):
            return original(values, sample_weight, mask, reduction, dtype)
        values = tf.convert_to_tensor(values, dtype=dtype)
        weights = tf.ones_like(values)
        counted = tf.ones_like(values)
        if sample_weight is not None:
            sample_weight = tf.cast(sample_weight, values.dtype)
            values, sample_weight = squeeze_or_expand_to_same_rank(values, sample_weight)
            weights = weights * sample_weight
        if mask is not None:
            mask = tf.cast(mask, values.dtype)
            values, mask = squeeze_or_expand_to_same_rank(values, mask)
            weights, counted = weights * mask, counted * mask
        total = tf.reduce_sum(values * weights)
        count = replica.all_reduce("SUM", tf.stop_gradient(tf.reduce_sum(counted)))
        # No division by the number of replicas: their gradients are summed.
        global_mean = tf.math.divide_no_nan(total, count)
        # The value stays Keras's own (the replica's mean, over the number of replicas), which
        # its loss tracker expects; the gradient is the global mean's.
        keras_value = original(values, sample_weight, mask, reduction, dtype)
        return global_mean + tf.stop_gradient(keras_value - global_mean)

    reduce_weighted_values.elman_patch = True
    return reduce_weighted_values


def global_batch_share(loss, batch_size):
    """For a custom `train_step`: `loss`, the mean over this replica's `batch_size` examples,
    as this replica's share of the mean over the whole global batch (the replicas' gradients
    are summed). Without a strategy, or with one replica, `loss` itself."""
    context = _several_replicas()
    if context is None:
        return loss
    batch_size = tf.cast(batch_size, loss.dtype)
    return loss * batch_size / context.all_reduce("SUM", tf.stop_gradient(batch_size))


def cluster_task():
    """`(task type, task index, whether the cluster has a "chief" task)` from `TF_CONFIG`, or
    a clear error."""
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        raise ValueError("--strategy multi-worker needs TF_CONFIG, e.g. TF_CONFIG='{\"cluster\": "
                         "{\"worker\": [\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": "
                         "\"worker\", \"index\": 0}}' (docs/scale-out.md)")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
        has_chief = bool(cluster.get("chief"))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"TF_CONFIG must be JSON with \"cluster\" and \"task\" (type, index), "
                         f"received {text[:80]!r} ({type(error).__name__}: {error})") from None
    if task_type not in ("chief", "worker") or not 0 <= index < len(cluster.get(task_type, [])):
        raise ValueError(f"TF_CONFIG's task must be a chief or a worker of its cluster, received "
                         f"{task}")
    return task_type, index, has_chief


def make_strategy(name="none", devices=None):
    """The `tf.distribute` strategy named `name` (`None` for "none"), with Keras patched.

    Args:
        name: "none", "mirrored" (several devices of this machine) or "multi-worker" (several
            machines, from TF_CONFIG).
        devices: for "mirrored", the devices to use (e.g. `["/gpu:0", "/gpu:1"]`); default all.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, received {name!r}")
    if name == "none":
        return None
    patch_keras()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices or None)
    if devices:
        raise ValueError("--devices is for --strategy mirrored; a multi-worker run uses each "
                         "worker's devices")
    cluster_task()  # A clear error before TensorFlow's own.
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """Whether this process writes the run directory: always, except on the workers of a
    multi-worker run other than the chief (the "chief" task, or else worker 0)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or \
            not os.environ.get("TF_CONFIG"):
        return True
    task_type, index, has_chief = cluster_task()
    return task_type == "chief" or (not has_chief and task_type == "worker" and index == 0)


def worker_dir(run_dir, strategy):
    """Where this process keeps its own state: `run_dir` on the chief, else
    `RUN_DIR/workers/TYPE-INDEX` (its backups, so that it resumes where it stopped)."""
    if is_chief(strategy):
        return Path(run_dir)
    task_type, index, _ = cluster_task()
    return Path(run_dir) / "workers" / f"{task_type}-{index}"
