from otter.test_files import test_case

OK_FORMAT = False

name = "ex5"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Checkpoint a function of the maps so far that concatenates them and runs the block.",
)
def test_ex5(CheckpointDenseBlock):
    import torch

    from d2l_ext.densenet import DenseBlock
    from d2l_ext.measure import saved_activation_bytes

    ok = isinstance(CheckpointDenseBlock, type) and issubclass(CheckpointDenseBlock, DenseBlock)
    assert ok, "CheckpointDenseBlock should be a subclass of d2l_ext.densenet.DenseBlock"
    X = torch.randn(4, 16, 8, 8)
    plain, ours = (DenseBlock(3, 8), CheckpointDenseBlock(3, 8))
    (plain(X), ours(X))
    ours.load_state_dict(plain.state_dict())
    Xa, Xb = (X.clone().requires_grad_(), X.clone().requires_grad_())
    Ya, Yb = (plain(Xa), ours(Xb))
    ok = torch.allclose(Ya, Yb, atol=1e-06)
    assert ok, "the outputs should equal the plain block's"
    Ya.square().sum().backward()
    Yb.square().sum().backward()
    ok = torch.allclose(Xa.grad, Xb.grad, atol=1e-05) and all(
        (torch.allclose(p.grad, q.grad, atol=1e-05) for p, q in zip(plain.parameters(), ours.parameters()))
    )
    assert ok, "the gradients should equal the plain block's"
    once = (16 + 2 * 8) * 4 * 8 * 8 * 4
    ok = saved_activation_bytes(ours, X) == once
    assert ok, "each map should be saved once: recompute the concatenation too"


@test_case(
    points=None,
    hidden=False,
    failure_message="Measure both blocks with saved_activation_bytes and time a forward and backward pass.",
)
def test_ex5_report(checkpoint_report):
    ok = isinstance(checkpoint_report, dict) and set(checkpoint_report) == {"saved_bytes", "step_seconds"}
    assert ok, "checkpoint_report should have the keys 'saved_bytes' and 'step_seconds'"
    for part in checkpoint_report.values():
        ok = isinstance(part, dict) and set(part) == {"plain", "checkpointed"}
        assert ok, "each keyed by 'plain', 'checkpointed'"
    s = checkpoint_report["saved_bytes"]
    ok = s["checkpointed"] == (64 + 3 * 32) * 8 * 24 * 24 * 4
    assert ok, "saved_bytes: DenseBlock(4, 32) on (8, 64, 24, 24)"
    ok = s["plain"] > 4 * s["checkpointed"]
    assert ok, "saved_bytes['plain']: the lecture's DenseBlock(4, 32)"
    ok = all(t > 0 for t in checkpoint_report["step_seconds"].values())
    assert ok, "step_seconds: positive seconds"
