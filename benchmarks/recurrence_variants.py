"""Variants of ElmanRNN's recurrence measured against the kept one and SimpleRNN (none kept).

    python benchmarks/recurrence_variants.py BATCH TIME UNITS current,local_stack,simple [ROUNDS]

Each variant is the source of `_recurrence` with one change; the models train in one process,
interleaved, and the medians of ROUNDS training steps are printed with the ratio to SimpleRNN.

- xu_before: x_t U + b for all steps in one product before the forward loop;
- grads_after: d_pre written step by step, the gradients of W, U, b in one product each after
  the backward loop;
- both: the two above;
- local_stack: a block's d_pre collected by TensorArray writes and a stack, not `tf.concat`;
- split_products: the weights' gradients step by step (16 small products a block), not one
  product a block;
- du_after: U's gradient in one product after the backward loop (W's stays block by block), so
  that the second core, the limit in the backward loop, has less to do beside the steps.

The step forms of `step_forms()` (a chain of 400 steps in a while loop): the kept
`tanh(x_t U + s W)`, MatMul + BiasAdd + Tanh (oneDNN fuses it), `2 sigmoid(2a) - 1`, the batch
in two halves as two chains, and MatMul + BiasAdd + Add + Tanh (fused by oneDNN).
`half_batch_forward()`: the forward loop with x U blocks and state writes, the batch as one chain
against two chains of half of it.

    python benchmarks/recurrence_variants.py step_forms
    python benchmarks/recurrence_variants.py half_batch_forward
"""
import inspect, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, keras, tensorflow as tf
import elman.layers.elman_rnn as module
from elman.layers import ElmanCell, ElmanRNN
ORIGINAL = module._recurrence
SOURCE = inspect.getsource(ORIGINAL)

def patch(source, old, new):
    assert old in source, old
    return source.replace(old, new, 1)

def xu_before(source):
    source = patch(source, """            projected = tf.unstack(tf.reshape(tf.matmul(input_blocks[i], U) + b,
                                              [block, batch, units]), num=block)""",
                   """            projected = tf.unstack(projected_blocks[i], num=block)""")
    return patch(source, """        def forward(i, state, states):""", """        projected_blocks = tf.reshape(
            tf.matmul(tf.reshape(inputs, [-1, shape[2]]), U) + b, [blocks, block, batch, units])

        def forward(i, state, states):""")

def grads_after(source):
    start = source.index("            def backward(")
    end = source.index("            return d_inputs, d_U, d_b, d_initial, d_W")
    new = '''            def backward(i, d_state, d_pres):
                k = blocks - 1 - i
                d_outputs, block_factors = (tf.unstack(x[k], num=block) for x in blocked)
                keep = None if keep_blocks is None else tf.unstack(keep_blocks[k], num=block)
                zero = tf.constant(0, d_state.dtype)
                for j in reversed(range(block)):
                    total = d_outputs[j] + d_state
                    d_pre = times_derivative(total, block_factors[j])
                    if keep is not None:
                        d_pre = tf.where(keep[j], d_pre, zero)
                    d_state = tf.matmul(d_pre, W_transposed)
                    if keep is not None:
                        d_state = tf.where(keep[j], d_state, total)
                    d_pres = d_pres.write(k * block + j, d_pre)
                return i + 1, d_state, d_pres

            _, d_initial, d_pres = tf.while_loop(
                lambda i, *_: i < blocks, backward,
                (tf.constant(0), tf.zeros_like(initial_state),
                 tf.TensorArray(inputs.dtype, size=blocks * block, infer_shape=False)),
                maximum_iterations=blocks)
            d_pre = tf.reshape(d_pres.stack(), [-1, units])
            d_W = tf.matmul(tf.reshape(previous_states, [-1, units]), d_pre, transpose_a=True)
            d_U = tf.matmul(tf.reshape(inputs, [-1, shape[2]]), d_pre, transpose_a=True)
            d_b = tf.reduce_sum(d_pre, 0)
            d_inputs = tf.reshape(tf.matmul(d_pre, U_transposed), shape)
'''
    return source[:start] + new + source[end:]

