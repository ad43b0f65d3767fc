"""Targets for step distillation in rectified-flow form (torch only).

- Guidance distillation (Meng et al., 2023): the student learns the guided velocity
  u_w = u_uncond + w (u_cond - u_uncond) in one forward pass.
- Progressive distillation (Salimans & Ho, 2022) with the deterministic Euler sampler as the DDIM analogue:
  the teacher takes two Euler steps t -> t' -> t''; one student step must land on the same point, so its
  velocity target is u~ = (z_t'' - z_t) / (t'' - t).
"""

from __future__ import annotations

import torch


def guided_velocity(u_cond: torch.Tensor, u_uncond: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: u_uncond + w (u_cond - u_uncond); ``w`` scalar or (B,)."""
    if isinstance(w, torch.Tensor) and w.ndim == 1:
        w = w.view(-1, *([1] * (u_cond.ndim - 1)))
    return u_uncond + w * (u_cond - u_uncond)


def halving_schedule(teacher_steps: int, student_steps: int) -> list[int]:
    """[N, N/2, ..., student]: every round halves; raises naming the keys when it cannot reach the target."""
    if student_steps < 1 or teacher_steps < student_steps:
        raise ValueError(
            f"distill.teacher_steps={teacher_steps} must be >= distill.student_steps={student_steps} >= 1"
        )
    steps, n = [teacher_steps], teacher_steps
    while n > student_steps:
        if n % 2:
            raise ValueError(
                f"distill.teacher_steps={teacher_steps} does not halve down to "
                f"distill.student_steps={student_steps} (reached odd {n})"
            )
        n //= 2
        steps.append(n)
    if n != student_steps:
        raise ValueError(
            f"distill.teacher_steps={teacher_steps} does not halve down to distill.student_steps={student_steps}"
        )
    return steps


def _b(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.view(-1, *([1] * (like.ndim - 1))).to(like)


def two_step_target(
    z_t: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor, t_next: torch.Tensor, velocity_fn
) -> torch.Tensor:
    """The single-step velocity that reproduces two teacher Euler steps t -> t_mid -> t_next.

    ``t, t_mid, t_next`` are sigmas (B,); ``velocity_fn(z, sigma)`` is the (guided) teacher. Returns u~ (B, ...).
    """
    u1 = velocity_fn(z_t, t).float()
    z_mid = z_t.float() + _b(t_mid - t, z_t) * u1
    u2 = velocity_fn(z_mid, t_mid).float()
    z_next = z_mid + _b(t_next - t_mid, z_t) * u2
    return (z_next - z_t.float()) / _b(t_next - t, z_t)


def x0_from_velocity(z_t: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The clean estimate x0 = z_t - t u of a rectified-flow velocity ``u`` at sigma ``t`` (B,)."""
    return z_t.float() - _b(t, z_t) * u.float()


def distribution_matching_loss(
    x0_student: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor
) -> torch.Tensor:
    """DMD's generator loss (Yin et al., 2024, eq. 7 with their normaliser).

    The KL gradient between the student's and the data distribution at a noise level is the difference of the
    two denoisers, fake (trained on student samples) minus real (the guided teacher). Normalised per sample by
    mean |x0_student - x0_real|; the surrogate 0.5 ||x - sg(x - g)||^2 has gradient ``g`` w.r.t. ``x0_student``.
    All (B, ...); ``x0_real`` / ``x0_fake`` carry no gradient.
    """
    dims = tuple(range(1, x0_student.ndim))
    with torch.no_grad():
        norm = (x0_student - x0_real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-6)  # (B, 1, ...)
        grad = (x0_fake - x0_real) / norm
    target = (x0_student - grad).detach()
    return 0.5 * ((x0_student.float() - target.float()) ** 2).mean()
