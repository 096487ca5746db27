"""Probe two student candidates on the same data for a fixed number of steps, then their agreement curves."""
import dataclasses, json, sys, time, torch
torch.set_num_threads(2)
from medsamlite.training.recipe import RECIPES, run_recipe, agreement_curve
ROOT = "/root/student-probes"
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
cands = {
    "s8": dataclasses.replace(RECIPES["student-v1"], student="litemedsam:tinyvit_s8_medsam", synthetic_images=400, save_every=75),
    "repvit": dataclasses.replace(RECIPES["repvit-neck"], synthetic_images=400, save_every=75),
}
for name, r in cands.items():
    t = time.time()
    plan = run_recipe(r, f"{ROOT}/{name}", steps=STEPS, data_dir=f"{ROOT}/shared")
    print(name, "trained", round(time.time() - t), "s", {k: (v["mean"], v["worst"]) for k, v in plan.get("agreement", {}).items()}, flush=True)
for name, r in cands.items():
    agreement_curve(r, f"{ROOT}/{name}", data_dir=f"{ROOT}/shared",
                    on_point=lambda p, n=name: print(n, json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "modalities"}) for k, v in p.items()}), flush=True))