def local_stack(source):
    return patch(source, "                d_pre = tf.concat(d_pre, 0)  # (block * batch, units)",
        """                collected = tf.TensorArray(d_state.dtype, size=block, infer_shape=False)
                for j in range(block):
                    collected = collected.write(j, d_pre[j])
                d_pre = tf.reshape(collected.stack(), [block * batch, units])""")

def split_products(source):
    source = patch(source, "                d_pre = tf.concat(d_pre, 0)  # (block * batch, units)", "")
    source = patch(source, """                d_W += tf.matmul(previous, d_pre, transpose_a=True)
                d_U += tf.matmul(input_blocks[k], d_pre, transpose_a=True)
                d_b += tf.reduce_sum(d_pre, 0)""", """                previous = tf.unstack(tf.reshape(previous, [block, batch, units]), num=block)
                block_inputs = tf.unstack(tf.reshape(input_blocks[k], [block, batch, -1]), num=block)
                for j in range(block):
                    d_W += tf.matmul(previous[j], d_pre[j], transpose_a=True)
                    d_U += tf.matmul(block_inputs[j], d_pre[j], transpose_a=True)
                    d_b += tf.reduce_sum(d_pre[j], 0)
                d_pre = tf.concat(d_pre, 0)""")
    return source

def du_after(source):
    source = patch(source, """                d_U += tf.matmul(input_blocks[k], d_pre, transpose_a=True)
""", "")
    source = patch(source, """                d_inputs = d_inputs.write(k, tf.matmul(d_pre, U_transposed))""",
                   """                d_inputs = d_inputs.write(k, d_pre)""")
    source = patch(source, """            d_inputs = tf.reshape(d_inputs.stack(), shape)""",
        """            d_pre_all = tf.reshape(d_inputs.stack(), [-1, units])
            d_U = tf.matmul(tf.reshape(inputs, [-1, shape[2]]), d_pre_all, transpose_a=True)
            d_inputs = tf.reshape(tf.matmul(d_pre_all, U_transposed), shape)""")
    return source

VARIANTS = {"du_after": du_after, "local_stack": local_stack, "split_products": split_products, "current": lambda s: s, "xu_before": xu_before, "grads_after": grads_after,
            "both": lambda s: grads_after(xu_before(s))}

def compiled(name):
    namespace = dict(module.__dict__)
    exec(compile(VARIANTS[name](SOURCE), f"variant_{name}", "exec"), namespace)
    return namespace["_recurrence"]

def main():
    batch, steps, units = (int(v) for v in sys.argv[1:4])
    names = sys.argv[4].split(",")
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 15
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, steps, units)).astype("float32")
    y = rng.normal(size=(batch, steps, units)).astype("float32")
    models = {}
    for name in names:
        inputs = keras.Input((steps, units), batch_size=batch)
        if name == "simple":
            out = keras.layers.SimpleRNN(units, return_sequences=True)(inputs)
        else:
            module._recurrence = compiled(name)
            out = ElmanRNN(ElmanCell(units), return_sequences=True)(inputs)
        model = keras.Model(inputs, out)
        model.compile(keras.optimizers.SGD(1e-4), "mse")
        model.train_on_batch(x, y); model.train_on_batch(x, y)
        module._recurrence = ORIGINAL
        models[name] = model
    times = {n: [] for n in names}
    for _ in range(rounds):
        for n, m in models.items():
            t = time.perf_counter(); m.train_on_batch(x, y); times[n].append(time.perf_counter() - t)
    med = {n: 1e3 * np.median(v) for n, v in times.items()}
    ref = med.get("simple")
    print(" ".join(f"{n} {v:.1f}ms" + (f" ({ref / v:.2f}x)" if ref else "") for n, v in med.items()), flush=True)


