#!/usr/bin/env python3
"""torch_uoe.py: the UoE model of docs/model.md (and the dense GPT it is cut from) in PyTorch, eager or under
torch.compile, with the trainer's optimizer, schedule and data windows, as the peer bench/compare
runs beside uoe-train on the same cores.

Same model, same data, same start:
  * model      pre-LN blocks h += SMHA(LN(h)), h += UoME(LN(h)); tied embedding/head; routers
               p = softmax(x̄·Wr + br) per patch of --patch-size tokens (x̄ the mean of its normalised
               rows; its tokens follow its choice and gate); top-k (ties → lower expert index, via a
               stable sort); capacity C = ceil(cf·P·k/E), each expert keeping its highest-p patches
               (ties → lower patch index); renorm gates w = k·p_e/Σ_chosen p (sum: w = 1; prob:
               w = p_e); balance loss
               α·E·Σ f_e·P_e and z-loss β·mean(lse²) per router; attention experts compute q/k/v
               only for their kept tokens, RoPE (rotate-half, base 1e4) at true positions, causal
               attention within each sequence's kept tokens; exact-erf GELU; LayerNorm eps 1e-5.
               Parameter names and layouts are uoe's (layers/model.cpp), e.g. attn.wqkv [Ea, d, 3·g·dh]
               with per-expert columns q heads | k heads | v heads.
  * data       byte tokens of --data, the last round(n·val_fraction) held out; training windows
               drawn exactly as uoe's data_sample_batch (runtime/rng.hpp ported bit for bit:
               SplitMix64 mixer, FNV-1a stream names, counter (step << 32) | (slot << 16) | b).
  * optimizer  AdamW β 0.9/0.95, eps 1e-8, decoupled weight decay on matrices (embedding and
               routers included) only; lr linear warm-up then cosine to min_lr at the last step;
               global-norm clipping; identical formulas to layers/optimizer.cpp.
  * start      --init DIR loads a uoe checkpoint (step_N/, any number of shards): parameters AND
               AdamW moments, and training continues at step N + 1 exactly as `uoe-train --resume DIR`
               does. Without --init the weights are drawn with torch's RNG (N(0, 0.02), outputs
               0.02/sqrt(2L)): fine for timing, not for comparing losses.

Threads: --threads sets torch's intra-op pool and, before torch loads, OMP_NUM_THREADS,
MKL_NUM_THREADS and OPENBLAS_NUM_THREADS (PyPI's torch calls MKL for matmul, Debian's calls
OpenBLAS); inter-op threads 1. --blas-threads overrides the BLAS libraries' count alone (0: the same).
One pool per process: with --ranks N give each rank cores / N threads.

Processes: --ranks N starts N copies as one torch.distributed (gloo) job; the model is wrapped in
DistributedDataParallel (bucketed gradient all-reduce overlapping backward), rank r draws uoe's
slot-r windows, as uoe-train under mpirun with --batch-size B per rank.

--compile wraps the model (after DDP) in torch.compile(dynamic=True): routing gives every expert a
different row count each step, so static shapes would recompile every step. The first steps
include the compilation; bench/compare drops them (--metrics has every step's time).

Output: one JSON line per step to --metrics ({"step", "train_loss", "aux_loss", "step_s", "tokens"})
and a summary on stdout's last line ({"final": true, ...}).

--check-export DIR [DIR ...] loads what `uoe-ckpt export --eval-logits N --out DIR` wrote (config.json,
model.safetensors read with json + struct + torch.frombuffer, no safetensors package) and compares
this model's log-probabilities on the stored token sequences with uoe's evaluation ones (dropless,
the model's top-k, gates and patches; uoe, dense or moe), within 1e-5·|uoe| + 1e-6; one JSON line, exit 1
beyond it, or for a config.json it does not implement (checkpoints/README.md, "Exporting"). --self-test checks the RNG port and the
window draws against values computed by the C++ code, and exits. --info prints one JSON line
(torch version, CPU capability, BLAS, oneDNN, OpenMP, compile support) and exits.
"""
import argparse
import contextlib
import json
import math
import os
import resource
import sys
import time

MASK64 = (1 << 64) - 1


# ---- runtime/rng.hpp, bit for bit ------------------------------------------------------------

def rng_mix(z):
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def rng_stream(name):
    h = 1469598103934665603
    for c in name.encode():
        h = ((h ^ c) * 1099511628211) & MASK64
    return h


def rng_bits(seed, stream, counter):
    return rng_mix(rng_mix(seed ^ rng_mix(stream)) ^ counter)


def rng_below(seed, stream, counter, n):
    return (rng_bits(seed, stream, counter) * n) >> 64


# ---- runtime/data.cpp: byte tokens, split, training windows -----------------------------------

def data_load_bytes(path, val_fraction):
    """Byte-level tokens of `path`: (train, val) as numpy int64 arrays, split like data_load."""
    import numpy as np
    if not os.path.isfile(path):
        sys.exit(f"torch_uoe.py: --data {path}: no such file")
    raw = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    n = len(raw)
    n_val = int(math.floor(n * val_fraction + 0.5))  # std::llround (n·f > 0: half away from zero)
    return raw[: n - n_val], raw[n - n_val:]


WINDOW_STREAM = rng_stream("data.window")


def window_starts(n_tokens, T, B, seed, step, slot=0):
    """Start of each of the B windows of (step, slot), as data_sample_batch draws them."""
    n_starts = n_tokens - T
    return [rng_below(seed, WINDOW_STREAM, (step << 32) | (slot << 16) | b, n_starts) for b in range(B)]


