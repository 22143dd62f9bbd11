"""torch.nn.RNN's whole surface on every layer `build` makes, each checked against the same call on
torch's own layers (which `build` also makes: rnn, irnn, lstm, gru)."""

import copy
import importlib
import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lipschitz_rnn import LipschitzRNN, SequenceModel
from lipschitz_rnn.models import MODELS, build
from lipschitz_rnn.models import fused as fused_module

# the module (torch.nn.parallel.replicate is also the name of a function)
REPLICATE = importlib.import_module("torch.nn.parallel.replicate")

ALL = sorted(MODELS)
TORCH = ["gru", "irnn", "lstm", "rnn"]
OURS = [n for n in ALL if n not in TORCH]
TWO_STATE = ["cornn", "lstm"]


def make(name, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return build(name, 3, 5, dtype=dtype, **kw)


def flat(result):
    """(output, h_n) -> list of tensors (h_n may be a tuple)."""
    out, h = result
    if isinstance(out, nn.utils.rnn.PackedSequence):
        out = out.data
    return [out, *(h if isinstance(h, tuple) else (h,))]


def assert_all_close(a, b, **kw):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **kw)


def grads(layer):
    return [p.grad.clone() for p in layer.parameters()]


# --- flatten_parameters, all_weights, state_dict ----------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_flatten_parameters(name):
    layer = make(name, num_layers=2)
    x = torch.randn(6, 2, 3)
    before = flat(layer(x))
    assert layer.flatten_parameters() is None
    layer.eval()
    layer.flatten_parameters()  # as scripts do before evaluation
    assert_all_close(flat(layer(x)), before, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_all_weights(name, bidirectional):
    layer = make(name, num_layers=2, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    aw = layer.all_weights
    assert isinstance(aw, list) and len(aw) == 2 * D
    assert all(isinstance(w, list) and all(isinstance(p, nn.Parameter) for p in w) for w in aw)
    listed = [p for w in aw for p in w]
    assert len(listed) == len(list(layer.parameters()))
    assert {id(p) for p in listed} == {id(p) for p in layer.parameters()}
    for i, w in enumerate(aw):  # entry l * D + d holds layer l, direction d
        layer_idx, d = divmod(i, D)
        width = 3 if layer_idx == 0 else 5 * D
        if name in TORCH:
            suffix = "_reverse" if d else ""
            weight_ih = getattr(layer, f"weight_ih_l{layer_idx}{suffix}")
            assert w[0] is weight_ih
        else:
            weight_ih = layer.cells[i].weight_ih
            assert w == list(layer.cells[i].parameters())
            assert any(p is weight_ih for p in w)
        assert weight_ih.shape[1] == width


# the documented mapping: torch key -> our key (input map), per layer l and direction d
def torch_to_ours(key, D):
    name, rest = key.rsplit("_l", 1)
    reverse = rest.endswith("_reverse")
    layer_idx = int(rest.removesuffix("_reverse"))
    return f"cells.{layer_idx * D + int(reverse)}.{name}"


RECURRENT_KEYS = {
    "lipschitz": {"M_A", "M_W", "weight_ih", "bias_ih"},
    "odernn": {"weight_hh", "weight_ih", "bias_ih"},
    "antisymmetric": {"weight_hh", "weight_ih", "bias_ih"},
    "cornn": {"weight_hh", "weight_ih", "bias_ih"},
    "exprnn": {"log_hh", "weight_ih", "bias_mod"},
}


@pytest.mark.parametrize("name", OURS)
def test_state_dict_keys_and_mapping(name):
    ours = make(name, num_layers=2, bidirectional=True)
    ref = nn.RNN(3, 5, num_layers=2, bidirectional=True)
    expected = {f"cells.{i}.{k}" for i in range(4) for k in RECURRENT_KEYS[name]}
    assert set(ours.state_dict()) == expected
    sd = ours.state_dict()
    moved = 0
    for key, value in ref.state_dict().items():
        if key.startswith(("weight_ih", "bias_ih")):
            target = torch_to_ours(key, 2)
            if target in sd:  # ExpRNN has no input bias
                assert sd[target].shape == value.shape, key
                sd[target] = value
                moved += 1
    assert moved == (4 if name == "exprnn" else 8)
    ours.load_state_dict(sd)
    for key, value in ref.state_dict().items():
        target = torch_to_ours(key, 2)
        if target in sd and key.startswith(("weight_ih", "bias_ih")):
            assert torch.equal(ours.state_dict()[target], value)


# --- autocast --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_autocast_bfloat16(name):
    layer = make(name)
    x = torch.randn(9, 2, 3)
    ref = flat(layer(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = flat(layer(x))
    if name in TORCH:  # torch's own autocast policy (nn.RNN: bfloat16; GRU: float32)
        if name == "rnn":
            assert all(t.dtype == torch.bfloat16 for t in got)
        assert_all_close([t.float() for t in got], ref, rtol=0.05, atol=0.05)
    else:  # ours: the parameters' dtype, autocast off inside (class docstring: autocast)
        assert all(t.dtype == torch.float32 for t in got)
        assert_all_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", OURS)
def test_autocast_lower_precision_input_and_grads(name):
    """An input made in bfloat16 (e.g. by an autocast Linear in front) is cast up; its gradient
    comes back in bfloat16; parameter gradients equal those without autocast."""
    layer = make(name)
    x = torch.randn(7, 2, 3)
    (flat(layer(x))[0].square().sum()).backward()
    ref = grads(layer)
    layer.zero_grad()
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = flat(layer(xb))[0]
    assert out.dtype == torch.float32
    out.square().sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    # the input was rounded to bfloat16, so the gradients differ by that rounding only
    assert_all_close(grads(layer), ref, rtol=0.05, atol=0.02)


def test_autocast_runs_the_fused_path(monkeypatch):
    calls = []
    orig = fused_module.lipschitz_layer_scan

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(fused_module, "lipschitz_layer_scan", spy)
    layer = make("lipschitz")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(5, 2, 3))
    assert calls == [1]


def test_bfloat16_state_would_stall():
    """Why the float32 choice: the same layer with a bfloat16 state drifts far from the float64
    solution (increments eps * f below bfloat16's resolution of h are lost)."""
    torch.manual_seed(0)
    layer = LipschitzRNN(1, 32, eps=0.03, init_std=1.0, dtype=torch.float64)
    x = torch.rand(300, 4, 1, dtype=torch.float64) * 2 - 1
    exact = layer(x)[0]

    def rel(dtype):
        out = copy.deepcopy(layer).to(dtype)(x.to(dtype))[0].double()
        return ((out - exact).abs().max() / exact.abs().max()).item()

    assert rel(torch.float32) < 1e-4
    assert rel(torch.bfloat16) > 100 * rel(torch.float32)
    assert rel(torch.bfloat16) > 1e-2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_autocast_float16_cuda(name):
    layer = make(name).cuda()
    x = torch.randn(9, 2, 3, device="cuda")
    ref = flat(layer(x))
    with torch.autocast("cuda", dtype=torch.float16):
        got = flat(layer(x))
    if name in TORCH:
        assert all(t.dtype == torch.float16 for t in got)
    else:
        assert all(t.dtype == torch.float32 for t in got)
        assert_all_close(got, ref, rtol=1e-6, atol=1e-6)


# --- TorchScript, export, compile ------------------------------------------------------------
@pytest.mark.parametrize("name", OURS)
def test_jit_script_refused_clearly(name):
    # (torch 2.13 scripts nn.RNN into a module without a forward; TorchScript is deprecated)
    layer = make(name)
    msg = "cannot be compiled by torch.jit.script.*torch.compile"
    with pytest.raises(RuntimeError, match=msg):
        torch.jit.script(layer)
    with pytest.raises(RuntimeError, match=msg):  # also from inside a model, and for a cell
        torch.jit.script(SequenceModel(layer, 2))
    with pytest.raises(RuntimeError, match=msg):
        torch.jit.script(layer.cells[0])


@pytest.mark.filterwarnings("ignore:The tensor attributes self._flat_weights:UserWarning")
@pytest.mark.parametrize("name", ALL)
def test_export(name):
    layer = make(name, num_layers=2)
    x = torch.randn(6, 2, 3)
    ep = torch.export.export(layer, (x,))
    assert_all_close(flat(ep.module()(x)), flat(layer(x)), rtol=1e-6, atol=1e-6)
    if name in OURS:  # the time loop is unrolled: the sequence length is part of the graph
        with pytest.raises(Exception, match="specialized"):
            torch.export.export(layer, (x,), dynamic_shapes=({0: torch.export.Dim("T")},))


@pytest.mark.parametrize("name", ["lipschitz", "cornn", "rnn"])
def test_compile_forward_backward(name):
    torch._dynamo.reset()
    layer = make(name)
    x = torch.randn(6, 2, 3)
    ref_out = flat(layer(x))
    ref_out[0].square().sum().backward()
    ref = grads(layer)
    layer.zero_grad()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=name in OURS)
    out = flat(compiled(x))
    out[0].square().sum().backward()
    assert_all_close(out, ref_out, rtol=1e-6, atol=1e-6)
    assert_all_close(grads(layer), ref, rtol=1e-5, atol=1e-6)


# --- wrappers --------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU DataParallel (no GPU visible)")
@pytest.mark.parametrize("name", ALL)
def test_data_parallel_cpu(name):
    layer = make(name)
    ref = copy.deepcopy(layer)
    dp = nn.DataParallel(layer)
    assert dp.device_ids == []  # no GPU: DataParallel calls the module
    x = torch.randn(5, 4, 3)
    out = flat(dp(x))
    ref_out = flat(ref(x))
    assert_all_close(out, ref_out, rtol=0, atol=0)
    out[0].sum().backward()
    ref_out[0].sum().backward()
    assert_all_close(grads(layer), grads(ref), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_data_parallel_replicas(name, monkeypatch):
    """Multi-GPU DataParallel runs replicas made by torch's ``replicate`` (parameters become
    plain non-leaf attributes, ``parameters()`` of a replica is empty) in threads. Emulated on
    CPU: the real ``replicate`` with its GPU broadcast replaced by clones, two replicas in two
    threads on halves of the batch, against the module on the whole batch."""
    monkeypatch.setattr(
        REPLICATE, "_broadcast_coalesced_reshape",
        lambda tensors, devices, detach=False: [[t.clone() for t in tensors] for _ in devices],
    )
    layer = make(name, num_layers=2)
    ref = copy.deepcopy(layer)
    x = torch.randn(5, 4, 3)
    replicas = REPLICATE.replicate(layer, [0, 1])
    assert list(replicas[0].parameters()) == []
    with ThreadPoolExecutor(2) as pool:  # as parallel_apply does (it needs CUDA devices)
        outs = list(pool.map(lambda r, xi: r(xi), replicas, [x[:, :2], x[:, 2:]]))
    got = [torch.cat(parts, 1) for parts in zip(*(flat(o) for o in outs), strict=True)]
    want = flat(ref(x))
    assert_all_close(got, want, rtol=1e-6, atol=1e-7)
    sum(g.square().sum() for g in got[:1]).backward()
    want[0].square().sum().backward()
    assert_all_close(grads(layer), grads(ref), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def gloo_group(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():  # left by another test of this process: usable if world size 1
        if dist.get_world_size() != 1:
            pytest.skip("a process group of world size > 1 is already initialized")
        yield
        return
    store = tmp_path_factory.mktemp("ddp") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ALL)
def test_distributed_data_parallel(name, gloo_group):
    layer = make(name, num_layers=2)
    ref = copy.deepcopy(layer)
    ddp = DistributedDataParallel(layer)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    torch.manual_seed(1)
    for _ in range(2):
        x = torch.randn(5, 4, 3)
        for model, o in ((ddp, opt), (ref, opt_ref)):
            o.zero_grad()
            flat(model(x))[0].square().mean().backward()
            o.step()
        assert_all_close(grads(layer), grads(ref), rtol=1e-6, atol=1e-7)
    assert_all_close(list(layer.parameters()), list(ref.parameters()), rtol=1e-6, atol=1e-7)


# --- kept equal to nn.RNN --------------------------------------------------------------------
def same_structure(a, b):
    """Same types, shapes and dtypes of (output, h_n) as torch's layer of the same state kind."""
    (oa, ha), (ob, hb) = a, b
    assert type(oa) is type(ob)
    if isinstance(oa, nn.utils.rnn.PackedSequence):
        assert torch.equal(oa.batch_sizes, ob.batch_sizes)
        for ia, ib in ((oa.sorted_indices, ob.sorted_indices), (oa.unsorted_indices,
                                                               ob.unsorted_indices)):
            assert (ia is None and ib is None) or torch.equal(ia, ib)
    assert type(ha) is type(hb)
    assert [(t.shape, t.dtype) for t in flat(a)] == [(t.shape, t.dtype) for t in flat(b)]


def reference_for(name, **kw):
    torch.manual_seed(0)
    cls = nn.LSTM if name in TWO_STATE else nn.RNN
    return cls(3, 5, **kw)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_same_calls_as_nn_rnn(name, bidirectional):
    """batch_first, PackedSequence (unsorted lengths, given hx), bidirectional: the same calls give
    the same structure as torch's layer; packed results equal the padded run's valid steps."""
    kw = {"num_layers": 2, "bidirectional": bidirectional}
    ours, ref = make(name, **kw), reference_for(name, **kw)
    ours_bf = make(name, batch_first=True, **kw)
    ref_bf = reference_for(name, batch_first=True, **kw)
    x = torch.randn(6, 3, 3)
    same_structure(ours(x), ref(x))
    same_structure(ours_bf(x.transpose(0, 1)), ref_bf(x.transpose(0, 1)))
    assert_all_close(flat(ours_bf(x.transpose(0, 1).contiguous()))[1:], flat(ours(x))[1:])
    lengths = torch.tensor([4, 6, 2])
    D = 2 if bidirectional else 1
    hx = torch.randn(2 * D, 3, 5)
    if name in TWO_STATE:
        hx = (hx, torch.randn(2 * D, 3, 5))
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    got, want = ours(packed, hx), ref(packed, hx)
    same_structure(got, want)
    padded, lens = pad_packed_sequence(got[0])
    assert torch.equal(lens, lengths)
    assert padded.shape == pad_packed_sequence(want[0])[0].shape
    for i, n in enumerate(lengths.tolist()):  # each sequence alone gives the same
        h_i = tuple(h[:, i] for h in hx) if isinstance(hx, tuple) else hx[:, i]
        out_i = ours(x[:n, i], h_i)
        torch.testing.assert_close(padded[:n, i], out_i[0])
        assert_all_close([h[:, i] for h in flat(got)[1:]], flat(out_i)[1:])


@pytest.mark.parametrize("name", ALL)
def test_deepcopy_pickle_double(name):
    layer = make(name, num_layers=2)
    x = torch.randn(5, 2, 3)
    ref = flat(layer(x))
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert_all_close(flat(other(x)), ref, rtol=0, atol=0)
        with torch.no_grad():
            next(other.parameters()).add_(1.0)  # independent parameters
        assert_all_close(flat(layer(x)), ref, rtol=0, atol=0)
    double = copy.deepcopy(layer).double()
    out = flat(double(x.double()))
    assert all(t.dtype == torch.float64 for t in out)
    assert_all_close([t.float() for t in out], ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="dtype"):
        layer(x.double())


@pytest.mark.parametrize("name", ALL)
def test_functional_call(name):
    layer = make(name)
    x = torch.randn(5, 2, 3)
    params = {k: (v.detach() * 1.1).requires_grad_() for k, v in layer.named_parameters()}
    out = flat(torch.func.functional_call(layer, params, (x,)))
    other = copy.deepcopy(layer)
    other.load_state_dict({k: v.detach() for k, v in params.items()}, strict=False)
    assert_all_close(out, flat(other(x)), rtol=1e-6, atol=1e-7)
    out[0].square().sum().backward()
    flat(other(x))[0].square().sum().backward()
    for k, p in other.named_parameters():
        torch.testing.assert_close(params[k].grad, p.grad, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in layer.parameters())  # the module's own are untouched
