"""Ensembles inside one model: the average, the per-member loss, that each member trains
exactly as it would alone (with adversarial training, one perturbation per member), and the
choice of each member's best epoch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from elman.layers import (AdversarialModel, ElmanCell, ElmanRNN, EmbeddingPerturbation,
                          EnsembleAverage, MemberSelection, StatePooling,
                          ensemble_binary_crossentropy)

WORD_IDS = np.array([[3, 5, 7, 2, 0, 0], [4, 4, 9, 1, 8, 6], [2, 0, 0, 0, 0, 0]], "int32")
LABELS = np.array([1.0, 0.0, 1.0], "float32")


def test_average_is_the_mean_at_inference_and_every_member_in_training():
    members = [np.array([[0.2], [0.9]], "float32"), np.array([[0.6], [0.3]], "float32"),
               np.array([[0.1], [0.0]], "float32")]
    average = EnsembleAverage()
    np.testing.assert_allclose(average(members), [[0.3], [0.4]], rtol=1e-6)
    np.testing.assert_allclose(average(members, training=True),
                               np.concatenate(members, axis=-1))
    assert average.compute_output_shape([(None, 1)] * 3) == (None, 1)


def test_loss_is_the_mean_of_the_members_cross_entropies():
    probabilities = np.array([[0.2, 0.7], [0.9, 0.4], [0.5, 0.99]], "float32")
    expected = np.mean([-(LABELS * np.log(probabilities[:, member])
                          + (1 - LABELS) * np.log(1 - probabilities[:, member]))
                        for member in range(2)], axis=0)
    for labels in (LABELS, LABELS[:, None]):
        np.testing.assert_allclose(ensemble_binary_crossentropy(labels, probabilities),
                                   expected, rtol=1e-5)
    # One member: Keras's binary cross-entropy.
    np.testing.assert_allclose(
        ensemble_binary_crossentropy(LABELS, probabilities[:, :1]),
        keras.losses.binary_crossentropy(LABELS[:, None], probabilities[:, :1]), rtol=1e-6)


def _member(word_ids, suffix):
    embedded = keras.layers.Embedding(12, 4, mask_zero=True, name="embed" + suffix)(word_ids)
    embedded = EmbeddingPerturbation(name="perturb" + suffix)(embedded)
    states = ElmanRNN(ElmanCell(3), return_sequences=True, name="elman" + suffix)(embedded)
    return keras.layers.Dense(1, activation="sigmoid", name="probability" + suffix)(
        StatePooling(name="pool" + suffix)(states))


def _member_layers(model, suffix):
    return [model.get_layer(name + suffix) for name in ("embed", "elman", "probability")]


@pytest.mark.parametrize("replay", [False, True])
@pytest.mark.parametrize("epsilon", [0.0, 0.3])
def test_each_member_trains_as_it_would_alone(epsilon, replay):
    keras.utils.set_random_seed(0)
    word_ids = keras.Input((None,), dtype="int32")
    suffixes = ["_a", "_b"]
    ensemble = AdversarialModel(
        word_ids, EnsembleAverage()([_member(word_ids, suffix) for suffix in suffixes]),
        adversarial_epsilon=epsilon, adversarial_replay=replay)
    # The ensemble's loss is the mean over its two members: SGD at 1.0 moves each member as
    # SGD at 0.5 moves it alone.
    ensemble.compile(keras.optimizers.SGD(1.0), loss=ensemble_binary_crossentropy)
    alone = []
    for suffix in suffixes:
        inputs = keras.Input((None,), dtype="int32")
        model = AdversarialModel(inputs, _member(inputs, suffix), adversarial_epsilon=epsilon,
                                 adversarial_replay=replay)
        model.compile(keras.optimizers.SGD(0.5), loss="binary_crossentropy")
        for mine, theirs in zip(_member_layers(model, suffix),
                                _member_layers(ensemble, suffix)):
            mine.set_weights(theirs.get_weights())
        alone.append(model)
    before = [weight.numpy() for weight in ensemble.trainable_weights]

    ensemble.train_on_batch(WORD_IDS, LABELS)
    for model in alone:
        model.train_on_batch(WORD_IDS, LABELS)
    for suffix, model in zip(suffixes, alone):
        for mine, theirs in zip(_member_layers(model, suffix),
                                _member_layers(ensemble, suffix)):
            for trained_alone, trained_together in zip(mine.get_weights(),
                                                       theirs.get_weights()):
                np.testing.assert_allclose(trained_together, trained_alone,
                                           rtol=1e-4, atol=1e-6)
    assert all(not np.allclose(old, new.numpy())
               for old, new in zip(before, ensemble.trainable_weights))


# Member selection: three members on one shared layer, whose probabilities each "epoch" sets by
# hand through their biases, so that every member's best epoch is known in advance.
FEATURES = np.linspace(-1, 1, 8, dtype="float32")[:, None]
TARGETS = np.array([0, 1, 1, 0, 1, 0, 0, 1], "float32")
# One row per epoch, one column per member: the bias of each member's head.
BIASES = np.array([[0.0, 0.5, -2.0], [1.0, -0.5, 0.3], [-1.0, 2.0, 0.1], [0.2, 0.1, 3.0]],
                  "float32")


def _selection_model():
    features = keras.Input((1,))
    shared = keras.layers.Dense(2, name="shared")(features)
    heads = [keras.layers.Dense(1, activation="sigmoid", name=f"head_{number}")(
        keras.layers.Dense(2, name=f"hidden_{number}")(shared)) for number in range(3)]
    return keras.Model(features, EnsembleAverage(name="ensemble")(heads))


def _numpy_scores(model, monitor):
    """Each member's score on (FEATURES, TARGETS), by its own sub-model and NumPy."""
    scores, probabilities = [], []
    for number in range(3):
        head = keras.Model(model.input, model.get_layer(f"head_{number}").output)
        probability = np.clip(head.predict(FEATURES, verbose=0)[:, 0], 1e-7, 1 - 1e-7)
        probabilities.append(probability)
        if monitor == "loss":
            scores.append(-np.mean(TARGETS * np.log(probability)
                                   + (1 - TARGETS) * np.log(1 - probability)))
        else:
            scores.append(np.mean((probability > 0.5) == (TARGETS > 0.5)))
    return np.array(scores), np.stack(probabilities, axis=-1)