def sample_batch(tokens, T, B, seed, step, slot=0):
    import numpy as np
    starts = window_starts(len(tokens), T, B, seed, step, slot)
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(T + 1, dtype=np.int64)[None, :]
    win = tokens[idx]  # [B, T + 1]
    return win[:, :T], win[:, 1:]


def lr_at_step(s, steps, warmup, lr, min_lr):
    """layers/optimizer.cpp's schedule: s counts from 1."""
    if warmup > 0 and s <= warmup:
        return lr * s / warmup
    decay_steps = steps - warmup
    if decay_steps <= 0:
        return lr
    t = (s - warmup) / decay_steps
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


# ---- self-test: golden values from the C++ code ----------------------------------------------

def self_test(data_path):
    """Values printed by a program compiled against runtime/rng.hpp and runtime/data.hpp."""
    ok = True

    def check(what, got, want):
        nonlocal ok
        if got != want:
            ok = False
            print(f"FAIL {what}: got {got}, C++ gives {want}")

    check("rng_stream('data.window')", rng_stream("data.window"), 12465526113793502559)
    check("rng_stream('embed')", rng_stream("embed"), 14880533731917455332)
    st = WINDOW_STREAM
    golden_bits = {
        (1, 0): 4538980370153665997, (1, 1): 5466481907645782589,
        (1, (3 << 32) | 5): 10505976593487230745, (1, (200 << 32) | (1 << 16) | 15): 10951649107569582153,
        (2, 0): 2111364579596021575, (2, 1): 1478961300758091770,
        (12345678901234567, (3 << 32) | 5): 16994570507743546331,
        (12345678901234567, (200 << 32) | (1 << 16) | 15): 10480213722033815217,
    }
    for (seed, c), want in golden_bits.items():
        check(f"rng_bits({seed}, data.window, {c})", rng_bits(seed, st, c), want)
    golden_below = {(1, 0): 981034, (1, 7): 754137, (1, 15): 176035, (2, 0): 185655, (2, 7): 700099,
                    (2, 15): 310857, (100, 0): 911073, (100, 7): 237541, (100, 15): 317102}
    for (step, b), want in golden_below.items():
        check(f"rng_below(1, data.window, step {step} b {b}, 1003726)", rng_below(1, st, (step << 32) | b, 1003726),
              want)
    if data_path and os.path.exists(data_path):
        # data_load + data_sample_batch on tinyshakespeare.txt, T 128, B 16, seed 1, slot 0:
        # (step, b) -> first three inputs, last target, and a 64-bit wrapping hash Σ h·31 + x of the inputs.
        import numpy as np
        train, val = data_load_bytes(data_path, 0.1)
        if len(train) == 1003855 and len(val) == 111539:
            golden = {
                (1, 0): (32, 119, 97, 101, -5636078594763862133), (1, 5): (111, 119, 32, 102, -5260277795249938560),
                (1, 15): (111, 116, 63, 32, -1341515645821709861), (2, 0): (101, 114, 118, 110, -7249738426823993599),
                (2, 5): (111, 119, 10, 121, -3954472121231467589), (2, 15): (32, 116, 104, 110, -8655112735379840568),
                (57, 0): (100, 44, 32, 108, -6637271538027265726), (57, 5): (99, 104, 97, 105, -9172497785802745790),
                (57, 15): (101, 97, 114, 118, 6946476843740331330),
            }
            for step in (1, 2, 57):
                inp, tgt = sample_batch(train, 128, 16, 1, step)
                for b in (0, 5, 15):
                    h = 0
                    for x in inp[b]:
                        h = (h * 31 + int(x)) & MASK64
                    h = h - (1 << 64) if h >= (1 << 63) else h
                    got = (int(inp[b, 0]), int(inp[b, 1]), int(inp[b, 2]), int(tgt[b, -1]), h)
                    check(f"window step {step} b {b}", got, golden[(step, b)])
        else:
            check("tinyshakespeare split sizes", (len(train), len(val)), (1003855, 111539))
    print("self-test: " + ("PASS" if ok else "FAIL"))
    return ok


# ---- the model --------------------------------------------------------------------------------

