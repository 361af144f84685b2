"""segment-anything as a reference for tests and benchmarks, without torchvision or OpenCV.

segment-anything (``pip install segment-anything``, a test-only dependency) imports four torchvision
functions and, for ``min_mask_region_area > 0``, one OpenCV function; neither package works here.
:func:`import_segment_anything` imports it with stand-ins for exactly those, written from the
originals' documented behaviour and independently of :mod:`medsam_monai.automatic`:

- ``torchvision.ops.boxes.batched_nms`` / ``box_area``: torchvision's CPU NMS kernel (boxes by score,
  stable sort, descending; float IoU ``inter / (area_i + area_j - inter)`` > threshold suppresses)
  and ``batched_nms``'s two paths (above 4000 coordinates on the CPU: NMS per category, then a
  plain ``sort`` by score of the kept boxes);
- ``torchvision.transforms.functional.resize`` / ``to_pil_image`` on PIL images: PIL's bilinear
  resize to ``(h, w)``, as torchvision does for PIL input;
- ``cv2.connectedComponentsWithStats(mask, 8)`` (:func:`opencv_stand_in`, only while SAM runs):
  scikit-image's 8-connected labels in raster order, stats with the area in the last column.

:func:`segment_anything_sam` builds segment-anything's ``Sam`` with the architecture of one of our
variants and loads our weights into it (our parameter names are the original ones).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .networks import SAM_VARIANTS, Sam, build_sam_variant
from .networks.registry import SamVariant
from .testing import randomize_
from .transforms import SAM_PIXEL_MEAN, SAM_PIXEL_STD

# ----- torchvision stand-ins ---------------------------------------------------------------------


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's CPU ``nms``: the full pairwise IoU matrix in the boxes' dtype, then the greedy pass."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    order = scores.sort(stable=True, dim=0, descending=True)[1]
    b = boxes[order]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp(min=0)
    h = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp(min=0)
    inter = w * h
    over = (inter / (areas[:, None] + areas[None] - inter)).double() > iou_threshold
    suppressed = np.zeros(len(order), dtype=bool)
    over_np = over.numpy()
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed[i + 1 :] |= over_np[i, i + 1 :]
    return order[torch.as_tensor(keep, dtype=torch.int64)]


def reference_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's ``batched_nms`` (CPU thresholds)."""
    if boxes.numel() > 4000:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            curr_indices = torch.where(idxs == class_id)[0]
            curr_keep_indices = reference_nms(boxes[curr_indices], scores[curr_indices], iou_threshold)
            keep_mask[curr_indices[curr_keep_indices]] = True
        keep_indices = torch.where(keep_mask)[0]
        return keep_indices[scores[keep_indices].sort(descending=True)[1]]
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return reference_nms(boxes + offsets[:, None], scores, iou_threshold)


def reference_box_area(boxes: torch.Tensor) -> torch.Tensor:
    """torchvision's ``box_area`` (integer boxes upcast to int64 unless int32/int64)."""
    if boxes.is_floating_point():
        boxes = boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()
    else:
        boxes = boxes if boxes.dtype in (torch.int32, torch.int64) else boxes.int()
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def reference_to_pil_image(pic: np.ndarray):
    """torchvision's ``to_pil_image`` for a uint8 (H, W, 3) array."""
    from PIL import Image

    return Image.fromarray(np.asarray(pic))


def reference_resize(img, size):
    """torchvision's ``resize`` of a PIL image to ``size`` (h, w): PIL's bilinear filter."""
    from PIL import Image

    h, w = size
    return img.resize((int(w), int(h)), Image.BILINEAR)


def stand_in_module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    module.__dict__.update(attributes)
    return module


