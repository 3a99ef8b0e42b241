"""A model in a user's own module, as ``covkernels sample | eval | bench --model examples/my_model.py:patches``
loads it (``--model my_model:patches`` works too, from the folder that holds this file).

The factories return the package's trained photo-patch and digits UNets, standing in for your network:
put yours in their place (a denoiser ``D(x, sigma, **extra_args)`` in the sigma convention, or your network
wrapped by ``covkernels.adapters``), with the shape of one sample and, where it has them, its conditioning,
guidance and data range. The contract: ``covkernels.eval.user_model``.

``python examples/my_model.py reference DIR`` writes the 4096 held-out photo patches (never seen in
training) as numbered PNGs: a reference folder for ``--reference DIR``.
"""
import os
import sys

from covkernels.eval.user_model import UserModel


def patches() -> UserModel:
    """The 3 x 16 x 16 photo-patch UNet (data in [-1, 1])."""
    from covkernels.models import get_model

    return UserModel(get_model("patches"), event_shape=(3, 16, 16), name="patches_unet")


def digits():
    """The 1 x 16 x 16 digits UNet: a bare module with ``event_shape`` is enough where the defaults fit."""
    from covkernels.models import get_model

    return get_model("digits")


def write_reference(out_dir: str) -> int:
    """The held-out photo patches as ``out_dir/000000.png ...``; returns how many were written."""
    from covkernels.eval.features import to_uint8
    from covkernels.imageio import write_png
    from covkernels.models.patches import reference_patches

    images = to_uint8(reference_patches())
    os.makedirs(out_dir, exist_ok=True)
    for i, image in enumerate(images):
        write_png(os.path.join(out_dir, f"{i:06d}.png"), image.permute(1, 2, 0))
    return len(images)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "reference":
        sys.exit("usage: python examples/my_model.py reference DIR")
    print(f"wrote {write_reference(sys.argv[2])} PNGs to {sys.argv[2]}")