def _run_epochs(callback, model, epochs, record):
    for epoch in epochs:
        for number in range(3):
            model.get_layer(f"head_{number}").bias.assign([BIASES[epoch, number]])
            model.get_layer(f"hidden_{number}").kernel.assign(
                np.full((2, 2), 0.1 * (epoch + 1) * (number + 1), "float32"))
        record.append(([layer.get_weights() for layer in model.layers if layer.weights],
                       _numpy_scores(model, callback.monitor)))
        callback.on_epoch_end(epoch)


def _validation():
    return tf.data.Dataset.from_tensor_slices((FEATURES, TARGETS)).batch(3)


@pytest.mark.parametrize("monitor", ["loss", "accuracy"])
def test_member_selection_keeps_each_members_own_best_epoch(monitor, tmp_path):
    keras.utils.set_random_seed(0)
    model = _selection_model()
    shared_after_training = model.get_layer("shared").get_weights()
    selection = MemberSelection(_validation(), monitor=monitor, path=tmp_path / "members.npz",
                                verbose=False)
    selection.set_model(model)
    selection.on_train_begin()
    record = []
    _run_epochs(selection, model, range(len(BIASES)), record)
    assert (tmp_path / "members.npz").is_file()
    selection.on_train_end()
    assert not (tmp_path / "members.npz").exists()  # A later run starts afresh.

    scores = np.array([scores for _, (scores, _) in record])  # (epochs, members)
    best = (np.argmin(scores, axis=0) if monitor == "loss"  # The first of equal scores.
            else np.argmax(scores, axis=0))
    assert len(set(best.tolist())) > 1  # The members' best epochs differ.
    assert selection.member_epochs == best.tolist()
    weights_by_epoch = [weights for weights, _ in record]
    names = [layer.name for layer in model.layers if layer.weights]
    for number in range(3):
        for name in (f"head_{number}", f"hidden_{number}"):
            for kept, chosen in zip(model.get_layer(name).get_weights(),
                                    weights_by_epoch[best[number]][names.index(name)]):
                np.testing.assert_array_equal(kept, chosen)
    # The shared layer belongs to no member: left as training left it.
    for kept, trained in zip(model.get_layer("shared").get_weights(), shared_after_training):
        np.testing.assert_array_equal(kept, trained)
    # The ensemble it leaves, scored from the kept probabilities, is the model's own mean.
    mean = model.predict(FEATURES, verbose=0)[:, 0]
    expected_loss = -np.mean(TARGETS * np.log(mean) + (1 - TARGETS) * np.log(1 - mean))
    assert selection.final_metrics["val_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert selection.final_metrics["val_accuracy"] == pytest.approx(
        np.mean((mean > 0.5) == (TARGETS > 0.5)))
    np.testing.assert_allclose(selection.final_metrics["member_val_scores"],
                               scores[best, range(3)], rtol=1e-5)


def test_member_selection_resumes_from_its_file_and_stops_with_patience(tmp_path):
    path = tmp_path / "members.npz"
    keras.utils.set_random_seed(0)
    uninterrupted = _selection_model()
    whole = MemberSelection(_validation(), path=path, verbose=False)
    whole.set_model(uninterrupted)
    whole.on_train_begin()
    _run_epochs(whole, uninterrupted, range(4), [])
    whole.on_train_end()

    # The same epochs, interrupted after the second: a new callback (a new process) reads the
    # file and ends with the same members.
    keras.utils.set_random_seed(0)
    interrupted = _selection_model()  # The same initial weights.
    first = MemberSelection(_validation(), path=path, verbose=False)
    first.set_model(interrupted)
    first.on_train_begin()
    _run_epochs(first, interrupted, range(2), [])
    resumed = MemberSelection(_validation(), path=path, verbose=False)
    resumed.set_model(interrupted)
    resumed.on_train_begin()
    assert [best["epoch"] for best in resumed._best] == [best["epoch"] for best in first._best]
    _run_epochs(resumed, interrupted, range(2, 4), [])
    resumed.on_train_end()
    assert resumed.member_epochs == whole.member_epochs
    for mine, theirs in zip(interrupted.weights[2:], uninterrupted.weights[2:]):  # Not shared.
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())

    # Patience: training stops once no member has improved for that many epochs.
    model = _selection_model()
    stopping = MemberSelection(_validation(), patience=1, verbose=False)
    stopping.set_model(model)
    stopping.on_train_begin()
    scores = []
    for epoch in range(4):
        model.stop_training = False
        _run_epochs(stopping, model, [epoch], scores)
        last_improvement = max(best["epoch"] for best in stopping._best)
        assert model.stop_training == (epoch - last_improvement >= 1)


def test_member_selection_errors_are_clear():
    with pytest.raises(ValueError, match='monitor must be "loss" or "accuracy"'):
        MemberSelection(_validation(), monitor="val_auc")
    features = keras.Input((1,))
    selection = MemberSelection(_validation())
    selection.set_model(keras.Model(features, keras.layers.Dense(1)(features)))
    with pytest.raises(ValueError, match="needs the model's EnsembleAverage layer"):
        selection.on_train_begin()
