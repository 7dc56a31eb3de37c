"""Batched on-device preprocessing: channels, resize, MedMNIST+ padding, normalisation."""
import numpy as np
import torch

from bench.preprocess import Preprocess

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def test_gray_to_rgb_resize_and_normalise():
    imgs = np.full((2, 28, 28), 255, np.uint8)
    pre = Preprocess(56, "resize", MEAN, STD)
    x = pre(pre.to_device(imgs, torch.device("cpu")))
    assert x.shape == (2, 3, 56, 56) and x.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(x[:, c], torch.tensor((1 - MEAN[c]) / STD[c]))


def test_pad_centres_image_on_black_canvas():
    imgs = np.full((1, 28, 28, 3), 255, np.uint8)
    pre = Preprocess(64, "pad", (0, 0, 0), (1, 1, 1))
    x = pre(pre.to_device(imgs, torch.device("cpu")))[0, 0]
    assert x.shape == (64, 64)
    assert x[18:46, 18:46].eq(1).all() and x.sum() == 28 * 28


def test_none_keeps_native_size_and_rgb_layout():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    pre = Preprocess(224, "none", (0, 0, 0), (1, 1, 1))
    x = pre(pre.to_device(imgs, torch.device("cpu")))
    assert x.shape == (3, 3, 28, 28)
    assert torch.allclose(x[1, 2], torch.from_numpy(imgs[1, :, :, 2]).float() / 255)


def test_red_policy_feeds_only_the_first_channel():
    imgs = np.full((1, 28, 28), 128, np.uint8)
    pre = Preprocess(28, "resize", MEAN, STD, gray="red")
    x = pre(pre.to_device(imgs, torch.device("cpu")))
    assert x[:, 1:].abs().sum() == 0 and x[:, 0].abs().sum() > 0