def build_model_class(torch):
    F = torch.nn.functional

    class TorchUoE(torch.nn.Module):
        """uoe's Model (block_type uoe, dense or moe) with uoe's parameter names and layouts. moe: dense
        attention and a routed MLP of E independent experts of width d_ff / E (give d_ff = E × the expert
        width)."""

        def __init__(self, a, vocab):
            super().__init__()
            self.attn_routed = a.block_type == "uoe"
            self.mlp_routed = a.block_type != "dense"
            self.L, self.d, self.H, self.V = a.layers, a.d_model, a.heads, vocab
            self.Ea, self.ka = (a.attn_experts, a.attn_topk) if self.attn_routed else (1, 1)
            self.E, self.k = (a.experts, a.topk) if self.mlp_routed else (1, 1)
            self.dh = a.d_model // a.heads
            self.g = a.heads // self.Ea
            self.f = a.d_ff // self.E
            self.cf, self.gate, self.ps = a.capacity_factor, a.gate, a.patch_size
            if self.gate not in ("renorm", "sum", "prob"):
                raise ValueError(f"gate {self.gate}: this model has renorm, sum and prob gates")
            if self.ps < 1 or a.seq_len % self.ps:
                raise ValueError(f"patch size {self.ps} does not divide seq_len {a.seq_len}")
            self.aux_w, self.z_w = a.aux_loss, a.z_loss
            self.T = a.seq_len
            # --precision bf16 runs the forward under autocast (main): the parts uoe keeps in fp32 in
            # bf16 — the routers (scores, softmax, top-k, capacity) and attention's scores and
            # softmax·V — leave it here (docs/architecture.md, Precision).
            self.mixed = getattr(a, "precision", "fp32") == "bf16"
            self.p = {}  # uoe name -> Parameter, in uoe's order
            d, L, gd = self.d, self.L, self.g * self.dh
            std_w, std_out = 0.02, 0.02 / math.sqrt(2.0 * L)
            self._add("embed", (vocab, d), std_w)
            for l in range(L):
                p = f"layers.{l}."
                self._add(p + "attn.norm.scale", (d,), "ones")
                self._add(p + "attn.norm.bias", (d,), "zeros")
                if self.attn_routed:
                    self._add(p + "attn.router.weight", (d, self.Ea), std_w)
                    self._add(p + "attn.router.bias", (self.Ea,), "zeros")
                self._add(p + "attn.wqkv", (self.Ea, d, 3 * gd), std_w)
                self._add(p + "attn.wo", (self.Ea, gd, d), std_out)
                self._add(p + "attn.bo", (d,), "zeros")
                self._add(p + "mlp.norm.scale", (d,), "ones")
                self._add(p + "mlp.norm.bias", (d,), "zeros")
                if self.mlp_routed:
                    self._add(p + "mlp.router.weight", (d, self.E), std_w)
                    self._add(p + "mlp.router.bias", (self.E,), "zeros")
                self._add(p + "mlp.w1", (self.E, d, self.f), std_w)
                self._add(p + "mlp.b1", (self.E, self.f), "zeros")
                self._add(p + "mlp.w2", (self.E, self.f, d), std_out)
                self._add(p + "mlp.b2", (d,), "zeros")
            self._add("final_norm.scale", (d,), "ones")
            self._add("final_norm.bias", (d,), "zeros")
            # RoPE table [T, dh/2]: pos · 10000^(−i/half), in double then float (kernels.cpp rope_table).
            half = self.dh // 2
            pos = torch.arange(self.T, dtype=torch.float64)[:, None]
            inv = torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                            -torch.arange(half, dtype=torch.float64) / half)[None, :]
            ang = pos * inv
            self.rope_cos = torch.cos(ang).float()
            self.rope_sin = torch.sin(ang).float()
            self.causal = torch.triu(torch.ones(self.T, self.T, dtype=torch.bool), diagonal=1)  # True = masked

        def _add(self, name, shape, init):
            t = torch.empty(shape)
            if init == "ones":
                t.fill_(1.0)
            elif init == "zeros":
                t.zero_()
            else:
                t.normal_(0.0, init)
            prm = torch.nn.Parameter(t)
            self.register_parameter(name.replace(".", "__"), prm)
            self.p[name] = prm

        @staticmethod
        def decays(name):
            """Weight decay on matrices only (embedding, routers, expert matrices), as uoe."""
            return name == "embed" or name.endswith((".weight", ".wqkv", ".wo", ".w1", ".w2"))

        # -- routing (docs/model.md, Routing, Gates, Capacity, Patches) --
        def fp32(self):
            """A scope outside autocast where uoe computes in fp32 in bf16 too (nothing without --precision bf16)."""
            return torch.autocast("cpu", enabled=False) if self.mixed else contextlib.nullcontext()

        def route(self, xn, Wr, br, E, k, aux):
            with self.fp32():
                return self.route_fp32(xn.float(), Wr, br, E, k, aux)

        def route_fp32(self, xn, Wr, br, E, k, aux):
            """xn [N, d], the block's normalised input. Returns, per expert, (token indices it keeps,
            ascending; their gate weights). A patch is ps consecutive rows of one sequence: the router
            scores the patch's mean row, every token of the patch follows that choice and that gate, and
            capacity, the balance loss and the z-loss count patches."""
            ps = self.ps
            P = xn.shape[0] // ps
            xm = xn.reshape(P, ps, xn.shape[1]).mean(dim=1) if ps > 1 else xn  # [P, d]
            logits = torch.addmm(br, xm, Wr)  # [P, E]
            prob = torch.softmax(logits, dim=-1)
            pd = prob.detach()
            # top-k, best first; a stable descending sort sends ties to the lower expert index
            choice = torch.sort(pd, dim=-1, descending=True, stable=True).indices[:, :k]  # [P, k]
            psel = prob.gather(1, choice)
            if self.gate == "renorm":
                gate = k * psel / psel.sum(dim=-1, keepdim=True)  # before any capacity drop
            elif self.gate == "prob":
                gate = psel  # w = p_e (Switch / GShard)
            else:  # sum
                gate = torch.ones(P, k)
            gate_full = torch.zeros(P, E).scatter(1, choice, gate)  # [P, E], 0 where not chosen
            chosen = torch.zeros(P, E, dtype=torch.bool).scatter_(1, choice, True)
            counts = chosen.sum(dim=0)
            cap = self.cf * P * k / E
            C = int(math.ceil(cap - cap * 1e-12)) if self.cf > 0 else 0
            kept = []
            within = torch.arange(ps)
            for e in range(E):
                if C and int(counts[e]) > C:
                    # highest p first, ties → lower patch index (stable); then back in patch order
                    score = torch.where(chosen[:, e], pd[:, e], torch.full_like(pd[:, e], -1.0))
                    top = torch.sort(score, descending=True, stable=True).indices[:C]
                    idx = torch.sort(top).values
                else:
                    idx = chosen[:, e].nonzero(as_tuple=True)[0]
                gt = gate_full[idx, e]
                if ps > 1:  # patches → their tokens, in order; each token carries its patch's gate
                    idx = (idx[:, None] * ps + within[None, :]).reshape(-1)
                    gt = gt.repeat_interleave(ps)
                kept.append((idx, gt))
            f = counts.to(torch.float32) / (P * k)
            aux.append(self.aux_w * E * (f * prob.mean(dim=0)).sum())
            if self.z_w > 0:
                aux.append(self.z_w * (torch.logsumexp(logits, dim=-1) ** 2).mean())
            return kept

        def rope(self, x, pos):  # x [n, heads, dh], pos [n]
            half = self.dh // 2
            c = self.rope_cos[pos].unsqueeze(1)
            s = self.rope_sin[pos].unsqueeze(1)
            x1, x2 = x[..., :half], x[..., half:]
            return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

        def attention(self, q, k, v, mask):  # [Bt, g, L, dh] each; mask [L, L] True = masked
            with self.fp32():
                q, k, v = q.float(), k.float(), v.float()
                s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.dh))
                s = s.masked_fill(mask, float("-inf"))
                return torch.matmul(torch.softmax(s, dim=-1), v)

        def attn_block(self, l, h, B, aux):
            p, N, T, d, g, dh = f"layers.{l}.attn.", h.shape[0], self.T, self.d, self.g, self.dh
            gd = g * dh
            xn = F.layer_norm(h, (d,), self.p[p + "norm.scale"], self.p[p + "norm.bias"], 1e-5)
            Wqkv, Wo = self.p[p + "wqkv"], self.p[p + "wo"]
            if not self.attn_routed:  # standard causal MHA with RoPE
                qkv = (xn @ Wqkv[0]).view(N, 3, g, dh)
                pos = torch.arange(T).repeat(B)
                q, k, v = self.rope(qkv[:, 0], pos), self.rope(qkv[:, 1], pos), qkv[:, 2]
                q, k, v = (t.reshape(B, T, g, dh).transpose(1, 2) for t in (q, k, v))
                o = self.attention(q, k, v, self.causal).transpose(1, 2).reshape(N, gd)
                return h + torch.addmm(self.p[p + "bo"], o, Wo[0])
            kept = self.route(xn, self.p[p + "router.weight"], self.p[p + "router.bias"], self.Ea, self.ka, aux)
            # Projections per expert (its kept tokens only); attention of all experts in one batch,
            # each (expert, sequence) a row packed left in position order and padded to Lmax.
            qs, ks, vs, grp, slots, idxs, gates = [], [], [], [], [], [], []
            for a, (idx, gt) in enumerate(kept):
                n = idx.numel()
                if n == 0:
                    continue
                qkv = (xn.index_select(0, idx) @ Wqkv[a]).view(n, 3, g, dh)
                pos, seq = idx % T, idx // T
                qs.append(self.rope(qkv[:, 0], pos))
                ks.append(self.rope(qkv[:, 1], pos))
                vs.append(qkv[:, 2])
                cnt = torch.bincount(seq, minlength=B)
                start = torch.cumsum(cnt, 0) - cnt
                slots.append(torch.arange(n) - start[seq])  # position within the expert's kept tokens
                grp.append(seq + a * B)
                idxs.append(idx)
                gates.append(gt)
            grp_all, slot_all = torch.cat(grp), torch.cat(slots)
            Lmax = int(slot_all.max()) + 1
            # Packed rows are in position order, so "pos_j ≤ pos_i" is "slot j ≤ slot i": a causal mask.
            # Padding sits after a row's last kept token: no kept query sees it.
            def pack(parts):
                x = torch.cat(parts)
                return x.new_zeros(self.Ea * B, Lmax, g, dh).index_put((grp_all, slot_all), x).transpose(1, 2)
            o = self.attention(pack(qs), pack(ks), pack(vs), self.causal[:Lmax, :Lmax]).transpose(1, 2)
            o = o[grp_all, slot_all].reshape(-1, gd)  # [rows, g·dh], experts one after another
            ys, r0 = [], 0
            for a, (idx, gt) in enumerate(kept):
                n = idx.numel()
                if n == 0:
                    continue
                ys.append((o[r0:r0 + n] @ Wo[a]) * gt.unsqueeze(1))
                r0 += n
            comb = torch.zeros(N, d).index_add(0, torch.cat(idxs), torch.cat(ys).float())
            return h + self.p[p + "bo"] + comb

        def mlp_block(self, l, h, aux):
            p, N, d = f"layers.{l}.mlp.", h.shape[0], self.d
            xn = F.layer_norm(h, (d,), self.p[p + "norm.scale"], self.p[p + "norm.bias"], 1e-5)
            W1, b1, W2 = self.p[p + "w1"], self.p[p + "b1"], self.p[p + "w2"]
            if not self.mlp_routed:
                return h + torch.addmm(self.p[p + "b2"], F.gelu(torch.addmm(b1[0], xn, W1[0])), W2[0])
            kept = self.route(xn, self.p[p + "router.weight"], self.p[p + "router.bias"], self.E, self.k, aux)
            ys, idxs = [], []
            for e, (idx, gt) in enumerate(kept):
                if idx.numel() == 0:
                    continue
                y = F.gelu(torch.addmm(b1[e], xn.index_select(0, idx), W1[e])) @ W2[e]
                ys.append(y * gt.unsqueeze(1))
                idxs.append(idx)
            comb = torch.zeros(N, d).index_add(0, torch.cat(idxs), torch.cat(ys).float())
            return h + self.p[p + "b2"] + comb

        def forward(self, inputs, targets):
            """inputs, targets: LongTensor [B, T]. Returns (mean CE, Σ router losses)."""
            logits, aux = self.logits(inputs)
            ce = F.cross_entropy(logits, targets.reshape(-1))
            return ce, aux

        def logits(self, inputs):
            """inputs: LongTensor [B, T]. Returns (logits [B·T, V], Σ router losses)."""
            B = inputs.shape[0]
            h = F.embedding(inputs.reshape(-1), self.p["embed"])  # [N, d]
            aux = []
            for l in range(self.L):
                h = self.attn_block(l, h, B, aux)
                h = self.mlp_block(l, h, aux)
            hf = F.layer_norm(h, (self.d,), self.p["final_norm.scale"], self.p["final_norm.bias"], 1e-5)
            return hf @ self.p["embed"].t(), (sum(aux) if aux else torch.zeros(()))

    return TorchUoE


