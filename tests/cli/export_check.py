#!/usr/bin/env python3
"""uoe-ckpt export and import end to end: PyTorch reproduces uoe, round trips are bitwise, bad input.

usage: export_check.py OUTDIR UOE_CKPT UOE_TRAIN TORCH_UOE FIXTURE TRAIN_ARGS...

FIXTURE is a checkpoint directory written by 2 ranks with --ep 2; TRAIN_ARGS describe a tiny model
with 4 heads and a d-ff divisible by 4 (no --block-type, expert counts, --steps, --checkpoint-dir).
Checks, for a uoe model (2 attention experts top-1, 4 MLP experts top-2), a dense one, a moe one, uoe
with patch size 2 and the prob gate, uoe with patch size 4 and the sum gate, and moe with patch size 4
and the prob gate, each trained 6 steps, and for FIXTURE:
- export --eval-logits 2 writes model.safetensors, config.json, eval_logits.safetensors; every tensor
  of the file is the checkpoint's /model tensor, gathered whole from its shards, bitwise (h5py);
- TORCH_UOE --check-export (PyTorch, this interpreter: launcher/install-deps installs python3-torch;
  no torch is a failure, not a skip) reproduces uoe's evaluation log-probabilities within
  1e-5·|uoe| + 1e-6; and fails once one exported weight is reversed (the check can fail), once
  config.json's patch size or gate is rewritten (it reads them), and, naming the key, for a
  config.json it does not implement (an unknown key, another norm or gate, a patch size that does not
  cut, a derived figure that disagrees, a missing option);
- import → a checkpoint whose /model equals the source's bitwise, at step 0 with zero moments,
  which `uoe-train --config CKPTDIR/train.ini` continues; its export is byte-identical to the first;
- bad input (not safetensors, truncated, offsets or shapes that lie, a dtype other than F32, a
  missing or extra tensor, config.json missing or contradicting, a non-empty --out, a bad --format)
  is refused with a message naming it, and nothing is written.
"""
import json
import os
import re
import struct
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_helpers import fail, run  # noqa: E402


def checkpoint_model(step_dir, group="model"):
    """{name: float32 array} of /group, gathered from every shard's slabs."""
    out = {}
    shards = sorted(f for f in os.listdir(step_dir) if f.startswith("shard_"))
    for sh in shards:
        with h5py.File(os.path.join(step_dir, sh), "r") as f:
            for name, ds in f[group].items():
                shape = tuple(int(s) for s in ds.attrs["global_shape"])
                arr = out.setdefault(name, np.zeros(shape, dtype=np.float32))
                arr[int(ds.attrs["slab_begin"]):int(ds.attrs["slab_end"])] = ds[...]
    if not out:
        fail(f"no /{group} datasets in {step_dir}")
    return out


