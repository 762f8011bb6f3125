r"""Greedy generation speed: jaxprof `sampling.sample` vs `transformers` `generate` on torch CPU.

Both systems run the packaged SmolLM2-135M-Instruct in float32 from the same converted HF
directory, on the same left-padded chat prompts, greedy, and generate exactly `max_new_tokens`
tokens per row (EOS can never stop either side), so they do the same work. Per configuration it
prints tokens/s of each, the median of per-round time ratios, jaxprof's compile time, prefill time,
decode time per step, and the bytes/s and FLOP/s jaxprof reaches against peaks measured here.

  .venv/bin/python -m bench.bench_sampler --batch_sizes=1,32 --new_tokens=64,128 --runs=3
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from bench import common  # noqa: E402
from jaxprof import api, sampling  # noqa: E402
from jaxprof.models import causal_lm  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["1", "32"], "Rows per generate call.")
flags.DEFINE_list("new_tokens", ["64", "128"], "Tokens generated per row (exactly this many).")
flags.DEFINE_integer("runs", 3, "Timed rounds per configuration (systems alternate each round).")
flags.DEFINE_integer("threads", os.cpu_count() or 1, "torch intra-op threads.")
flags.DEFINE_integer("check_rows", 4, "Rows whose greedy ids are compared between the systems.")
flags.DEFINE_integer("matmul_n", 2048, "Size of the square matmul that measures peak FLOP/s.")
flags.DEFINE_string("omp_wait_policy", "PASSIVE",
                    "OMP_WAIT_POLICY for torch, set before torch loads. On a shared machine the "
                    "default active spin-wait makes 2-thread torch several times slower; '' keeps "
                    "the environment's value.")
flags.DEFINE_string("model", api.PACKAGED, "'packaged' or a local HF directory (Llama family).")

# Requests of the kind jaxprof trains for. With SmolLM2's chat template (which adds a default system
# turn) each prompt is ~70-100 tokens.
_PEOPLE = [
    ("a data engineer", "six years building Spark and Airflow pipelines for a retail bank, moved "
     "the warehouse to BigQuery, mentors two juniors"),
    ("a nurse", "eight years on a cardiac ward, charge nurse on night shifts, trained staff on a "
     "new medication system, wants a day-time outpatient role"),
    ("a high-school maths teacher", "ten years teaching algebra and statistics, ran the robotics "
     "club, wrote the school's online homework platform in Python"),
    ("a warehouse supervisor", "leads a team of fifteen pickers, cut order errors by a third, "
     "certified forklift trainer, looking at logistics planning jobs"),
    ("a movie fan", "rated Star Wars, Fargo, Toy Story and The Godfather highly, disliked most "
     "romantic comedies, watches a thriller almost every weekend"),
    ("a junior UX designer", "two years designing mobile banking screens in Figma, ran twelve user "
     "interviews, learning front-end code, prefers remote work"),
    ("an electrician", "fifteen years of commercial wiring, licensed in two states, estimates "
     "jobs and supervises apprentices, interested in solar installation"),
    ("a sales manager", "grew a regional software territory from one to four million a year, "
     "manages eight account executives, speaks English and Spanish"),
]
_TASKS = [
    "Write a short job description that would suit {who}. Background: {cv}. Keep it to the "
    "key responsibilities and required skills.",
    "Here is a summary of {who}: {cv}. Describe this person's preferences and strengths in a "
    "short profile a recommender system could use.",
    "Given this background of {who} ({cv}), list the three job titles they should apply for and "
    "explain each choice in one sentence.",
    "Summarise {who} for a recruiter in three sentences. Details: {cv}.",
]


def build_prompts(n: int) -> list[str]:
  """n distinct user requests (cycling through people x tasks)."""
  combos = [(t, p) for t in _TASKS for p in _PEOPLE]
  return [combos[i % len(combos)][0].format(who=combos[i % len(combos)][1][0],
                                            cv=combos[i % len(combos)][1][1]) for i in range(n)]


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len"))
def prefill(params: dict, cfg: causal_lm.LMConfig, tokens: jax.Array, mask: jax.Array,
            cache_len: int):
  """The prefill half of `sampling.sample` alone (same cache size), to split its time."""
  cache = causal_lm.init_cache(cfg, tokens.shape[0], cache_len, jnp.float32)
  hidden, cache = causal_lm.forward(params, cfg, tokens, mask, cache=cache)
  return causal_lm.logits(params, cfg, hidden[:, -1]), cache


@dataclasses.dataclass(frozen=True)
class Work:
  """Bytes and FLOPs of one greedy generate call, from the model's shapes."""

  param_bytes: int
  kv_bytes_per_step: int  # what jaxprof reads: the full preallocated cache, every layer
  prefill_flops: float
  decode_flops: float

  @classmethod
  def of(cls, cfg, params: dict, mask: np.ndarray, new_tokens: int) -> Work:
    b, p = mask.shape
    d, v, l = cfg.hidden_size, cfg.vocab_size, cfg.num_layers
    layer_matmul = sum(int(x.size) for name, x in params["layers"].items()
                       if x.ndim >= 3)  # q, k, v, o, gate, up, down (norms are [L, D])
    head = d * v
    attn_per_ctx = 4 * l * cfg.num_heads * cfg.head_dim  # QK^T and PV, per query per key
    real = mask.sum(axis=1)
    # Prefill computes every slot (padding too); its causal attention covers ~half of P keys.
    prefill_flops = b * p * (2 * layer_matmul + attn_per_ctx * p / 2) + b * 2 * head
    # Decode step i sees (real prompt + i + 1) keys per row; count useful work only.
    ctx = sum(float(real.sum()) + b * (i + 1) for i in range(new_tokens))
    decode_flops = new_tokens * b * (2 * layer_matmul + 2 * head) + attn_per_ctx * ctx
    cache_len = p + new_tokens
    kv_bytes = 2 * l * b * cache_len * cfg.num_kv_heads * cfg.head_dim * 4
    param_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(params))
    return cls(param_bytes, kv_bytes, prefill_flops, decode_flops)