# ---- uoe checkpoints --------------------------------------------------------------------------

def checkpoint_read(path):
    """{name: numpy array (global shape)} for /model and the AdamW moments, and the step."""
    import glob
    import h5py
    import numpy as np
    out = {"model": {}, "m": {}, "v": {}}
    step = None
    shards = sorted(glob.glob(os.path.join(path, "shard_*.h5")))
    if not shards:
        sys.exit(f"torch_uoe.py: no shard_*.h5 in checkpoint {path}")
    for sh in shards:
        with h5py.File(sh, "r") as f:
            step = int(f["state"].attrs["step"])
            for key, group in (("model", "model"), ("m", "optim/m"), ("v", "optim/v")):
                if group not in f:
                    continue
                for name, ds in f[group].items():
                    shape = tuple(int(s) for s in ds.attrs["global_shape"])
                    arr = out[key].setdefault(name, np.zeros(shape, dtype=np.float32))
                    b0, b1 = int(ds.attrs["slab_begin"]), int(ds.attrs["slab_end"])
                    arr[b0:b1] = ds[...]
    return out, step


def load_checkpoint(torch, model, opt, path):
    ck, step = checkpoint_read(path)
    missing = sorted(set(model.p) ^ set(ck["model"]))
    if missing:
        sys.exit(f"torch_uoe.py: checkpoint {path} and the model disagree on tensors: {missing[:8]}")
    with torch.no_grad():
        for name, prm in model.p.items():
            arr = ck["model"][name]
            if tuple(arr.shape) != tuple(prm.shape):
                sys.exit(f"torch_uoe.py: {name}: checkpoint shape {arr.shape}, model {tuple(prm.shape)}")
            prm.copy_(torch.from_numpy(arr))
            if name in ck["m"]:
                opt.state[prm] = {"step": torch.tensor(float(step)),
                                  "exp_avg": torch.from_numpy(ck["m"][name].copy()),
                                  "exp_avg_sq": torch.from_numpy(ck["v"][name].copy())}
    return step


