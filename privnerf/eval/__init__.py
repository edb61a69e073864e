"""Evaluation: image-quality metrics (PSNR, SSIM in :mod:`.metrics`; LPIPS in :mod:`.lpips`)."""