@dataclasses.dataclass
class Result:
  batch: int
  new_tokens: int
  prompt_len: int
  jax_tok_s: float
  hf_tok_s: float
  ratio: float  # jaxprof speed / HF speed, median over rounds
  compile_s: float
  hf_first_s: float
  prefill_s: float
  step_ms: float
  decode_bw: float
  flops: float
  prefill_flops: float
  agreement: str


def run_config(lm: api.LM, model, batch: int, new_tokens: int, runs: int,
               check_rows: int) -> Result:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  tok = lm.tokenizer
  texts = lm.format_prompts(build_prompts(batch), chat=True)
  ids, mask = tok.encode_batch(texts, padding_side="left", add_special_tokens=False)
  p = ids.shape[1]
  key = jax.random.key(0)
  j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)
  greedy = sampling.Sampling(temperature=0.0)

  def jax_generate():
    # eos_ids=(-1,): no token id is -1, so every row runs the full `new_tokens`.
    return sampling.sample(lm.params, lm.cfg, j_ids, j_mask, key, max_new_tokens=new_tokens,
                           eos_ids=(-1,), sampling=greedy, pad_id=tok.pad_id).tokens

  def jax_prefill():
    return prefill(lm.params, lm.cfg, j_ids, j_mask, p + new_tokens)

  t_ids = torch.tensor(ids, dtype=torch.long)
  t_mask = torch.tensor(mask, dtype=torch.long)
  # No EOS in the generation config: HF runs to max_new_tokens without touching the logits (a
  # min_new_tokens would mask EOS out and could change the greedy choice).
  gen_cfg = transformers.GenerationConfig(
      do_sample=False, max_new_tokens=new_tokens, min_new_tokens=None, eos_token_id=None,
      pad_token_id=tok.pad_id, bos_token_id=tok.bos_id)

  def hf_generate():
    with torch.inference_mode():
      out = model.generate(input_ids=t_ids, attention_mask=t_mask, generation_config=gen_cfg)
    return out[:, p:].numpy()

  # Compile time measured ahead of time (trace + lower + XLA compile), apart from any run.
  compile_s, _ = common.timed(lambda: sampling.sample.lower(
      lm.params, lm.cfg, j_ids, j_mask, key, max_new_tokens=new_tokens, eos_ids=(-1,),
      sampling=greedy, pad_id=tok.pad_id).compile())
  common.timed(jax_generate)  # warm-up: the jit cache compiles this shape once
  common.timed(jax_prefill)
  hf_first_s, _ = common.timed(hf_generate)

  outputs: dict[str, np.ndarray] = {}

  def keep(name, round_, out):
    if round_ == 0 and name != "prefill":
      outputs[name] = np.asarray(out)

  times = common.alternate({"jaxprof": jax_generate, "hf": hf_generate, "prefill": jax_prefill},
                           runs, keep)
  if outputs["hf"].shape != (batch, new_tokens):
    raise RuntimeError(f"HF generated {outputs['hf'].shape}, expected {(batch, new_tokens)}")

  jax_s = statistics.median(times["jaxprof"])
  hf_s = statistics.median(times["hf"])
  prefill_s = statistics.median(times["prefill"])
  decode_s = max(jax_s - prefill_s, 1e-9)
  work = Work.of(lm.cfg, lm.params, mask, new_tokens)
  n_tok = batch * new_tokens
  rows = min(check_rows, batch)
  same = outputs["jaxprof"][:rows] == outputs["hf"][:rows]
  leading = [int(np.argmin(r)) if not r.all() else new_tokens for r in same]
  agreement = f"{int(same.all(axis=1).sum())}/{rows} rows identical (leading: {leading})"
  return Result(
      batch=batch, new_tokens=new_tokens, prompt_len=p,
      jax_tok_s=n_tok / jax_s, hf_tok_s=n_tok / hf_s,
      ratio=common.median_ratio(times["hf"], times["jaxprof"]),
      compile_s=compile_s, hf_first_s=hf_first_s, prefill_s=prefill_s,
      step_ms=1e3 * decode_s / new_tokens,
      decode_bw=new_tokens * (work.param_bytes + work.kv_bytes_per_step) / decode_s,
      flops=(work.prefill_flops + work.decode_flops) / jax_s,
      prefill_flops=work.prefill_flops / prefill_s, agreement=agreement)