# ---- uoe-ckpt export: safetensors + config.json -----------------------------------------------

# The bound of the check, as uoe-ckpt convert --check's: |torch − uoe| ≤ rtol·|uoe| + atol per value.
EXPORT_RTOL, EXPORT_ATOL = 1e-5, 1e-6


class Refused(Exception):
    """An export this reference cannot reproduce exactly: the check fails with this message."""


def safetensors_read(torch, path):
    """{name: tensor} of a safetensors file (8-byte LE header length, JSON header, raw LE data), read
    with json + struct + torch.frombuffer (no safetensors package)."""
    import struct
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise Refused(f"{path}: {e.strerror}")
    if len(buf) < 8:
        raise Refused(f"{path}: not a safetensors file ({len(buf)} bytes)")
    n = struct.unpack("<Q", buf[:8])[0]
    if 8 + n > len(buf):
        raise Refused(f"{path}: header of {n} bytes, but the file has {len(buf) - 8} after its length")
    try:
        header = json.loads(buf[8:8 + n])
    except ValueError as e:
        raise Refused(f"{path}: the header is not JSON ({e})")
    data = memoryview(buf)[8 + n:]
    dtypes = {"F32": torch.float32, "I32": torch.int32}
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        if v["dtype"] not in dtypes:
            raise Refused(f"{path}: tensor {name} is {v['dtype']}; F32 or I32 expected")
        b, e = v["data_offsets"]
        if not 0 <= b <= e <= len(data):
            raise Refused(f"{path}: tensor {name}: data_offsets [{b}, {e}] outside the {len(data)} data bytes")
        dt = dtypes[v["dtype"]]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=dt) if e > b else torch.empty(0, dtype=dt)
        out[name] = t.reshape(v["shape"])
    return out


# What config.json says the model is (launcher/ckpt_export.cpp) and what TorchUoE computes; any other
# text is a model this reference does not implement.
EXPORT_DESCRIPTION = {
    "architecture": "uoe language model (docs/model.md): pre-LN blocks h += SMHA(LN(h)), h += UoME(LN(h)); "
                    "tied embedding and head; final LayerNorm",
    "norm": "LayerNorm, eps 1e-5",
    "activation": "GELU (exact erf)",
    "positions": "RoPE, rotate-half, base 10000",
    "router": "p = softmax(x·router.weight + router.bias), top-k, ties to the lower expert",
}
# Keys that do not change evaluation log-probabilities: capacity (evaluation is dropless, docs/model.md,
# Capacity), the router losses (training only), the tokenizer (the tokens are stored as ids; vocab is
# checked), where the export came from.
EXPORT_NO_EFFECT = {"capacity_factor", "aux_loss", "z_loss", "tokenizer", "source"}


