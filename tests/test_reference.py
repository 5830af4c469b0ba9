"""Full fine-tuning: every parameter trains, nothing to merge, per mille 1000."""

from method_properties import check_identity_at_init, check_only_own_parameters_train, check_save_load

from subspace_tuning.params import count_parameters


def test_full_is_identity_and_trains_everything(tiny_name, tmp_path):
    check_identity_at_init(tiny_name, "full", rank=None)
    check_only_own_parameters_train(tiny_name, "full", rank=None)
    check_save_load(tiny_name, "full", tmp_path, rank=None)


def test_full_counts_every_parameter(tiny_name):
    from method_properties import adapt

    base, model, method = adapt(tiny_name, "full", rank=None)
    total = sum(p.numel() for p in base.parameters())
    counts = count_parameters(model, method, total)
    assert counts["trainable"] == total and counts["per_mille"] == 1000
