"""How far Object-DINO's bf16 similarities move its results from the exact float32 ones, on real weights and photos.

    python benchmarks/similarity_agreement.py      # the packaged DINOv2-S/14 and the shipped photos (assets build)

Per photo (448 px short side, k 5): whether the two runs pick the same object-cluster heads, the largest change
of the thresholded object map, and the IoU of the two maps' supports (map > 0). Prints a table and the totals.
"""

from __future__ import annotations

import torch

from eval.corloc import load_dataset
from eval.demo import photos_dir
from grounding import assets
from grounding.tower.backbone import RegisterViT
from grounding.images import load_image
from grounding.objects.object_dino import ObjectDINO


def main() -> None:
    tower = RegisterViT.from_pretrained(str(assets.require(assets.VIT)), preprocess={"short_side": 448})
    exact, fast = ObjectDINO(k=5), ObjectDINO(k=5, similarity_dtype="bfloat16")
    print("| photo | same object heads | max map change | support IoU |")
    print("|---|---|---|---|")
    same, ious = 0, []
    items = load_dataset("coco", photos_dir())
    for item in items:
        out = tower([load_image(item.path)])
        a, b = exact.analyse(out), fast.analyse(out)
        equal = bool(torch.equal(a.selected, b.selected))
        union = ((a.maps > 0) | (b.maps > 0)).sum().item()
        iou = ((a.maps > 0) & (b.maps > 0)).sum().item() / union if union else 1.0
        same += equal
        ious.append(iou)
        gap = (a.maps - b.maps).abs().max().item()
        print(f"| {item.path.name} | {'yes' if equal else 'no'} | {gap:.4f} | {iou:.3f} |")
    print(f"\n{same}/{len(items)} photos with the same object heads; mean support IoU {sum(ious) / len(ious):.3f}")


if __name__ == "__main__":
    main()
