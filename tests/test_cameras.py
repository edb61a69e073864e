"""Ray math of privnerf.data.cameras against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from privnerf.data.cameras import camera_directions, image_rays, rays_from_pixels

K22 = torch.tensor([1.0, 1.0, 1.0, 1.0])  # 2x2 image, fx = fy = 1, principal point at the image centre


def test_camera_directions_pixel_centres():
    d = camera_directions(K22, 2, 2)
    assert d.shape == (2, 2, 3)
    # pixel (u, v) = (0, 0) has its centre at (0.5, 0.5): half a pixel left of and above the principal point
    torch.testing.assert_close(d[0, 0], torch.tensor([-0.5, 0.5, -1.0]))
    torch.testing.assert_close(d[0, 1], torch.tensor([0.5, 0.5, -1.0]))
    torch.testing.assert_close(d[1, 0], torch.tensor([-0.5, -0.5, -1.0]))
    torch.testing.assert_close(d[1, 1], torch.tensor([0.5, -0.5, -1.0]))
    # the optical axis passes between the four pixels: the directions sum to (0, 0, -4)
    torch.testing.assert_close(d.sum((0, 1)), torch.tensor([0.0, 0.0, -4.0]))


def test_identity_pose_rays():
    u, v = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])
    k = torch.tensor([2.0, 4.0, 1.5, 1.5])  # 3x3 image: pixel (1, 1) is the centre pixel
    o, d, z = rays_from_pixels(torch.eye(4), k, u, v)
    torch.testing.assert_close(o, torch.zeros(3, 3))
    torch.testing.assert_close(d[1], torch.tensor([0.0, 0.0, -1.0]))
    raw0 = torch.tensor([(0.5 - 1.5) / 2.0, -(0.5 - 1.5) / 4.0, -1.0])  # (-0.5, 0.25, -1)
    torch.testing.assert_close(d[0], raw0 / raw0.norm())
    torch.testing.assert_close(z[0], raw0.norm())
    raw2 = torch.tensor([(2.5 - 1.5) / 2.0, 0.0, -1.0])
    torch.testing.assert_close(d[2], raw2 / raw2.norm())
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(3))


def test_rotated_translated_pose():
    # rotation of +90 degrees about world +Y: camera -Z (its viewing axis) becomes world -X
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    c2w = torch.tensor(
        [[c, 0.0, s, 1.0], [0.0, 1.0, 0.0, 2.0], [-s, 0.0, c, 3.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float32
    )
    k = torch.tensor([1.0, 1.0, 1.0, 1.0])
    o, d, z = rays_from_pixels(c2w, k, torch.tensor([0, 1]), torch.tensor([0, 1]))
    torch.testing.assert_close(o, torch.tensor([[1.0, 2.0, 3.0]] * 2))
    # camera (-0.5, 0.5, -1) -> world: x' = c*x + s*z = -1, y' = 0.5, z' = -s*x + c*z = 0.5
    exp0 = torch.tensor([-1.0, 0.5, 0.5])
    torch.testing.assert_close(d[0], exp0 / exp0.norm(), atol=1e-6, rtol=1e-6)
    exp1 = torch.tensor([-1.0, -0.5, -0.5])  # camera (0.5, -0.5, -1)
    torch.testing.assert_close(d[1], exp1 / exp1.norm(), atol=1e-6, rtol=1e-6)
    # batched c2w / intrinsics give the same as the broadcast single ones
    o2, d2, z2 = rays_from_pixels(c2w.expand(2, 4, 4), k.expand(2, 4), torch.tensor([0, 1]), torch.tensor([0, 1]))
    torch.testing.assert_close(d2, d)
    torch.testing.assert_close(z2, z)


def test_z_scale_maps_camera_depth_to_ray_distance():
    k = torch.tensor([3.0, 2.0, 2.0, 1.5])
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.5, -1.0, 2.0])
    u, v = torch.tensor([0, 3, 1]), torch.tensor([2, 0, 1])
    o, d, zs = rays_from_pixels(c2w, k, u, v)
    depth = 2.5
    pts = o + d * (depth * zs)[:, None]
    # the point reached lies at camera depth 2.5 (camera looks down -Z, so camera-space z = -2.5)
    torch.testing.assert_close(pts[:, 2] - c2w[2, 3], torch.full((3,), -depth))
    # and projects back onto the pixel centre it came from
    cam = pts - c2w[:3, 3]
    torch.testing.assert_close(k[0] * cam[:, 0] / -cam[:, 2] + k[2], u.float() + 0.5)
    torch.testing.assert_close(-k[1] * cam[:, 1] / -cam[:, 2] + k[3], v.float() + 0.5)
    expected = torch.sqrt(((u + 0.5 - 2.0) / 3.0) ** 2 + ((v + 0.5 - 1.5) / 2.0) ** 2 + 1.0)
    torch.testing.assert_close(zs, expected)
    assert torch.all(zs >= 1.0)


def test_image_rays_row_major():
    k = torch.tensor([2.0, 2.0, 1.5, 1.0])
    o, d, zs = image_rays(torch.eye(4), k, 2, 3)
    assert o.shape == (6, 3) and d.shape == (6, 3) and zs.shape == (6,)
    dirs = camera_directions(k, 2, 3).reshape(-1, 3)
    torch.testing.assert_close(d, dirs / dirs.norm(dim=-1, keepdim=True))
    # index v * w + u: entry 4 is (u, v) = (1, 1)
    _, d11, _ = rays_from_pixels(torch.eye(4), k, torch.tensor([1]), torch.tensor([1]))
    torch.testing.assert_close(d[4], d11[0])


@pytest.mark.parametrize("h,w", [(1, 1), (4, 7)])
def test_principal_point_at_image_centre_is_the_axis(h, w):
    k = torch.tensor([5.0, 5.0, w / 2.0, h / 2.0])
    d = camera_directions(k, h, w)
    torch.testing.assert_close(d[..., :2].mean((0, 1)), torch.zeros(2), atol=1e-6, rtol=0)
