"""A tiny LLM trained in the test to say one fixed text, then exported to ONNX.

Random tiny models write byte soup with no spaces, which says nothing about
streaming or grounding; a model that reliably writes a known sentence does.
Training: 60-120 AdamW steps on one (prompt, answer) pair, a few seconds.
"""

from __future__ import annotations

from pathlib import Path

from recgen.core.prompt import build_user_message


def train_tiny_llm(
    root: Path,
    answer: str,
    *,
    arch: str = "llama",
    steps: int = 120,
    history: tuple[str, ...] = ("Star Wars (1977)",),
    recommended: tuple[str, ...] = ("Fargo (1996)", "Contact (1997)"),
    intent: str = "",
) -> Path:
    """Returns a local HF checkpoint folder (pass it to export as --llm)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export.llm.onnx_export import make_tiny_checkpoint, prompt_template

    ckpt = make_tiny_checkpoint(arch, root / "hf")
    tok = AutoTokenizer.from_pretrained(ckpt)
    prefix, suffix = prompt_template(tok)
    prompt = prefix + build_user_message(list(history), list(recommended), intent) + suffix
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    target = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + target])
    labels = ids.clone()
    labels[0, : len(prompt_ids)] = -100  # learn the answer, not the prompt
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # more threads collapse on a busy 2-core machine
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(ckpt)
    return ckpt
