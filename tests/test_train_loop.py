"""The training loop's parts on real chips: every head, the auxiliary losses, the schedule, --val-folder."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import link_people
from dlibplus.cli import main
from dlibplus.faces import FaceSettings
from dlibplus.finetune_data import load_chipset, prepare_finetune_data
from dlibplus.train import TrainState, _lr_lambda, build, train_one_epoch
from dlibplus.train_config import HEAD_NAMES, FinetuneConfig

PEOPLE = ["Arin", "Chaeyong", "Dahyun"]


@pytest.fixture(scope="module")
def people(tmp_path_factory, faces_dir):
    return link_people(tmp_path_factory.mktemp("loop-people"), faces_dir, "kpop_idols15", PEOPLE, 6)


@pytest.fixture(scope="module")
def chips(people):
    return load_chipset(people, FaceSettings(face_box="whole"), jobs=1, progress=False)[0]


class _Bar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_every_head_trains_with_center_and_metric_losses_in_the_loop(head, chips):
    """Each head in short real epochs with the center, triplet and dlib's metric losses: they add to the
    loss the network sees, the trained parts move, the frozen ones do not, every value stays finite."""
    cpu, dist = torch.device("cpu"), __import__("dlibplus.distributed").distributed.Dist()
    common = dict(head=head, epochs=2, freeze=5, augment=False, people_per_batch=3, images_per_person=4,
                  anchor=0, device="cpu", regime="anchor")
    torch.manual_seed(0)
    run = build(chips, FinetuneConfig(center_loss=0.1, metric_loss=0.5, triplet=1.0, **common), cpu, dist)
    plain = build(chips, FinetuneConfig(center_loss=0, metric_loss=0, triplet=0, **common), cpu, dist)
    x = torch.from_numpy(chips.chips[:12]).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(chips.labels[:12])
    with torch.no_grad():
        assert float(run.model(x, y)[0]) > float(plain.model(x, y)[0])  # the auxiliary losses count
    fc0 = run.backbone.fc.weight.detach().clone()
    head0 = [p.detach().clone() for p in run.head.parameters()]
    stem0 = run.backbone.stem.conv.weight.detach().clone()
    rows = [train_one_epoch(run, chips, epoch, _Bar()) for epoch in range(2)]
    assert all(math.isfinite(r["loss"]) and 0 <= r["train_acc"] <= 1 for r in rows)
    assert not torch.equal(run.backbone.fc.weight, fc0)
    assert any(not torch.equal(p, p0) for p, p0 in zip(run.head.parameters(), head0))
    assert torch.equal(run.backbone.stem.conv.weight, stem0)
    assert all(not p.requires_grad for name in ("stem", "layer1", "layer4") for p in getattr(run.backbone, name).parameters())


def test_validation_keeps_the_frozen_stages_activations_and_gives_encodes_figures(chips):
    """With --freeze 3, validation computes the frozen stages once per chip set; after an epoch of training
    its embeddings are still the users' encoder's, bit for bit, and so are its figures."""
    from dlibplus.calibration import validation_metrics
    from dlibplus.distributed import Dist
    from dlibplus.train import encoder_of, validate, validation_embeddings

    config = FinetuneConfig(epochs=2, freeze=3, augment=False, people_per_batch=3, images_per_person=4,
                            device="cpu", regime="anchor")
    torch.manual_seed(0)
    train, val = chips.subset(np.arange(0, len(chips), 2)), chips.subset(np.arange(1, len(chips), 2))
    run = build(train, config, torch.device("cpu"), Dist())
    assert run.frozen_stages == 3
    validate(run, train, val)
    assert set(run.frozen_features) == {id(train.chips), id(val.chips)}
    train_one_epoch(run, train, 0, _Bar())
    encoder = encoder_of(run.backbone, run.device)
    plain = encoder.encode(val.chips)
    assert np.array_equal(validation_embeddings(run, encoder, val.chips), plain)
    assert not np.array_equal(plain, encoder_of(build(train, config, torch.device("cpu"), Dist()).backbone,
                                                run.device).encode(val.chips))  # the network did move
    expected = validation_metrics(encoder.encode(train.chips), train.labels, plain, val.labels, 1e-3)
    assert validate(run, train, val) == expected


def test_learning_rate_schedule_warms_up_then_follows_a_cosine(chips):
    config = FinetuneConfig(epochs=5, freeze=6, augment=False, people_per_batch=3, images_per_person=2,
                            warmup_epochs=1, device="cpu", lr=1e-3, regime="anchor")
    run = build(chips, config, torch.device("cpu"), __import__("dlibplus.distributed").distributed.Dist())
    steps = len(run.sampler)
    total, warmup = steps * config.epochs, steps
    seen = []
    for epoch in range(config.epochs):
        for _ in range(steps):
            seen.append(run.scheduler.get_last_lr()[0])
            run.optimizer.step()
            run.scheduler.step()
    expected = [config.lr * ((s + 1) / warmup if s < warmup else
                             0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))) for s in range(total)]
    assert np.allclose(seen, expected, rtol=1e-9)
    assert _lr_lambda(10, 0)(0) == 1.0  # no warm-up: the cosine starts at the full rate


def test_val_folder_validates_on_known_people_only(people, tmp_path, faces_dir):
    val = tmp_path / "val"
    for person in PEOPLE + ["Eunha"]:  # Eunha is not in the training folder
        (val / person).mkdir(parents=True)
        for src in sorted((faces_dir / "kpop_idols15" / person).iterdir())[6:8]:
            os.symlink(src, val / person / src.name)
    data = prepare_finetune_data(people, FaceSettings(face_box="whole"), val_folder=val, jobs=1, progress=False)
    assert data.val_strangers == ["Eunha"] and len(data.val) == 6 and len(data.train) == 18
    assert data.val.classes == data.train.classes == PEOPLE
    out = tmp_path / "model"
    res = CliRunner().invoke(main, ["finetune", str(people), "-o", str(out), "--val-folder", str(val),
                                    "--face-box", "whole", "--epochs", "1", "--freeze", "6", "--jobs", "1",
                                    "--batch-people", "3", "--batch-images", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "Eunha is not in the training folder" in res.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["data"]["n_val"] == 6 and meta["data"]["n_train"] == 18


def test_checkpoint_state_round_trip(chips, tmp_path):
    config = FinetuneConfig(epochs=2, freeze=6, augment=False, people_per_batch=3, images_per_person=2, device="cpu",
                            regime="anchor")
    dist = __import__("dlibplus.distributed").distributed.Dist()
    run = build(chips, config, torch.device("cpu"), dist)
    train_one_epoch(run, chips, 0, _Bar())
    state = TrainState(epoch=0, best_epoch=0, history=[{"epoch": 1}], best_metrics={"identification_1nn": 1.0},
                       best_backbone={k: v.clone() for k, v in run.backbone.state_dict().items()})
    state.save(tmp_path / "ckpt.pt", run)
    fresh = build(chips, config, torch.device("cpu"), dist)
    loaded = TrainState.load(tmp_path / "ckpt.pt", fresh)
    assert loaded.epoch == 0 and loaded.history == [{"epoch": 1}] and loaded.best_score == (1.0, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(fresh.trainee.state_dict().values(),
                                                 run.trainee.state_dict().values()))
    other = build(chips, FinetuneConfig(**{**config.to_dict(), "lr": 1e-4}), torch.device("cpu"), dist)
    with pytest.raises(Exception, match="other settings"):
        TrainState.load(tmp_path / "ckpt.pt", other)
    # a checkpoint written before settings existed (here distill, regime) resumes when they are at their defaults
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del ckpt["config"]["distill"], ckpt["config"]["regime"]
    torch.save(ckpt, tmp_path / "older.pt")
    assert TrainState.load(tmp_path / "older.pt", fresh).epoch == 0
    distilled = build(chips, FinetuneConfig(**{**config.to_dict(), "distill": 1.0}), torch.device("cpu"), dist)
    with pytest.raises(Exception, match="other settings"):
        TrainState.load(tmp_path / "older.pt", distilled)


def _dist():
    return __import__("dlibplus.distributed").distributed.Dist()


def test_head_epochs_train_the_head_alone_then_the_network(chips, tmp_path):
    """LP-FT: in the head-only epoch every network weight stays dlib's to the bit (the L2-SP pull and the
    weight decay included) while the head moves; the network's warm-up starts after it; the epoch is
    validated but never kept or counted against patience; then the network trains."""
    from dlibplus.train import fit

    config = FinetuneConfig(epochs=2, head_epochs=1, freeze=5, augment=False, people_per_batch=3,
                            images_per_person=4, warmup_epochs=1, device="cpu", regime="anchor")
    run = build(chips, config, torch.device("cpu"), _dist())
    net0 = {k: v.clone() for k, v in run.backbone.state_dict().items()}
    head0 = [p.detach().clone() for p in run.head.parameters()]
    steps = len(run.sampler)
    lrs = []
    for epoch in range(2):
        lrs.append(run.scheduler.get_last_lr())
        train_one_epoch(run, chips, epoch, _Bar())
        if epoch == 0:
            assert all(torch.equal(v, net0[k]) for k, v in run.backbone.state_dict().items())
            assert any(not torch.equal(p, p0) for p, p0 in zip(run.head.parameters(), head0))
            assert all(p.grad is None for p in run.network)
    assert lrs[0][0] == 0.0 and lrs[0][1] > 0  # the network waits, the head trains
    assert lrs[1][0] == pytest.approx(config.lr / steps)  # the network's first warm-up step
    assert not torch.equal(run.backbone.fc.weight, net0["fc.weight"])
    assert torch.equal(run.backbone.stem.conv.weight, net0["stem.conv.weight"])  # freeze still holds

    fresh = build(chips, config, torch.device("cpu"), _dist())
    state = fit(fresh, chips, chips, TrainState(), tmp_path / "ckpt.pt", progress=False, say=lambda m: None)
    assert len(state.history) == 2 and "identification_1nn" in state.history[0]
    assert state.best_epoch in (-1, 1)  # the head-only epoch is never the kept one


def test_train_only_affine_changes_only_the_affine_layers(chips):
    """train_only="affine": after real steps only the affine layers' scale and shift differ from dlib's;
    with freeze only the unfrozen stages' affine layers; the convolutions and fc never move."""
    from dlibplus.dlibnet.net import Affine

    config = FinetuneConfig(epochs=1, train_only="affine", freeze=4, augment=False, people_per_batch=3,
                            images_per_person=4, warmup_epochs=0, lr=1e-2, anchor=0, device="cpu", regime="anchor")
    run = build(chips, config, torch.device("cpu"), _dist())
    affine = {f"{name}.{p}" for name, m in run.backbone.named_modules() if isinstance(m, Affine)
              for p in ("weight", "bias")}
    assert sum(p.numel() for p in run.network) == sum(run.backbone.state_dict()[k].numel() for k in affine
                                                      if k.startswith(("layer4", "layer5")))
    before = {k: v.clone() for k, v in run.backbone.state_dict().items()}
    train_one_epoch(run, chips, 0, _Bar())
    changed = {k for k, v in run.backbone.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= {k for k in affine if k.startswith(("layer4", "layer5"))}
    assert any(k.startswith("layer4") for k in changed) and any(k.startswith("layer5") for k in changed)


def test_lp_ft_and_affine_settings_are_checked():
    with pytest.raises(ValueError, match="head_epochs"):
        FinetuneConfig(epochs=3, head_epochs=3)
    with pytest.raises(ValueError, match="train_only"):
        FinetuneConfig(train_only="norm")
    assert _lr_lambda(10, 2, start=4)(3) == 0.0 and _lr_lambda(10, 2, start=4)(4) == 0.5


def _mixed(x: torch.Tensor, labels: np.ndarray, seed: int) -> torch.Tensor:
    """The mixed faces of a whole batch in one process (step 0 of epoch 0)."""
    from dlibplus.mixing import mix_people, plan_mix

    return mix_people(x, plan_mix(labels, np.arange(len(labels)), seed, 0, 0))


def test_mix_people_mixes_each_face_with_the_next_other_person(chips):
    """Each mixed face is ``s·x_i + (1 − s)·x_j``, j the next face (cyclically) of another person, s in
    [0.2, 0.8], the same for the same (seed, epoch, step) and new for another step."""
    from dlibplus.mixing import mix_partners, mix_people, plan_mix

    assert mix_partners(np.array([4, 4, 4])).tolist() == [1, 2, 0]  # one person: the next face
    order = np.r_[0:4, 6:10, 12:16]  # a P×K batch: 3 people, 4 faces each
    x = torch.from_numpy(chips.chips[order]).permute(0, 3, 1, 2).double()
    labels = chips.labels[order]
    slots = np.arange(len(order))
    mixed = mix_people(x, plan_mix(labels, slots, seed=3, epoch=1, step=2))
    for i in range(len(order)):
        j = next(k % len(order) for k in range(i + 1, i + len(order)) if labels[k % len(order)] != labels[i])
        differ = (x[i] - x[j]).abs() > 20  # pixels where the two faces differ clearly
        share = ((mixed[i] - x[j])[differ] / (x[i] - x[j])[differ]).numpy()
        assert np.allclose(share, share.mean(), atol=1e-9) and 0.2 <= share.mean() <= 0.8
    assert torch.equal(mixed, mix_people(x, plan_mix(labels, slots, seed=3, epoch=1, step=2)))
    assert not torch.equal(mixed, mix_people(x, plan_mix(labels, slots, seed=3, epoch=1, step=3)))


def test_mixed_faces_do_not_depend_on_the_number_of_processes(chips):
    """Under torchrun each process mixes its slice (``rank::world_size``) of the global batch, making the
    augmented chips of partners held by other processes itself: every slot's mixed face is the one a
    single process makes, for 1, 2, 3 and 5 processes, with every face mixed or half of them."""
    from dlibplus.augment import augment_batch
    from dlibplus.mixing import mix_people, plan_mix

    batch = np.r_[0:4, 6:10, 12:16]  # 3 people, 4 faces each
    labels = chips.labels[batch]

    def mixed_by(world: int, share: float) -> np.ndarray:
        out = np.full((len(batch), 3, 150, 150), np.nan)  # nan: a face not mixed
        for rank in range(world):
            slots = np.arange(len(batch))[rank::world]
            plan = plan_mix(labels, slots, 5, 2, 7, share)
            rows = np.concatenate([slots, plan.extra_slots])
            faces = torch.from_numpy(augment_batch(chips.chips[batch[rows]], 5, 2, 7, rows)).permute(0, 3, 1, 2)
            out[slots[plan.own_row]] = mix_people(faces.double(), plan).numpy()
        return out

    for share, n_mixed in ((1.0, 12), (0.5, 6)):
        one = mixed_by(1, share)
        assert (~np.isnan(one).any(axis=(1, 2, 3))).sum() == n_mixed
        for world in (2, 3, 5):
            assert np.array_equal(mixed_by(world, share), one, equal_nan=True), (share, world)


def test_distill_share_mixes_a_seeded_draw_of_the_batch():
    """``--distill-share`` mixes round(share · batch) slots, drawn anew each step, the same for the same
    (seed, epoch, step); share 1 mixes every slot."""
    from dlibplus.mixing import mixed_slots

    assert mixed_slots(32, 0, 0, 0, 1.0).tolist() == list(range(32))
    half = mixed_slots(32, 0, 3, 5, 0.5)
    assert len(half) == len(set(half.tolist())) == 16 and half.min() >= 0 and half.max() < 32
    assert np.array_equal(half, mixed_slots(32, 0, 3, 5, 0.5))
    assert not np.array_equal(half, mixed_slots(32, 0, 3, 6, 0.5))
    assert len(mixed_slots(32, 0, 0, 0, 0.01)) == 1  # never none
    with pytest.raises(ValueError, match="distill_share"):
        FinetuneConfig(distill_share=0)


def test_distillation_loss_is_dlibs_distance_and_keeps_the_network_near_dlib(chips):
    """With ``distill`` the loss gains distill × the mean squared distance between the network's and dlib's
    descriptors of mixed faces (0 while the network is dlib's); trained the same way, the distilled network
    ends nearer dlib on mixed faces it never saw than the one without."""
    cpu, dist = torch.device("cpu"), __import__("dlibplus.distributed").distributed.Dist()
    common = dict(epochs=3, freeze=5, augment=False, people_per_batch=3, images_per_person=4, anchor=0,
                  warmup_epochs=0, lr=3e-3, device="cpu", regime="anchor")
    runs = {}
    for weight in (0.0, 20.0):
        torch.manual_seed(0)
        runs[weight] = build(chips, FinetuneConfig(distill=weight, **common), cpu, dist)
    run = runs[20.0]
    assert runs[0.0].teacher is None and run.teacher is not None
    assert not any(p.requires_grad for p in run.teacher.parameters())
    x = torch.from_numpy(chips.chips[:12]).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(chips.labels[:12])
    mixed = _mixed(x, chips.labels[:12], 0)
    with torch.no_grad():
        target = run.teacher(mixed)
        plain = float(run.model(x, y)[0])
        assert float(run.model(x, y, mixed, target)[0]) == pytest.approx(plain, abs=1e-4)
        run.backbone.fc.weight.mul_(1.1)
        moved = run.backbone(mixed).double().numpy()
        by_hand = 20.0 * np.mean(np.sum((moved - target.double().numpy()) ** 2, axis=1))
        assert by_hand > 1e-3
        assert float(run.model(x, y, mixed, target)[0]) - float(run.model(x, y)[0]) == pytest.approx(by_hand, rel=1e-3)
        run.backbone.fc.weight.div_(1.1)
    for r in runs.values():
        for epoch in range(3):
            train_one_epoch(r, chips, epoch, _Bar())
    unseen = torch.from_numpy(chips.chips[12:]).permute(0, 3, 1, 2).float()
    faces = _mixed(unseen, chips.labels[12:], 1)
    with torch.no_grad():
        dlib = run.teacher(faces)
        drift = {w: float(((r.backbone(faces) - dlib) ** 2).sum(1).mean()) for w, r in runs.items()}
    assert drift[20.0] < drift[0.0]


def test_ema_averages_the_network_and_is_what_validation_keeps(chips, tmp_path):
    """config.ema: after each step the average moves 1 - ema of the way to the trained weights (one step:
    exactly the lerp between dlib's and the trained weights); validation and the kept backbone see the
    average, the optimiser keeps training the real weights, and a checkpoint carries the average."""
    from dlibplus.train import averaged_weights, fit, validate

    config = FinetuneConfig(epochs=2, ema=0.75, freeze=5, augment=False, people_per_batch=3, images_per_person=6,
                            warmup_epochs=0, lr=1e-3, anchor=0, device="cpu", regime="anchor")
    run = build(chips, config, torch.device("cpu"), _dist())
    assert len(run.sampler) == 1  # 3 people x 6 photos: one step an epoch
    start = [p.detach().clone() for p in run.network]
    train_one_epoch(run, chips, 0, _Bar())
    trained = [p.detach().clone() for p in run.network]
    assert all(torch.equal(a, torch.lerp(p0, p1, 0.25)) for a, p0, p1 in zip(run.averaged, start, trained))
    assert any(not torch.equal(a, p) for a, p in zip(run.averaged, trained))
    with averaged_weights(run):
        assert all(torch.equal(p, a) for p, a in zip(run.network, run.averaged))
    assert all(torch.equal(p, t) for p, t in zip(run.network, trained))  # the real weights come back

    fresh = build(chips, config, torch.device("cpu"), _dist())
    state = fit(fresh, chips, chips, TrainState(), tmp_path / "ckpt.pt", progress=False, say=lambda m: None)
    with averaged_weights(fresh):
        assert validate(fresh, chips, chips).items() <= state.history[-1].items()  # validated: the average
    resumed = build(chips, config, torch.device("cpu"), _dist())
    TrainState.load(tmp_path / "ckpt.pt", resumed)
    assert all(torch.equal(a, b) for a, b in zip(resumed.averaged, fresh.averaged))
    last = fit(fresh, chips, None, TrainState(epoch=0), None, progress=False, say=lambda m: None)  # keeps its last
    kept = [last.best_backbone[name] for name, p in fresh.backbone.named_parameters() if p.requires_grad]
    assert all(torch.equal(k, a) for k, a in zip(kept, fresh.averaged))
    with pytest.raises(ValueError, match="ema"):
        FinetuneConfig(ema=1.0)