def step_forms(batch=64, units=128, reps=400):
    W = tf.random.normal([units, units]) * 0.05
    s0 = tf.random.normal([batch, units])
    P = tf.random.normal([8, batch, units])
    bias = tf.random.normal([units])
    half = batch // 2

    def bench(kind):
        @tf.function
        def f():
            def body(i, s):
                for j in range(8):
                    if kind == "kept":
                        s = tf.tanh(P[j] + tf.matmul(s, W))
                    elif kind == "biasadd_tanh":
                        s = tf.tanh(tf.nn.bias_add(tf.matmul(s, W), bias))
                    elif kind == "sigmoid":
                        s = 2 * tf.sigmoid(2 * (P[j] + tf.matmul(s, W))) - 1
                    elif kind == "half_batches":
                        a, c = s
                        s = (tf.tanh(P[j][:half] + tf.matmul(a, W)),
                             tf.tanh(P[j][half:] + tf.matmul(c, W)))
                    elif kind == "biasadd_add_tanh":
                        s = tf.tanh(tf.nn.bias_add(tf.matmul(s, W), bias) + P[j])
                return i + 1, s
            init = (s0[:half], s0[half:]) if kind == "half_batches" else s0
            return tf.while_loop(lambda i, _: i < reps // 8, body, (0, init))[1]
        f()
        times = []
        for _ in range(9):
            started = time.perf_counter()
            f()
            times.append(time.perf_counter() - started)
        return np.median(times) / reps * 1e6

    for kind in ("kept", "biasadd_tanh", "sigmoid", "half_batches", "biasadd_add_tanh"):
        print(f"{kind:18s} {bench(kind):6.2f} us a step", flush=True)


def half_batch_forward():
    """The forward loop alone, one chain of the whole batch against two chains of half of it."""
    B,U,T,K=64,128,200,8
    W=tf.random.normal([U,U])*0.05; Uw=tf.random.normal([U,U])*0.05; b=tf.zeros([U])
    X=tf.random.normal([T,B,U]); s0=tf.zeros([B,U])
    blocks=T//K
    inb=tf.reshape(X,[blocks,K*B,U])
    def fwd(split):
        @tf.function
        def run():
            def body(i, state, states):
                proj = tf.matmul(inb[i], Uw) + b
                if not split:
                    p = tf.unstack(tf.reshape(proj,[K,B,U]), num=K)
                    for j in range(K):
                        state = tf.tanh(p[j] + tf.matmul(state, W))
                        states = states.write(i*K+j+1, state)
                    return i+1, state, states
                p = tf.unstack(tf.reshape(proj,[2*K,B//2,U]), num=2*K)
                a, c = state
                for j in range(K):
                    a = tf.tanh(p[2*j] + tf.matmul(a, W)); c = tf.tanh(p[2*j+1] + tf.matmul(c, W))
                    states = states.write(2*(i*K+j+1), a).write(2*(i*K+j+1)+1, c)
                return i+1, (a, c), states
            init = (s0[:B//2], s0[B//2:]) if split else s0
            ta = tf.TensorArray(tf.float32, size=(T+1)*(2 if split else 1), infer_shape=False)
            ta = ta.write(0, s0[:B//2]).write(1, s0[B//2:]) if split else ta.write(0, s0)
            _,_,st = tf.while_loop(lambda i,*_: i<blocks, body, (0, init, ta))
            return tf.reshape(st.stack(), [T+1,B,U])
        return run
    f0, f1 = fwd(False), fwd(True)
    r0, r1 = f0(), f1()
    print("max diff", float(tf.reduce_max(tf.abs(r0-r1))))
    t0,t1=[],[]
    for _ in range(30):
        t=time.perf_counter(); f0(); t0.append(time.perf_counter()-t)
        t=time.perf_counter(); f1(); t1.append(time.perf_counter()-t)
    print(f"one chain {np.median(t0)*1e3:.2f} ms, two half chains {np.median(t1)*1e3:.2f} ms")


if sys.argv[1:2] == ["step_forms"]:
    step_forms()
elif sys.argv[1:2] == ["half_batch_forward"]:
    half_batch_forward()
else:
    main()