def torchvision_stand_ins() -> dict[str, types.ModuleType]:
    ops_boxes = stand_in_module("torchvision.ops.boxes", batched_nms=reference_batched_nms, box_area=reference_box_area)
    functional = stand_in_module(
        "torchvision.transforms.functional", resize=reference_resize, to_pil_image=reference_to_pil_image
    )
    ops = stand_in_module("torchvision.ops", boxes=ops_boxes, batched_nms=reference_batched_nms, box_area=reference_box_area)
    transforms = stand_in_module("torchvision.transforms", functional=functional)
    return {
        "torchvision": stand_in_module("torchvision", ops=ops, transforms=transforms),
        "torchvision.ops": ops,
        "torchvision.ops.boxes": ops_boxes,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


@contextlib.contextmanager
def stand_ins(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    """``modules`` in ``sys.modules`` for the duration, the previous entries back afterwards."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def import_segment_anything() -> types.ModuleType:
    """``segment_anything``, imported with the torchvision stand-ins (which are gone from
    ``sys.modules`` afterwards: its modules keep the functions they imported)."""
    if "segment_anything" in sys.modules:
        return sys.modules["segment_anything"]
    with stand_ins(torchvision_stand_ins()):
        module = importlib.import_module("segment_anything")
        importlib.import_module("segment_anything.automatic_mask_generator")
        importlib.import_module("segment_anything.utils.amg")
    return module


# ----- OpenCV stand-in ---------------------------------------------------------------------------


def reference_connected_components_with_stats(image: np.ndarray, connectivity: int = 8):
    """``cv2.connectedComponentsWithStats``: (n_labels, labels int32, stats (n, 5) x/y/w/h/area, centroids)."""
    from skimage.measure import label, regionprops

    labels = label(np.asarray(image) != 0, connectivity=2 if connectivity == 8 else 1, background=0).astype(np.int32)
    n_labels = int(labels.max()) + 1
    stats = np.zeros((n_labels, 5), dtype=np.int32)
    centroids = np.zeros((n_labels, 2), dtype=np.float64)
    stats[0, 4] = int(np.count_nonzero(labels == 0))
    for region in regionprops(labels):
        y0, x0, y1, x1 = region.bbox
        stats[region.label] = (x0, y0, x1 - x0, y1 - y0, region.area)
        centroids[region.label] = region.centroid[::-1]
    return n_labels, labels, stats, centroids


@contextlib.contextmanager
def opencv_stand_in() -> Iterator[None]:
    """A ``cv2`` module with ``connectedComponentsWithStats`` for the duration (segment-anything's
    small-region removal imports it when it runs)."""
    cv2 = stand_in_module("cv2", connectedComponentsWithStats=reference_connected_components_with_stats)
    with stand_ins({"cv2": cv2}):
        yield


# ----- the model --------------------------------------------------------------------------------


def structured_random_sam(variant: str = "tiny", seed: int = 3) -> Sam:
    """Our ``variant`` with random weights (:func:`~medsam_monai.testing.randomize_`), rescaled where
    plain random weights give featureless masks, so that an automatic mask generator has masks with
    edges and IoU predictions in about [0, 1] to filter: LayerNorm2d gains near 1 (randomize_ gives
    them about 0.1, which flattens the image embedding), uniform transposed-convolution kernels
    (random ones print a checkerboard), larger mask and IoU heads."""
    model = randomize_(build_sam_variant(variant), seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in (model.image_encoder.neck[1], model.image_encoder.neck[3], model.mask_decoder.output_upscaling[1]):
            norm.weight.copy_(1 + 0.1 * torch.randn(norm.weight.shape, generator=gen))
        for conv in (model.mask_decoder.output_upscaling[0], model.mask_decoder.output_upscaling[3]):
            conv.weight.copy_(conv.weight[:, :, :1, :1].expand_as(conv.weight))
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(30)
            mlp.layers[-1].bias.mul_(30)
        head = model.mask_decoder.iou_prediction_head.layers[-1]
        head.weight.mul_(4)
        head.bias.fill_(0.5)
    return model


def segment_anything_sam(variant: str | SamVariant, weights_from: Sam | None = None):
    """segment-anything's ``Sam`` with the architecture of our ``variant`` (eval mode, CPU), with the
    weights of our model ``weights_from`` when given."""
    from functools import partial

    import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
    from segment_anything.modeling import Sam as SegmentAnythingSam

    spec = SAM_VARIANTS[variant] if isinstance(variant, str) else variant
    grid = spec.image_size // spec.patch_size
    model = SegmentAnythingSam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=spec.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=spec.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(spec.encoder_global_attn_indexes),
            window_size=spec.window_size,
            out_chans=spec.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(spec.image_size, spec.image_size),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=spec.prompt_embed_dim, mlp_dim=spec.decoder_mlp_dim, num_heads=spec.decoder_num_heads
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    if weights_from is not None:
        result = model.load_state_dict(weights_from.state_dict(), strict=False)
        missing = set(result.missing_keys) - {"pixel_mean", "pixel_std"}
        if missing or result.unexpected_keys:
            raise ValueError(
                f"weights do not match segment-anything's Sam: missing {sorted(missing)}, unexpected {result.unexpected_keys}"
            )
    return model.eval()


def reference_generate(sam_model, image: np.ndarray, **kwargs: Any) -> list[dict[str, Any]]:
    """segment-anything's ``SamAutomaticMaskGenerator(sam_model, **kwargs).generate(image)`` for a
    uint8 (H, W, 3) image (the OpenCV stand-in in place while it runs)."""
    import_segment_anything()
    from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator

    with opencv_stand_in():
        return SamAutomaticMaskGenerator(sam_model, **kwargs).generate(image)
