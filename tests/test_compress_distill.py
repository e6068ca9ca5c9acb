"""Knowledge distillation (Hinton et al. 2015): the loss and the training loop."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseinfer.compress.distill import (causal_lm_forward, causal_lm_labels, distill,
                                          distillation_loss)


def hand_written_loss(student, teacher, labels, T, alpha):
    """Plain-torch formula over [N, C] rows, written out term by term."""
    p_teacher = torch.softmax(teacher.double() / T, dim=-1)
    log_p_student = torch.log_softmax(student.double() / T, dim=-1)
    kl_rows = (p_teacher * (p_teacher.log() - log_p_student)).sum(-1)
    ce_rows = -torch.log_softmax(student.double(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    return alpha * T * T * kl_rows.mean() + (1 - alpha) * ce_rows.mean()


@pytest.mark.parametrize("T", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_loss_equals_the_formula(T, alpha):
    student, teacher = torch.randn(12, 7), 3 * torch.randn(12, 7)
    labels = torch.randint(0, 7, (12,))
    loss = distillation_loss(student, teacher, labels, T=T, alpha=alpha)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), hand_written_loss(student, teacher, labels, T, alpha),
                               rtol=1e-5, atol=1e-6)


def test_alpha_zero_is_cross_entropy_and_alpha_one_identical_is_zero():
    student, teacher = torch.randn(9, 5), torch.randn(9, 5)
    labels = torch.randint(0, 5, (9,))
    torch.testing.assert_close(distillation_loss(student, teacher, labels, alpha=0.0),
                               F.cross_entropy(student, labels))
    assert distillation_loss(student, student.clone(), None, T=3.0, alpha=1.0).abs().item() < 1e-6
    assert distillation_loss(student, student.clone(), labels, T=3.0, alpha=1.0).abs().item() < 1e-6


def test_temperature_squared_scaling():
    student, teacher = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    for T in (0.5, 2.0, 8.0):
        kl = F.kl_div(F.log_softmax(student / T, -1), F.softmax(teacher / T, -1), reduction="batchmean")
        torch.testing.assert_close(distillation_loss(student, teacher, None, T=T, alpha=1.0).double(),
                                   T * T * kl.float().double(), rtol=1e-5, atol=1e-7)
    # Hinton sec. 2.1: with the T^2 factor the soft loss tends to a T-independent limit,
    # mean over rows of sum_c (d_c - mean(d))^2 / (2C) with d = student - teacher logits.
    d = student - teacher
    limit = ((d - d.mean(-1, keepdim=True)) ** 2).sum(-1).mean() / (2 * d.shape[-1])
    high_T = distillation_loss(student, teacher, None, T=300.0, alpha=1.0).double()
    assert high_T.item() == pytest.approx(limit.item(), rel=1e-2)


def test_gradients_flow_only_into_the_student():
    student = torch.randn(8, 4, requires_grad=True)
    teacher = torch.randn(8, 4, requires_grad=True)
    labels = torch.randint(0, 4, (8,))
    distillation_loss(student, teacher, labels, alpha=0.7).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_ignore_index_excludes_rows_from_both_terms():
    student, teacher = torch.randn(3, 5, 11), torch.randn(3, 5, 11)  # [B, S, V]
    labels = torch.randint(0, 11, (3, 5))
    labels[0, :2] = -100
    labels[2, 4] = -100
    keep = labels != -100
    expected = hand_written_loss(student[keep], teacher[keep], labels[keep], 2.0, 0.4)
    torch.testing.assert_close(distillation_loss(student, teacher, labels, T=2.0, alpha=0.4).double(),
                               expected, rtol=1e-5, atol=1e-6)
    labels[labels == -100] = 7  # a custom ignore_index
    labels[1, 1] = 7
    keep = labels != 7
    torch.testing.assert_close(
        distillation_loss(student, teacher, labels, T=2.0, alpha=0.4, ignore_index=7).double(),
        hand_written_loss(student[keep], teacher[keep], labels[keep], 2.0, 0.4), rtol=1e-5, atol=1e-6)
    # every row ignored: a zero that still backpropagates
    s = torch.randn(2, 3, requires_grad=True)
    loss = distillation_loss(s, torch.randn(2, 3), torch.full((2,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(s.grad, torch.zeros(2, 3))


def make_toy_task(n, generator):
    x = torch.randn(n, 8, generator=generator)
    score = torch.stack([x[:, 0] * x[:, 1], x[:, 2].sin() * 2, x[:, 3] - x[:, 4] ** 2, x[:, 5:].sum(1)], 1)
    return x, score.argmax(1)


def kl_teacher_student(teacher, student, x):
    with torch.no_grad():
        return F.kl_div(F.log_softmax(student(x), -1), F.log_softmax(teacher(x), -1),
                        reduction="batchmean", log_target=True).item()


def test_student_gets_closer_to_a_trained_teacher():
    generator = torch.Generator().manual_seed(1)
    x, y = make_toy_task(1024, generator)
    teacher = nn.Sequential(nn.Linear(8, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 4))
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        optimizer.step()
    assert (teacher(x).argmax(1) == y).float().mean() > 0.9  # the teacher did learn the task
    teacher.zero_grad(set_to_none=True)

    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    held_out, _ = make_toy_task(512, generator)
    before = kl_teacher_student(teacher, student, held_out)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 1024, 64)]
    steps_seen = []
    losses = distill(student, teacher, loader, epochs=6, lr=1e-2, T=2.0, alpha=0.7,
                     on_step=steps_seen.append)
    after = kl_teacher_student(teacher, student, held_out)
    assert len(losses) == 6 * 16 and steps_seen == list(range(1, 6 * 16 + 1))
    assert after < 0.5 * before
    assert sum(losses[-16:]) < sum(losses[:16])
    for name, value in teacher.state_dict().items():  # the teacher is never trained
        assert torch.equal(value, teacher_state[name])
    assert all(p.grad is None for p in teacher.parameters())


def test_loop_modes_steps_optimizer_and_progress():
    class ModeRecorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)
            self.modes = []

        def forward(self, x):
            self.modes.append(self.training)
            return self.linear(x)

    student, teacher = ModeRecorder(), ModeRecorder()
    student.eval()
    teacher.train()
    teacher.linear.eval()  # mixed modes come back as they were
    loader = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(3)]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    before = student.linear.weight.detach().clone()
    losses = distill(student, teacher, loader, steps=7, optimizer=optimizer, progress=True)
    assert len(losses) == 7  # steps overrides epochs and cycles the loader
    assert student.modes == [True] * 7 and teacher.modes == [False] * 7
    assert not student.training and teacher.training and not teacher.linear.training
    assert not torch.equal(student.linear.weight, before)
    # custom forward/labels on dict batches; alpha=1 needs no labels
    dict_loader = [{"x": torch.randn(4, 3)} for _ in range(2)]
    losses = distill(student, teacher, dict_loader, epochs=2, alpha=1.0,
                     forward=lambda model, batch: model(batch["x"]), labels=lambda batch: None)
    assert len(losses) == 4 and all(loss >= 0 for loss in losses)


def test_causal_lm_helpers_match_the_hf_loss_and_train():
    transformers = pytest.importorskip("transformers")

    def tiny_gpt2(layers):
        config = transformers.GPT2Config(n_layer=layers, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
        return transformers.GPT2LMHeadModel(config)

    teacher, student = tiny_gpt2(2), tiny_gpt2(1)
    ids = torch.randint(0, 64, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    batch = {"input_ids": ids, "attention_mask": mask}
    labels = causal_lm_labels(batch)
    assert labels.shape == (3, 11) and (labels[1, 7:] == -100).all() and torch.equal(labels[0], ids[0, 1:])
    teacher.eval()
    with torch.no_grad():
        hf_labels = ids.masked_fill(mask == 0, -100)
        hf_loss = teacher(input_ids=ids, attention_mask=mask, labels=hf_labels).loss
        logits = causal_lm_forward(teacher, batch)
        ours = distillation_loss(logits, logits, labels, alpha=0.0)
    torch.testing.assert_close(ours, hf_loss, rtol=1e-5, atol=1e-5)

    losses = distill(student, teacher, [batch] * 3, epochs=2, T=2.0, alpha=0.5, lr=1e-3,
                     forward=causal_lm_forward, labels=causal_lm_labels)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))


def test_bad_arguments():
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.randint(0, 3, (4,))
    for kwargs, match in [({"T": 0.0}, "T \\(temperature\\) must be > 0"), ({"T": "2"}, "T must be"),
                          ({"alpha": 1.5}, "alpha must be in"), ({"alpha": float("nan")}, "alpha must be"),
                          ({"ignore_index": 1.5}, "ignore_index must be")]:
        with pytest.raises(ValueError, match=match):
            distillation_loss(s, t, y, **kwargs)
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(s, torch.randn(4, 5), y)
    with pytest.raises(ValueError, match="student_logits must be floating point"):
        distillation_loss(torch.randn(4), torch.randn(4), y)
    with pytest.raises(TypeError, match="teacher_logits must be a torch.Tensor"):
        distillation_loss(s, [1.0], y)
    with pytest.raises(ValueError, match="labels is required when alpha < 1"):
        distillation_loss(s, t, None, alpha=0.5)
    with pytest.raises(ValueError, match="labels shape"):
        distillation_loss(s, t, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        distillation_loss(s, t, y.float())
    with pytest.raises(ValueError, match="labels must be in \\[0, 3\\)"):
        distillation_loss(s, t, torch.tensor([0, 1, 3, 0]))

    student, teacher = nn.Linear(3, 3), nn.Linear(3, 3)
    loader = [(torch.randn(2, 3), torch.randint(0, 3, (2,)))]
    weight = student.weight.detach().clone()
    for kwargs, error, match in [({"epochs": 0}, ValueError, "epochs must be a positive int"),
                                 ({"steps": 1.5}, ValueError, "steps must be a positive int"),
                                 ({"lr": -1.0}, ValueError, "lr must be > 0"),
                                 ({"T": -2.0}, ValueError, "T \\(temperature\\)"),
                                 ({"alpha": -0.1}, ValueError, "alpha must be"),
                                 ({"forward": 3}, TypeError, "forward must be callable"),
                                 ({"on_step": "x"}, TypeError, "on_step must be callable"),
                                 ({"optimizer": "adam"}, TypeError, "optimizer must be a torch.optim")]:
        with pytest.raises(error, match=match):
            distill(student, teacher, loader, **kwargs)
    assert torch.equal(student.weight, weight)  # nothing trained on bad arguments
    with pytest.raises(ValueError, match="different modules"):
        distill(student, student, loader)
    with pytest.raises(TypeError, match="student must be an nn.Module"):
        distill("student", teacher, loader)
    with pytest.raises(TypeError, match="loader must be an iterable"):
        distill(student, teacher, torch.randn(3, 3))
    with pytest.raises(ValueError, match="loader yielded no batches"):
        distill(student, teacher, [])
    with pytest.raises(ValueError, match="loader yielded no batches in pass 2"):
        distill(student, teacher, iter(loader), epochs=2)
    frozen = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters that require grad"):
        distill(frozen, teacher, loader)
    with pytest.raises(TypeError, match="pass forward="):
        distill(student, teacher, [{"x": torch.randn(2, 3)}])
