"""The benchmark machinery behind `lipschitz-rnn bench` (timings themselves live in docs/)."""

import sys

import pytest


def test_bench_smoke():
    from lipschitz_rnn._bench import epoch_estimate, format_epoch, format_table, run_bench

    rows = run_bench("cpu", grid=[(6, 2, 4)], repeats=1, solver="rk2")
    assert [r["model"] for r in rows] == ["lipschitz-fused", "lipschitz-loop", "nn.RNN", "nn.LSTM"]
    for r in rows:
        assert r["seconds"] > 0 and r["gflop"] > 0 and r["saved_mb"] > 0
    assert rows[1]["speedup_vs_loop"] == pytest.approx(1.0)
    assert "lipschitz-fused" in format_table(rows)
    (row,) = run_bench("cpu", grid=[(50, 16, 32)], repeats=1, models=("lipschitz-fused",), memory=True)
    # one fresh process; at least the step's outputs and saved values (u, hs, tanh: 3*T*B*H floats)
    if sys.platform.startswith("linux"):
        assert row["peak_mb"] >= 3 * 50 * 16 * 32 * 4 / 2**20
    assert "peak MB" in format_table([row])
    ep = epoch_estimate("cpu", T=5, B=3, H=4, batches=10, repeats=1)
    assert ep[0]["epoch_s"] == pytest.approx(10 * ep[0]["per_batch_s"])
    assert "extrapolated" in format_epoch(ep)
