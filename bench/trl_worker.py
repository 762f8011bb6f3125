r"""TRL side of the side-by-side GRPO benchmark: a subprocess driven over stdin/stdout.

  .venv/bin/python -m bench.trl_worker --model_dir=DIR --prompts=4 --group=8 --new_tokens=64

Protocol: stdout carries only JSON objects, one per line (everything else, including TRL and
transformers output, goes to stderr; fd 1 itself is redirected there).
  1. After building the trainer: {"event": "info", "trl", "torch", "transformers", "threads",
     "model_dtype", "checkpointing", "prompt_tokens", "generation": {"max_new_tokens",
     "min_new_tokens", "temperature"}, "config": {GRPOConfig arguments}}.
  2. After EVERY optimizer step, the first (warm-up) one included: {"event": "step", "step": n,
     "seconds": on_step_begin -> on_step_end wall time (generation + reward + reference and policy
     log-probs + backward + AdamW), "rss_bytes": VmRSS, "peak_rss_bytes": VmHWM,
     "completion_tokens": {"n", "min", "mean", "max"}} (token counts of the completions TRL scored
     in that step, cut at EOS as TRL does; min_new_tokens == new_tokens makes all equal new_tokens).
     The worker then blocks on one stdin line: "step" runs the next step; "quit", EOF or anything
     else exits (status 0).

TRL settings (GRPOConfig): one optimizer step = `prompts` prompts x `group` completions, generated
once per step (per_device_train_batch_size = prompts * group, num_generations = group,
gradient_accumulation_steps = 1, num_iterations = 1); sampling at temperature 1.0 (top_p 1, top_k
0) with exactly `new_tokens` tokens (max_completion_length and generation_kwargs min_new_tokens);
loss_type = --algo; beta = 0.04 (a frozen reference model); AdamW lr 1e-6; float32 on CPU (bf16
and fp16 off: TRL turns bf16 on by default); activation (gradient) checkpointing off unless asked
(TRL turns it on by default; jaxprof's remat is off by default).
Reward: -|words in the completion - 40|.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read once when libgomp loads: before torch is imported

from absl import app, flags  # noqa: E402

from bench import workers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Local HF model directory (a chat model).", required=True)
workers.define_workload_flags()
flags.DEFINE_enum("algo", "grpo", ["grpo", "dr_grpo", "dapo", "bnpo"], "TRL loss_type.")
flags.DEFINE_float("beta", 0.04, "KL coefficient; > 0 loads a frozen reference model.")
flags.DEFINE_bool("activation_checkpointing", False, "TRL's default is on.")
flags.DEFINE_integer("threads", os.cpu_count() or 1, "torch intra-op threads.")
flags.DEFINE_integer("seed", 0, "Trainer seed.")

_seen_lengths: list[int] = []  # token counts of the completions scored in the current step


def length_reward(completions: list, completion_ids: list[list[int]], **_) -> list[float]:
  """The workload's reward per completion; records the completions' token counts."""
  _seen_lengths.extend(len(ids) for ids in completion_ids)
  return [workers.word_reward(c[-1]["content"] if isinstance(c, list) else c)
          for c in completions]


def main(_: list[str]) -> None:
  proto = workers.Protocol()

  import datasets
  import torch
  import transformers
  import trl

  torch.set_num_threads(FLAGS.threads)
  tok = transformers.AutoTokenizer.from_pretrained(FLAGS.model_dir)
  n = max(FLAGS.prompts, len(workers.REQUESTS))
  requests = workers.REQUESTS
  prompts = [[{"role": "user", "content": requests[i % len(requests)]}] for i in range(n)]
  prompt_tokens = [len(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]) for p in prompts]
  print(f"prompt tokens (chat template): {prompt_tokens}", file=sys.stderr)

  out_dir = tempfile.mkdtemp(prefix="trl_worker_")
  config = dict(
      output_dir=out_dir, per_device_train_batch_size=FLAGS.prompts * FLAGS.group,
      num_generations=FLAGS.group, gradient_accumulation_steps=1, num_iterations=1,
      max_completion_length=FLAGS.new_tokens, temperature=1.0,
      generation_kwargs={"min_new_tokens": FLAGS.new_tokens}, loss_type=FLAGS.algo,
      beta=FLAGS.beta, learning_rate=1e-6, max_steps=10_000, use_cpu=True, bf16=False,
      fp16=False, activation_checkpointing=FLAGS.activation_checkpointing,
      model_init_kwargs={"dtype": "float32"}, report_to="none", save_strategy="no",
      eval_strategy="no", logging_steps=1, disable_tqdm=True, seed=FLAGS.seed)
  trainer = trl.GRPOTrainer(
      model=FLAGS.model_dir, reward_funcs=length_reward, args=trl.GRPOConfig(**config),
      train_dataset=datasets.Dataset.from_dict({"prompt": prompts}), processing_class=tok)

  def finish() -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    proto.finish()

  class StepServer(transformers.TrainerCallback):
    """Times each optimizer step, reports it, then waits for the parent's next command."""

    def on_step_begin(self, args, state, control, **kwargs):
      _seen_lengths.clear()
      self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
      seconds = time.perf_counter() - self.t0
      lens = _seen_lengths or [0]
      proto.emit({"event": "step", "step": state.global_step, "seconds": seconds,
                  **workers.memory(),
                  "completion_tokens": {"n": len(_seen_lengths), "min": min(lens),
                                        "max": max(lens), "mean": sum(lens) / len(lens)}})
      if proto.next_command() != "step":
        finish()

  trainer.add_callback(StepServer())
  gen = trainer.generation_config
  proto.emit({"event": "info", "trl": trl.__version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "model_dtype": str(trainer.model.dtype),
        "checkpointing": bool(getattr(trainer.model, "is_activation_checkpointing", None)),
        "prompt_tokens": prompt_tokens,
        "generation": {"max_new_tokens": gen.max_new_tokens, "min_new_tokens": gen.min_new_tokens,
                       "temperature": gen.temperature},
        "config": {k: v for k, v in config.items() if k != "output_dir"}})
  trainer.train()
  finish()


if __name__ == "__main__":
  app.run(main)
