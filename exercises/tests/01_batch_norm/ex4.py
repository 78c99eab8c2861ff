from otter.test_files import test_case

OK_FORMAT = False

name = "ex4"
points = None


@test_case(
    points=None,
    hidden=False,
    failure_message="Keep BNLeNet's BN layers after the named layers; drop the others.",
)
def test_ex4(bn_lenet_with, variant_accuracy):
    import torch

    from d2l_ext.batch_norm import BNLeNet
    from d2l_ext.batch_norm_tools import bn_layers

    ok = callable(bn_lenet_with)
    assert ok, "bn_lenet_with should be a function of layers (and **kwargs)"
    X = torch.zeros(2, 1, 28, 28)
    full = BNLeNet()
    full(X)
    names = ("conv 1", "conv 2", "fc 1", "fc 2", "fc 3")
    sizes = dict(zip(names, [bn.num_features for bn in bn_layers(full)]))
    total = sum(p.numel() for p in full.parameters())
    for keep in [(), ("conv 1",), ("fc 1", "fc 2"), ("conv 1", "conv 2", "fc 1", "fc 2")]:
        net = bn_lenet_with(keep)
        ok = isinstance(net, torch.nn.Module)
        assert ok, "bn_lenet_with(layers) should return the model"
        net(X)
        n = sum(p.numel() for p in net.parameters())
        ok = n == total - 2 * sum((c for name, c in sizes.items() if name not in keep))
        assert ok, "each BN layer left out should take its gamma and beta with it, nothing else"
        bns, found, last, layer_names = ({id(m) for m in bn_layers(net)}, set(), None, iter(names))
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                last = next(layer_names)
            elif id(m) in bns:
                found.add(last)
        ok = found == set(keep)
        assert ok, "a BN layer should follow exactly the layers named in layers"
    ok = (
        isinstance(variant_accuracy, dict)
        and len(variant_accuracy) >= 3
        and all(isinstance(k, tuple) for k in variant_accuracy)
    )
    assert ok, "variant_accuracy should map the tuples of layers of your variants to their accuracy"