def st_read(path):
    """(header dict, data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    return json.loads(buf[8:8 + n]), buf[8 + n:]


def st_write(path, header, data):
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def st_tensors(path):
    header, data = st_read(path)
    return {k: (v, data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items() if k != "__metadata__"}


def st_rebuild(path, tensors):
    """Writes {name: (entry, bytes)} with offsets recomputed from the bytes."""
    header, data, at = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, (entry, raw) in tensors.items():
        header[name] = dict(entry, data_offsets=[at, at + len(raw)])
        data += raw
        at += len(raw)
    st_write(path, header, data)


def refused(cmd, regex, out_dir, code=1):
    """cmd must fail with `code`, print a message matching regex, and leave out_dir absent."""
    rc, text = run(cmd, expect=None)
    if rc != code:
        fail(f"exit {rc}, expected {code}, from: {' '.join(cmd)}\n{text}")
    if not re.search(regex, text):
        fail(f"message does not match /{regex}/: {' '.join(cmd)}\n{text}")
    if os.path.exists(out_dir):
        fail(f"{out_dir} exists after a refused command: {' '.join(cmd)}")
    print(f"refused as expected: {' '.join(cmd[1:3])} ...\n  {text.strip().splitlines()[-1]}")


def main():
    out, ckpt, train, torch_uoe, fixture, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], \
        sys.argv[6:]
    subprocess.run(["rm", "-rf", out])
    os.makedirs(out)
    j = lambda *p: os.path.join(out, *p)  # noqa: E731
    logs = ["--log-every", "4", "--threads", "1"]
    kinds = {
        "uoe": ["--block-type", "uoe", "--attn-experts", "2", "--attn-topk", "1", "--experts", "4", "--topk", "2"],
        "dense": ["--block-type", "dense"],
        "moe": ["--block-type", "moe", "--experts", "4", "--topk", "2"],
        # Patches and the other gates (docs/model.md, Patches, Gates): PyTorch must route them too.
        "uoe_patch2_prob": ["--block-type", "uoe", "--attn-experts", "2", "--attn-topk", "1", "--experts", "4",
                            "--topk", "2", "--patch-size", "2", "--gate", "prob"],
        "uoe_patch4_sum": ["--block-type", "uoe", "--attn-experts", "4", "--attn-topk", "2", "--experts", "4",
                           "--topk", "1", "--patch-size", "4", "--gate", "sum"],
        "moe_patch4_prob": ["--block-type", "moe", "--experts", "4", "--topk", "2", "--patch-size", "4",
                            "--gate", "prob"],
    }
    sources = {}
    for kind, opts in kinds.items():
        run([train, *args, *opts, *logs, "--steps", "6", "--checkpoint-dir", j(kind)])
        sources[kind] = j(kind, "step_00000006")
    sources["fixture"] = fixture

    for kind, src in sources.items():
        ex = j(kind + ".export")
        _, text = run([ckpt, "export", src, "--out", ex, "--eval-logits", "2", "--threads", "1"])
        print(text.strip())
        step_dir = src if os.path.exists(os.path.join(src, "manifest.h5")) else \
            os.path.join(src, open(os.path.join(src, "latest")).read().strip())
        ref = checkpoint_model(step_dir)
        got = st_tensors(os.path.join(ex, "model.safetensors"))
        if set(ref) != set(got):
            fail(f"{kind}: exported tensors differ from the checkpoint's: {sorted(set(ref) ^ set(got))}")
        for name, arr in ref.items():
            entry, raw = got[name]
            if entry["dtype"] != "F32" or tuple(entry["shape"]) != arr.shape or raw != arr.astype("<f4").tobytes():
                fail(f"{kind}: exported {name} is not the checkpoint's tensor bitwise")
        cfg = json.load(open(os.path.join(ex, "config.json")))
        want = dict(zip(kinds[kind][::2], kinds[kind][1::2])) if kind in kinds else {"--block-type": "uoe"}
        said = {"--block-type": cfg["block_type"], "--patch-size": str(cfg["patch_size"]), "--gate": cfg["gate"]}
        if any(said[o] != want.get(o, said[o]) for o in said) or cfg["vocab"] != ref["embed"].shape[0]:
            fail(f"{kind}: config.json says {said}, vocab {cfg['vocab']}; trained with {kinds.get(kind)}")
        print(f"{kind}: {len(ref)} tensors exported bitwise")

        # For the PyTorch check (below, all at once): one weight's elements reversed.
        bad = j(kind + ".mutated")
        os.makedirs(bad)
        for f in ("config.json", "eval_logits.safetensors"):
            with open(os.path.join(ex, f), "rb") as a, open(os.path.join(bad, f), "wb") as b:
                b.write(a.read())
        tensors = st_tensors(os.path.join(ex, "model.safetensors"))
        entry, raw = tensors["layers.0.mlp.w1"]
        tensors["layers.0.mlp.w1"] = (entry, np.frombuffer(raw, dtype="<f4")[::-1].tobytes())
        st_rebuild(os.path.join(bad, "model.safetensors"), tensors)

        # import → export: the same bytes; the checkpoint's /model is the source's, bitwise.
        imp = j(kind + ".imported")
        _, text = run([ckpt, "import", ex, "--out", imp])
        if not re.search(r"step 0, AdamW moments zero", text):
            fail(f"{kind}: import did not say what it wrote:\n{text}")
        back = checkpoint_model(os.path.join(imp, "step_00000000"))
        if set(back) != set(ref) or any(back[n].tobytes() != ref[n].tobytes() for n in ref):
            fail(f"{kind}: the imported checkpoint's /model differs from the source's")
        for group in ("optim/m", "optim/v"):
            if any(a.any() for a in checkpoint_model(os.path.join(imp, "step_00000000"), group).values()):
                fail(f"{kind}: the imported checkpoint's /{group} is not zero")
        ex2 = j(kind + ".export2")
        run([ckpt, "export", imp, "--out", ex2])
        if open(os.path.join(ex, "model.safetensors"), "rb").read() != \
                open(os.path.join(ex2, "model.safetensors"), "rb").read():
            fail(f"{kind}: export → import → export changed model.safetensors")
        print(f"{kind}: export → import → export byte-identical; imported /model bitwise the source's")

    # PyTorch's forward pass on each exported model gives uoe's evaluation log-probabilities ...
    exports = [j(kind + ".export") for kind in sources]
    rc, text = run([sys.executable, torch_uoe, "--check-export", *exports], expect=None)
    print(text.strip())
    verdicts = [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
    if rc != 0 or len(verdicts) != len(exports) or not all(v["ok"] for v in verdicts):
        bad = [v for v in verdicts if not v["ok"]]
        if bad:  # it ran and compared: the numbers (or a config it refuses) are the failure
            fail(f"torch_uoe.py --check-export: {len(bad)} of {len(exports)} exports failed: "
                 + "; ".join(f"{v['check_export']}: {v.get('error') or v.get('max_ratio')}" for v in bad))
        fail(f"torch_uoe.py --check-export gave {len(verdicts)} verdicts for {len(exports)} exports (exit {rc}); "
             f"if torch is missing, launcher/install-deps --tests installs python3-torch for {sys.executable}:\n{text}")
    # ... and each check fails once one weight is changed.
    mutated = [j(kind + ".mutated") for kind in sources]
    rc, text = run([sys.executable, torch_uoe, "--check-export", *mutated], expect=None)
    verdicts = [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
    if rc != 1 or len(verdicts) != len(mutated) or any(v["ok"] for v in verdicts):
        fail(f"--check-export passed a model with layers.0.mlp.w1 reversed (exit {rc}):\n{text}")
    print(f"--check-export: {len(exports)} exports within the bound; each fails with layers.0.mlp.w1 reversed")

    # The check reads the patch size and the gate: the same weights under another one's config.json fail.
    # A config.json it does not implement (an unknown key, another norm, a gate or shape it lacks, derived
    # figures that disagree) fails naming the key: it never passes a model it computes differently.
    def config_case(name, src, edit):
        d = j("torch_config", name)
        os.makedirs(d)
        for f in ("model.safetensors", "eval_logits.safetensors"):
            os.link(os.path.join(j(src + ".export"), f), os.path.join(d, f))
        c = json.load(open(j(src + ".export", "config.json")))
        edit(c)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f)
        return d
    cases = {  # directory → what the verdict must say (None: the log-probabilities differ)
        config_case("patch_ignored", "uoe_patch2_prob", lambda c: c.update(patch_size=1)): None,
        config_case("moe_patch_ignored", "moe_patch4_prob", lambda c: c.update(patch_size=1)): None,
        config_case("prob_as_renorm", "uoe_patch2_prob", lambda c: c.update(gate="renorm")): None,
        config_case("sum_as_renorm", "uoe_patch4_sum", lambda c: c.update(gate="renorm")): None,
        config_case("unknown_key", "uoe", lambda c: c.update(rope_scaling={"factor": 2})): r"rope_scaling",
        config_case("rmsnorm", "uoe", lambda c: c.update(norm="RMSNorm, eps 1e-6")): r'"norm" is .*RMSNorm',
        config_case("gate", "uoe", lambda c: c.update(gate="softmax")): r"gate 'softmax'",
        config_case("patch_cut", "uoe", lambda c: c.update(patch_size=3)): r"patch_size 3",
        config_case("derived", "moe", lambda c: c.update(mlp_expert_width=8)): r'"mlp_expert_width" is 8',
        config_case("missing", "uoe", lambda c: c.pop("patch_size")): r'"patch_size" is missing',
    }
    rc, text = run([sys.executable, torch_uoe, "--check-export", *cases], expect=None)
    verdicts = {v["check_export"]: v for v in (json.loads(ln) for ln in text.splitlines() if ln.startswith("{"))}
    if rc != 1 or set(verdicts) != set(cases):
        fail(f"--check-export on edited config.json files: exit {rc}, verdicts for {sorted(verdicts)}:\n{text}")
    for d, regex in cases.items():
        v = verdicts[d]
        if v["ok"] or (regex is None) != ("error" not in v) or (regex and not re.search(regex, v["error"])):
            fail(f"--check-export {d}: {v}, expected {'a failed comparison' if regex is None else '/' + regex + '/'}")
        print(f"--check-export {os.path.basename(d)}: failed as expected: {v.get('error') or v['max_ratio']}")

    # The imported checkpoint trains on.
    _, text = run([train, "--config", j("uoe.imported", "train.ini"), *logs, "--steps", "2"])
    if not re.search(r"resumed from [^ ]*step_00000000", text):
        fail(f"uoe-train did not resume the imported checkpoint:\n{text}")
    print("uoe-train --config uoe.imported/train.ini resumed step 0 and trained 2 steps")

    # Bad input: refused, naming what is wrong; nothing written.
    ex = j("uoe.export")
    bad, no = j("bad"), j("never")
    os.makedirs(bad)
    model = os.path.join(ex, "model.safetensors")
    cfg_text = open(os.path.join(ex, "config.json")).read()
    raw = open(model, "rb").read()

    def case(name, data=None, tensors=None, config=None):
        d = os.path.join(bad, name)
        os.makedirs(d)
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write(cfg_text if config is None else config)
        p = os.path.join(d, "model.safetensors")
        if tensors is not None:
            st_rebuild(p, tensors)
        else:
            with open(p, "wb") as f:
                f.write(raw if data is None else data)
        return d

    def edited(fn):
        t = st_tensors(model)
        fn(t)
        return t

    imp = [ckpt, "import"]
    refused([*imp, case("text", data=b"hello, not a safetensors file at all\n"), "--out", no],
            r"not a safetensors file", no)
    refused([*imp, case("truncated", data=raw[:-100]), "--out", no], r"truncated|outside the .* bytes of data", no)
    refused([*imp, case("short", data=raw[:5]), "--out", no], r"less than the 8-byte header length", no)
    header, data = st_read(model)
    lie = dict(header)
    lie["embed"] = dict(lie["embed"], data_offsets=[lie["embed"]["data_offsets"][0], lie["embed"]["data_offsets"][1] + 4])
    st_write(os.path.join(case("offsets"), "model.safetensors"), lie, data)
    refused([*imp, os.path.join(bad, "offsets"), "--out", no], r"tensor embed: shape .* needs .* bytes", no)
    lie = dict(header)
    first = min((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")[1]
    lie[first] = dict(lie[first], data_offsets=[0, 0], shape=[0])
    st_write(os.path.join(case("gap"), "model.safetensors"), lie, data)
    refused([*imp, os.path.join(bad, "gap"), "--out", no], r"a gap is left|overlap", no)
    refused([*imp, case("shape", tensors=edited(lambda t: t.__setitem__(
        "embed", (dict(t["embed"][0], shape=t["embed"][0]["shape"][::-1]), t["embed"][1])))), "--out", no],
        r"tensor embed is \[\d+, \d+\] but config.json's model has", no)
    refused([*imp, case("dtype_f16", tensors=edited(lambda t: t.__setitem__(
        "embed", (dict(t["embed"][0], dtype="F16"), t["embed"][1])))), "--out", no], r"dtype F16 is not one uoe reads",
        no)
    refused([*imp, case("dtype_i32", tensors=edited(lambda t: t.__setitem__(
        "embed", (dict(t["embed"][0], dtype="I32"), t["embed"][1])))), "--out", no], r"embed is I32.* F32", no)
    refused([*imp, case("missing", tensors=edited(lambda t: t.pop("layers.0.mlp.b2"))), "--out", no],
            r"tensor layers.0.mlp.b2 .* is missing", no)
    refused([*imp, case("extra", tensors=edited(lambda t: t.__setitem__("extra.bias", t["layers.0.mlp.b2"]))),
             "--out", no], r"tensor extra.bias .* is not a parameter", no)
    d = case("no_config")
    os.remove(os.path.join(d, "config.json"))
    refused([*imp, d, "--out", no], r"config.json: no such file", no)
    c = json.loads(cfg_text)
    c["d_model"] = c["d_model"] * 2
    for k in ("head_dim", "heads_per_attn_expert", "mlp_expert_width", "source"):
        c.pop(k)
    refused([*imp, case("config_shape", config=json.dumps(c)), "--out", no], r"config.json and the tensors disagree",
            no)
    c = json.loads(cfg_text)
    c["experts"] = 2
    refused([*imp, case("config_self", config=json.dumps(c)), "--out", no], r"contradicts itself", no)
    refused([*imp, case("config_json", config="{not json"), "--out", no], r"not JSON", no)
    refused([ckpt, "export", sources["uoe"], "--out", no, "--format", "onnx"], r"--format onnx", no, code=2)
    refused([ckpt, "export", j("bad"), "--out", no], r"not a checkpoint", no)
    full = j("uoe.export2")
    rc, text = run([ckpt, "export", sources["uoe"], "--out", full], expect=None)
    if rc != 1 or "not an empty directory" not in text or sorted(os.listdir(full)) != ["config.json",
                                                                                       "model.safetensors"]:
        fail(f"export into a non-empty --out: exit {rc}, {sorted(os.listdir(full))}\n{text}")
    print("PASS")


if __name__ == "__main__":
    main()