def export_model_args(cfg, where):
    """config.json → TorchUoE's arguments. Every key is honoured, known not to change the evaluation
    output, or refused (Refused) — a model this reference would compute differently never passes."""
    import types

    def get(key, kind):
        if key not in cfg:
            raise Refused(f"{where}: \"{key}\" is missing")
        v = cfg[key]
        ok = isinstance(v, str) if kind is str else \
            isinstance(v, bool) if kind is bool else \
            isinstance(v, int) and not isinstance(v, bool) if kind is int else \
            isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            raise Refused(f"{where}: \"{key}\" is {json.dumps(v)}, not a {kind.__name__}")
        return v

    if cfg.get("format") != "uoe-safetensors" or cfg.get("format_version") != 1:
        raise Refused(f"{where}: not a uoe export of format version 1 (format {cfg.get('format')!r}, "
                      f"format_version {cfg.get('format_version')!r})")
    for key, text in EXPORT_DESCRIPTION.items():
        if get(key, str) != text:
            raise Refused(f"{where}: \"{key}\" is {cfg[key]!r}; this reference implements {text!r}")
    bt = get("block_type", str)
    if bt not in ("uoe", "dense", "moe"):
        raise Refused(f"{where}: block_type {bt!r}: this reference has uoe, dense and moe")
    gate = get("gate", str)
    if gate not in ("renorm", "sum", "prob"):
        raise Refused(f"{where}: gate {gate!r}: this reference has the renorm, sum and prob gates")
    L, d, H, T, V = (get(k, int) for k in ("layers", "d_model", "heads", "seq_len", "vocab"))
    Ea, ka, E, k, F_, eff, ps = (get(k, int) for k in ("attn_experts", "attn_topk", "experts", "topk", "d_ff",
                                                         "expert_d_ff", "patch_size"))
    for key in ("capacity_factor", "aux_loss", "z_loss"):
        get(key, float)
    get("tokenizer", str)
    attn_routed, mlp_routed = bt == "uoe", bt != "dense"
    if min(L, d, H, T, V, Ea, ka, E, k, F_, ps) < 1 or eff < 0:
        raise Refused(f"{where}: a model size is below 1 (or expert_d_ff below 0)")
    if d % H or (d // H) % 2 or T % ps or (attn_routed and (H % Ea or ka > Ea)) or (mlp_routed and k > E):
        raise Refused(f"{where}: shapes that do not cut (d_model {d}, heads {H}, attn_experts {Ea}, attn_topk {ka}, "
                      f"experts {E}, topk {k}, seq_len {T}, patch_size {ps})")
    if eff and bt != "moe":
        raise Refused(f"{where}: expert_d_ff {eff} is for block_type moe (this is {bt})")
    width = (eff or F_ // E) if bt == "moe" else F_ // E if bt == "uoe" else F_
    if bt == "uoe" and F_ % E:
        raise Refused(f"{where}: d_ff {F_} does not cut into {E} experts")
    # The derived figures must be this reading's.
    derived = {"head_dim": d // H, "heads_per_attn_expert": H // Ea if attn_routed else H,
               "mlp_expert_width": width, "attn_routed": attn_routed, "mlp_routed": mlp_routed}
    for key, want in derived.items():
        if get(key, bool if isinstance(want, bool) else int) != want:
            raise Refused(f"{where}: \"{key}\" is {json.dumps(cfg[key])}, but the options give {json.dumps(want)}: "
                          f"this reference reads the model differently")
    known = {"format", "format_version", *EXPORT_DESCRIPTION, *EXPORT_NO_EFFECT, *derived, "block_type", "gate",
             "layers", "d_model", "heads", "seq_len", "vocab", "attn_experts", "attn_topk", "experts", "topk",
             "d_ff", "expert_d_ff", "patch_size"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise Refused(f"{where}: keys this reference does not implement: {', '.join(unknown)}")
    return types.SimpleNamespace(
        block_type=bt, layers=L, d_model=d, heads=H, attn_experts=Ea, attn_topk=ka, experts=E, topk=k,
        d_ff=width * (E if mlp_routed else 1), capacity_factor=0.0,  # evaluation is dropless
        gate=gate, patch_size=ps, aux_loss=0.0, z_loss=0.0, seq_len=T), V


def check_export(torch, path):
    """Loads `uoe-ckpt export --eval-logits N` output (DIR/config.json, model.safetensors,
    eval_logits.safetensors) into TorchUoE and compares its log-probabilities on the stored tokens
    with uoe's (forward_eval: dropless, the model's top-k, gates and patches). Prints one JSON line;
    0 if every value is within EXPORT_RTOL·|uoe| + EXPORT_ATOL, 1 otherwise, and 1 with "error" (also
    on stderr) for an export this reference cannot reproduce: it never passes one it does not model."""
    try:
        return check_export_or_refuse(torch, path)
    except Refused as e:
        print(f"torch_uoe.py --check-export: {e}", file=sys.stderr)
        print(json.dumps({"check_export": path, "ok": False, "error": str(e)}))
        return 1


def check_export_or_refuse(torch, path):
    F = torch.nn.functional
    where = os.path.join(path, "config.json")
    try:
        with open(where) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise Refused(f"{where}: {e}")
    if not isinstance(cfg, dict):
        raise Refused(f"{where}: not a JSON object")
    a, vocab = export_model_args(cfg, where)
    model = build_model_class(torch)(a, vocab)
    weights = safetensors_read(torch, os.path.join(path, "model.safetensors"))
    differ = sorted(set(model.p) ^ set(weights))
    if differ:
        raise Refused(f"{path}/model.safetensors and config.json's model disagree on tensors: {differ[:8]}")
    with torch.no_grad():
        for name, prm in model.p.items():
            if weights[name].dtype != torch.float32:
                raise Refused(f"{path}/model.safetensors: {name} is {weights[name].dtype}, not F32")
            if tuple(weights[name].shape) != tuple(prm.shape):
                raise Refused(f"{path}/model.safetensors: {name}: file shape {tuple(weights[name].shape)}, "
                              f"config.json's model {tuple(prm.shape)}")
            prm.copy_(weights[name])
        ev = safetensors_read(torch, os.path.join(path, "eval_logits.safetensors"))
        if "tokens" not in ev or "log_probs" not in ev:
            raise Refused(f"{path}/eval_logits.safetensors: no tokens or log_probs tensor")
        tokens, ref = ev["tokens"].long(), ev["log_probs"]
        if tokens.dim() != 2 or tokens.shape[1] != a.seq_len or tuple(ref.shape) != (*tokens.shape, vocab):
            raise Refused(f"{path}/eval_logits.safetensors: tokens {tuple(tokens.shape)}, log_probs "
                          f"{tuple(ref.shape)}; expected [N, {a.seq_len}] and [N, {a.seq_len}, {vocab}]")
        logits, _ = model.logits(tokens)
        got = F.log_softmax(logits, dim=-1).reshape(ref.shape)
    diff = (got.double() - ref.double()).abs()
    ratio = diff / (EXPORT_RTOL * ref.double().abs() + EXPORT_ATOL)
    worst = int(torch.argmax(ratio.reshape(-1)))
    finite = bool(torch.isfinite(got).all() and torch.isfinite(ref).all())
    ok = finite and float(ratio.max()) <= 1.0
    print(json.dumps({"check_export": path, "ok": ok, "block_type": a.block_type, "gate": a.gate,
                      "patch_size": a.patch_size, "sequences": int(tokens.shape[0]),
                      "values": ref.numel(), "max_abs_diff": float(diff.max()), "max_ratio": float(ratio.max()),
                      "bound": f"{EXPORT_RTOL}*|uoe| + {EXPORT_ATOL}", "worst": worst,
                      "worst_uoe": float(ref.reshape(-1)[worst]), "worst_torch": float(got.reshape(-1)[worst]),
                      "torch": torch.__version__}))
    return 0 if ok else 1


# ---- training ---------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--data", default=os.path.join(root, "data", "tinyshakespeare.txt"))
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--block-type", choices=("uoe", "dense"), default="uoe")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--attn-experts", type=int, default=4)
    ap.add_argument("--attn-topk", type=int, default=2)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=512)
    ap.add_argument("--capacity-factor", type=float, default=1.25)
    ap.add_argument("--gate", choices=("renorm", "sum", "prob"), default="renorm")
    ap.add_argument("--patch-size", type=int, default=1, help="tokens routed together (divides --seq-len)")
    ap.add_argument("--aux-loss", type=float, default=0.01)
    ap.add_argument("--z-loss", type=float, default=0.0)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--init", default="", help="uoe checkpoint directory (step_N/) to start from")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (and OpenMP / BLAS threads)")
    ap.add_argument("--blas-threads", type=int, default=0,
                    help="MKL / OpenBLAS threads if not --threads (set before torch loads; 0 = --threads)")
    ap.add_argument("--compile", action="store_true", help="torch.compile(dynamic=True) the model")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: the forward under torch.autocast('cpu', torch.bfloat16), PyTorch's mixed precision "
                         "(matmuls on bf16 inputs, fp32 parameters and optimizer)")
    ap.add_argument("--metrics", default="", help="JSON lines, one per step")
    ap.add_argument("--ranks", type=int, default=1,
                    help="data-parallel processes (torch.distributed gloo, DistributedDataParallel): rank r draws "
                         "uoe's slot r windows, gradients are averaged over ranks, as uoe-train -np N")
    ap.add_argument("--self-test", action="store_true", help="check the RNG and window port against C++ values")
    ap.add_argument("--info", action="store_true", help="print this torch's version, kernels and threads; exit")
    ap.add_argument("--check-export", nargs="+", default=[], metavar="DIR",
                    help="load `uoe-ckpt export --eval-logits N --out DIR` (each DIR) and compare uoe's evaluation "
                         "log-probabilities with this model's (exit 1 if any is beyond 1e-5·|uoe| + 1e-6); exit")
    return ap.parse_args(argv)