def report(results: list[Result], peaks: common.Peaks) -> str:
  header = ["batch", "new tok", "prompt len", "jaxprof tok/s", "HF tok/s", "jaxprof/HF",
            "jaxprof compile s", "prefill ms", "decode ms/step", "decode GB/s (% peak)",
            "GFLOP/s (% peak)", "prefill GFLOP/s", "greedy ids"]
  rows = [[r.batch, r.new_tokens, r.prompt_len, common.fmt(r.jax_tok_s), common.fmt(r.hf_tok_s),
           f"{r.ratio:.2f}x", common.fmt(r.compile_s), common.fmt(1e3 * r.prefill_s),
           common.fmt(r.step_ms), f"{r.decode_bw / common.GB:.1f} "
           f"({100 * r.decode_bw / peaks.mem_bw:.0f}%)",
           f"{r.flops / common.GB:.1f} ({100 * r.flops / peaks.matmul_flops:.0f}%)",
           common.fmt(r.prefill_flops / common.GB), r.agreement] for r in results]
  return common.markdown_table(header, rows)


def main(argv):
  del argv
  if FLAGS.omp_wait_policy:
    os.environ["OMP_WAIT_POLICY"] = FLAGS.omp_wait_policy  # read once, when libgomp loads
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(FLAGS.threads)
  print(common.machine_summary(), f"torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
        f"transformers {transformers.__version__}", flush=True)
  peaks = common.measure_peaks(FLAGS.matmul_n)
  print("peaks:", peaks.describe(), flush=True)

  lm = api.load_lm(FLAGS.model)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(lm.path), dtype=torch.float32, local_files_only=True).eval()
  print(f"model: {lm.path} ({sum(x.size for x in jax.tree.leaves(lm.params)) / 1e6:.1f}M "
        f"params, float32)", flush=True)

  results = []
  for batch in map(int, FLAGS.batch_sizes):
    for new_tokens in map(int, FLAGS.new_tokens):
      start = time.perf_counter()
      r = run_config(lm, model, batch, new_tokens, FLAGS.runs, FLAGS.check_rows)
      results.append(r)
      print(f"B={batch} N={new_tokens} P={r.prompt_len}: jaxprof {r.jax_tok_s:.1f} tok/s, "
            f"HF {r.hf_tok_s:.1f} tok/s, ratio {r.ratio:.2f}x; compile {r.compile_s:.1f}s "
            f"(HF first call {r.hf_first_s:.1f}s), "
            f"prefill {1e3 * r.prefill_s:.0f} ms, decode {r.step_ms:.1f} ms/step, "
            f"{r.decode_bw / common.GB:.1f} GB/s, {r.flops / common.GB:.1f} GFLOP/s; "
            f"greedy ids: {r.agreement} [{time.perf_counter() - start:.0f}s]", flush=True)
  print()
  print(report(results, peaks))


if __name__ == "__main__":
  app.run(main)