def launch_ranks(argv, ranks):
    """Starts `ranks` copies of this script as one torch.distributed job on this machine; waits for all."""
    import socket
    import subprocess
    with socket.socket() as sk:  # a free port for the rendezvous
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    procs = []
    for r in range(ranks):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv], env=env))
    return max(p.wait() for p in procs)


def torch_info(torch):
    """What this torch runs on: version, CPU kernels, BLAS, oneDNN, OpenMP (from torch.__config__.show())."""
    cfg = torch.__config__.show()
    cap = None
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch before 2.0
        pass
    lines = [ln.strip(" -") for ln in cfg.splitlines()]

    def line(*keys):
        return next((ln for ln in lines if any(k in ln for k in keys)), None)

    blas = next((kv.split("=", 1)[1] for kv in cfg.replace(",", " ").split() if kv.startswith("BLAS_INFO=")), None)
    mkl = line("Math Kernel Library")
    return {"torch": torch.__version__, "cpu_capability": cap or line("CPU capability"), "blas": blas,
            "mkl": mkl.split(" for ")[0] if mkl else None, "onednn": line("MKL-DNN", "oneDNN"),
            "openmp": line("OpenMP"), "compile": hasattr(torch, "compile"), "threads": torch.get_num_threads()}


def main(argv):
    a = parse_args(argv)
    if a.self_test:
        return 0 if self_test(a.data) else 1
    if a.ranks > 1 and "RANK" not in os.environ:
        return launch_ranks(argv, a.ranks)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    # The BLAS libraries and OpenMP read their thread counts when they load: before `import torch`.
    # One pool of --threads per process (a second pool on the same cores only stalls the first).
    blas = a.blas_threads or a.threads
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    os.environ["MKL_NUM_THREADS"] = str(blas)
    os.environ["OPENBLAS_NUM_THREADS"] = str(blas)
    if a.compile and world > 1:
        # torch 2.15's inductor cache fails its guard check on the graphs DDP splits at its buckets
        # (KeyError '___stack0' in FxGraphCache.find_guarded_entry): compile those afresh.
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
        os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
    import numpy as np
    import torch
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (e.g. a warm interpreter)
        pass
    if a.info:
        print(json.dumps(torch_info(torch)))
        return 0
    if a.check_export:
        return max(check_export(torch, d) for d in a.check_export)
    if a.compile and not hasattr(torch, "compile"):
        sys.exit(f"torch_uoe.py: --compile needs torch 2.0 or later (this is {torch.__version__})")
    torch.manual_seed(a.seed)
    dist = None
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo", rank=rank, world_size=world)
    if a.d_model % a.heads or a.heads % a.attn_experts or a.d_ff % a.experts or a.patch_size < 1 or \
            a.seq_len % a.patch_size:
        sys.exit("torch_uoe.py: d-model % heads, heads % attn-experts, d-ff % experts and seq-len % patch-size "
                 "must be 0")

    train, _ = data_load_bytes(a.data, a.val_fraction)
    TorchUoE = build_model_class(torch)
    model = TorchUoE(a, 256)
    decay = [p for n, p in model.p.items() if TorchUoE.decays(n)]
    no_decay = [p for n, p in model.p.items() if not TorchUoE.decays(n)]
    groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    except TypeError:  # an older torch without foreach
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    start = 1
    if a.init:
        start = load_checkpoint(torch, model, opt, a.init) + 1
    params = list(model.p.values())

    # This torch's matmul rate on these threads (so its BLAS is seen not to be the handicap).
    mm = torch.randn(1024, 1024)
    for _ in range(2):
        mm @ mm
    best = min((lambda t0: (mm @ mm, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
    mm_gflops = 2 * 1024 ** 3 / best * 1e-9
    del mm

    # Data parallel: DDP all-reduces (averages) the gradients in buckets while backward runs.
    net = torch.nn.parallel.DistributedDataParallel(model) if dist is not None else model
    if a.compile:
        net = torch.compile(net, dynamic=True)

    out = open(a.metrics, "w") if a.metrics and rank == 0 else None
    T, B = a.seq_len, a.batch_size
    times, last = [], None
    for step in range(start, a.steps + 1):
        t0 = time.perf_counter()
        inp, tgt = sample_batch(train, T, B, a.seed, step, slot=rank)
        inp, tgt = torch.from_numpy(inp), torch.from_numpy(tgt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            ce, aux = net(inp, tgt)
        (ce.float() + aux.float()).backward()
        if dist is not None:  # the logged loss: the mean over ranks, as uoe-train's
            figures = torch.tensor([ce.item(), float(aux.detach())], dtype=torch.float64)
            dist.all_reduce(figures)
            ce_mean, aux_mean = (figures / world).tolist()
        else:
            ce_mean, aux_mean = ce.item(), float(aux.detach())
        # Global-norm clipping (layers/optimizer + layers/train_step.cpp): scale = clip / norm if above.
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
        if a.clip > 0 and norm > a.clip:
            for p in params:
                p.grad.mul_(a.clip / norm)
        lr = lr_at_step(step, a.steps, a.warmup, a.lr, a.min_lr)
        for gr in opt.param_groups:
            gr["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = ce_mean
        dt = time.perf_counter() - t0
        times.append(dt)
        last = loss
        if out:
            out.write(json.dumps({"step": step, "train_loss": loss, "aux_loss": aux_mean, "grad_norm": norm,
                                  "lr": lr, "step_s": dt, "tokens": B * T * world}) + "\n")
            out.flush()
    if out:
        out.close()
    if dist is not None:
        dist.destroy_process_group()
    if rank != 0:
        return 0
    st = sorted(times)
    med = st[len(st) // 2] if st else float("nan")
    summary = {"final": True, "block_type": a.block_type, "steps": len(times), "last_step": a.steps,
               "train_loss": last, "step_s_min": st[0] if st else None, "step_s_median": med,
               "tokens_per_s": B * T * world / med if st else None, "ranks": world, "threads": a.threads,
               "blas_threads": blas, "compile": a.compile, "precision": a.precision, "torch": torch.__version__,
               "matmul_gflops": mm_gflops, "params": sum(p.numel() for p in params),
               "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
